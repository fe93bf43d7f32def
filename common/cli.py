"""Helpers shared by every command-line entry point."""
from __future__ import annotations

import argparse
import math
import re
import sys
from typing import Callable, Sequence

from common.errors import UserError

# Upper bounds of size and process-count flags: larger values are typos (a crop of 10^12 px cannot be allocated).
MAX_CROP = 16384  # crop and image sides in pixels
MAX_WORKERS = 256  # worker processes and threads (as --num_workers, common.flags.MAX_NUM_WORKERS)

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
    """ArgumentParser whose usage errors are a single line on stderr (exit code 2).

    Negative numbers in any notation (``--lr -1e-3``) are read as values, so that their flag can say what is
    wrong with them; argparse's default takes ``-1e-3`` for an unknown option. Abbreviated flags are not
    accepted: drivers pass the flags they do not know on to the trainer, and a prefix match would silently
    turn the trainer's ``--lambda`` into a driver's ``--lambdas``.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)  # every option shows its default
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.I)

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message}\n")


def number(kind: type = float, *, minimum: float | None = None, above: float | None = None,
           maximum: float | None = None, below: float | None = None) -> Callable[[str], float]:
    """An argparse ``type``: a finite ``int`` or ``float`` within the given bounds.

    A value that is not a number, is NaN or infinite, or lies outside the bounds is rejected by argparse with a
    one-line message naming the flag and the allowed range.
    """
    bounds = [f">= {minimum:g}" if minimum is not None else "", f"> {above:g}" if above is not None else "",
              f"<= {maximum:g}" if maximum is not None else "", f"< {below:g}" if below is not None else ""]
    wanted = f"{'an integer' if kind is int else 'a finite number'}{' ' if any(bounds) else ''}" + \
        " and ".join(b for b in bounds if b)

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}") from None
        if not math.isfinite(value) or (minimum is not None and value < minimum) or \
                (above is not None and value <= above) or (maximum is not None and value > maximum) or \
                (below is not None and value >= below):
            raise argparse.ArgumentTypeError(f"must be {wanted}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


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
    except OSError as exc:  # a file system problem no check foresaw: still one line, naming the path
        from common.paths import describe_os_error

        print(f"error: {describe_os_error(exc)}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
