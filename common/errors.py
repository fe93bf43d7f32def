"""User-facing errors.

A :class:`UserError` describes a mistake the user can fix (a missing file, a bad flag value). Command-line
entry points catch it and print one line instead of a traceback (see :func:`common.cli.run_main`).
"""


class UserError(Exception):
    """A problem caused by the user's input, reported as one line: what is wrong and what to do."""
