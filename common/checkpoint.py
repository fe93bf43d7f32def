"""Checkpoint files: safe loading, atomic writing, state-dict extraction."""
from __future__ import annotations

import os
import pickle
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from common.errors import UserError
from common.paths import write_failure

# The "format" of this toolkit's training checkpoints: they record the model's recipe next to its weights.
CHECKPOINT_FORMAT = "lic-toolkit/1"
# Keys under which training scripts of this field store the model weights.
_STATE_DICT_KEYS = ("state_dict", "model", "network", "model_state_dict", "net")


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` with torch.save to a temporary file beside ``path``, then rename it into place.

    A crash while writing leaves the previous file intact.
    """
    _atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically (same guarantee as :func:`atomic_save`)."""
    _atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _atomic_write(path: str | os.PathLike, write) -> None:
    """Write through a temporary file in the same folder; a failed write (disk full, read-only) leaves the
    previous file intact and becomes a one-line :class:`UserError`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        _remove(tmp)
        raise write_failure(exc, path) from exc
    except BaseException:
        _remove(tmp)
        raise


def _remove(tmp: str | None) -> None:
    if tmp is not None and os.path.exists(tmp):
        os.unlink(tmp)


def remove_stale_temporaries(folder: str | os.PathLike, name: str) -> int:
    """Delete ``.<name>.*.tmp`` files left in ``folder`` by writes that were killed; returns how many."""
    stale = list(Path(folder).glob(f".{name}.*.tmp")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


# What rebuilds and describes a trained model, as opposed to what resumes its training (optimizer, RNG, ...).
MODEL_KEYS = ("format", "model", "replace", "qat", "state_dict", "ema_state_dict", "ema_updates", "step", "epoch",
              "args", "finished")


def model_only(checkpoint: dict) -> dict:
    """The parts of a training checkpoint that the model needs (about a third of the file)."""
    return {key: checkpoint[key] for key in MODEL_KEYS if key in checkpoint}


def atomic_link(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make ``path`` a hard link of ``source`` (atomically replacing it), or a copy where links are impossible."""
    source, path = Path(source), Path(path)
    tmp = path.with_name(f".{path.name}.link.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, path)


def load_file(path: str | os.PathLike, trust: bool = False, map_location: str | torch.device = "cpu") -> Any:
    """Load a torch file. Safe (``weights_only=True``) unless ``trust`` is set by the user.

    Raises :class:`UserError` with one line for a missing, truncated or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint file not found: {path}")
    if not _looks_like_torch_file(path):
        raise UserError(f"{path} is not a PyTorch checkpoint (neither the zip archive of torch.save nor a pickle); "
                        "check the path")
    try:
        return torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if trust or not str(exc).startswith("Weights only load failed"):
            raise UserError(f"cannot read checkpoint {path}: {exc}") from exc
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {path} holds objects that safe loading refuses ({first_line}); "
                        "if you trust the file, pass --trust_checkpoint") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, IndexError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"checkpoint {path} is truncated or not a torch file ({first_line})") from exc


def _looks_like_torch_file(path: Path) -> bool:
    """torch.save writes a zip archive (``PK``); files of torch < 1.6 and plain pickles start with a protocol mark."""
    with path.open("rb") as handle:
        head = handle.read(2)
    return head == b"PK" or (len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5)


def extract_state_dict(obj: Any, path: str | os.PathLike = "<checkpoint>") -> dict[str, torch.Tensor]:
    """Return the model state dict inside a raw state dict or a training checkpoint.

    Strips a ``module.`` prefix left by DataParallel/DDP.
    """
    if isinstance(obj, dict):
        for key in _STATE_DICT_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path} does not contain a model state dict (expected a dict of tensors or a dict "
                        f"with one of the keys {', '.join(_STATE_DICT_KEYS)})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_state_dict(path: str | os.PathLike, trust: bool = False) -> dict[str, torch.Tensor]:
    """Load the model weights from ``path`` (raw state dict or training checkpoint)."""
    return extract_state_dict(load_file(path, trust=trust), path)
