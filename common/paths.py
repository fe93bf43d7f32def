"""Output locations checked before the work is spent, and write failures as one line.

Every command that writes checks its outputs first (:func:`output_dir`, :func:`output_file`): a path that
cannot be created or written (read-only file system, no permission, a file where a folder is needed or the
reverse) is a :class:`UserError` naming the flag, the path and the reason, before any training or evaluation
runs. :func:`describe_os_error` turns an ``OSError`` met later (e.g. the disk filling up) into the same kind of
line.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

from common.errors import UserError


def path_text(path: str | os.PathLike) -> str:
    """``path`` as text that any UTF-8 file can hold, for names written into results.

    Python keeps the bytes of a file name that are not UTF-8 as lone surrogates, which no UTF-8 writer accepts;
    they become ``\\xNN`` escapes of the bytes (``b"x\\xff.png"`` is written ``x\\xff.png``).
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def describe_os_error(exc: OSError, path: str | os.PathLike | None = None) -> str:
    """``"<path>: <reason>"`` for an OSError, with the usual causes spelled out."""
    where = path if path is not None else (exc.filename or "?")
    reason = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif exc.errno == errno.EROFS:
        reason = "the file system is read-only"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        reason = "permission denied"
    return f"{where}: {reason}"


def output_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create ``path`` (with parents) if needed and check that files can be written in it."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{flag} {path} is a file, not a folder; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise UserError(f"{flag} cannot be written: {describe_os_error(exc, path)}") from exc
    return path


def output_file(path: str | os.PathLike, flag: str) -> Path:
    """Check that ``path`` can be written as a file: not a folder, its folder creatable and writable."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder, not a file; give a file name")
    output_dir(path.parent if str(path.parent) else Path("."), f"the folder of {flag}")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{flag} cannot be written: {path}: permission denied")
    return path


def write_failure(exc: BaseException, path: str | os.PathLike) -> UserError:
    """A one-line error for a failed write of ``path`` (torch.save reports a full disk as a RuntimeError)."""
    if isinstance(exc, OSError):
        return UserError(f"cannot write {describe_os_error(exc, path)}")
    folder = Path(path).parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    hint = "; no space left on the device" if free is not None and free < 64 * 2**20 else ""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return UserError(f"cannot write {path} ({first}){hint}")
