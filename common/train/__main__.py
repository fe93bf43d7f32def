"""``python -m common.train``: see ``--help``."""
from __future__ import annotations

from typing import Sequence

from common.cli import run_main


def main(argv: Sequence[str] | None = None) -> int:
    from common.train.engine import Trainer
    from common.train.options import parse_config

    Trainer(parse_config(argv)).fit()
    return 0


def cli() -> None:
    """The ``lic-train`` command (installed by ``make setup``): ``main`` with one-line errors."""
    run_main(main)


if __name__ == "__main__":
    cli()
