"""Published R-D curves (data) that the project plots and compares against.

``baselines/published/<dataset>/<name>.json`` holds CompressAI-format curves; see ``published/README.md``
for where each file comes from.
"""
from __future__ import annotations

from pathlib import Path

from common.errors import UserError
from common.rd import RDCurve, load_curve

PUBLISHED_DIR = Path(__file__).resolve().parent / "published"


def published_datasets() -> list[str]:
    """Test sets with published curves (kodak, clic2020-professional, clic2020-professional-valid, ...)."""
    return sorted(p.name for p in PUBLISHED_DIR.iterdir() if p.is_dir())


def published_names(dataset: str) -> list[str]:
    """Curve names (file stems) available for ``dataset``."""
    folder = PUBLISHED_DIR / dataset
    if not folder.is_dir():
        raise UserError(f"no published curves for dataset {dataset!r}; choose one of: "
                        f"{', '.join(published_datasets())}")
    return sorted(p.stem for p in folder.glob("*.json"))


def published_curve(dataset: str, name: str) -> RDCurve:
    """Load one published curve, e.g. ``published_curve("kodak", "compressai-bmshj2018-factorized_mse_cuda")``."""
    stem = name[:-len(".json")] if name.endswith(".json") else name
    names = published_names(dataset)
    if stem not in names:
        raise UserError(f"no published curve {name!r} for {dataset}; choose one of: {', '.join(names)}")
    return load_curve(PUBLISHED_DIR / dataset / f"{stem}.json")


def published_test_set(dataset: str) -> dict:
    """The ``test_set`` record shared by the published curves of ``dataset`` (name, split, image count)."""
    names = published_names(dataset)
    return load_curve(PUBLISHED_DIR / dataset / f"{names[0]}.json").test_set or {"name": dataset}
