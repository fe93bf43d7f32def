"""Helpers shared by every command-line entry point."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from common.errors import UserError

_TRUE = {"true", "1", "yes", "y", "on", "t"}
_FALSE = {"false", "0", "no", "n", "off", "f"}


def str2bool(value: str | bool) -> bool:
    """Parse the seeds' boolean flag values (``true``/``false`` and the usual spellings)."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def bool_flag(parser: argparse.ArgumentParser, name: str, default: bool, help: str) -> None:
    """Add ``--name`` that accepts ``--name``, ``--name true`` and ``--name false``."""
    parser.add_argument(name, type=str2bool, nargs="?", const=True, default=default,
                        metavar="{true,false}", help=f"{help} (default: {str(default).lower()})")


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: ...)`` to help texts that do not state their default already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class OneLineErrorParser(argparse.ArgumentParser):
    """ArgumentParser whose usage errors are a single line on stderr (exit code 2)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_with_train_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None):
    """Parse a driver's own flags; everything else is left for ``python -m common.train``.

    Returns ``(args, train_argv)``, or None after printing the help for ``-h``/``--help``.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        parser.print_help()
        print("\nAll other flags are those of python -m common.train (see its --help).")
        return None
    return parser.parse_known_args(argv)


def one_line(exc: UserError) -> str:
    """The message of a user error as one line.

    A UserError raised in a DataLoader worker is re-raised in the main process with the worker's traceback
    in its message; its last line holds the original message.
    """
    lines = [line for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    prefix = f"{UserError.__module__}.{UserError.__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a CLI ``main``; user mistakes become one line on stderr and exit code 2."""
    try:
        code = main(argv)
    except UserError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
