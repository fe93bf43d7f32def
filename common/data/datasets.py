"""Image datasets for training and validation, file scanning and the deterministic hash split.

Items are 3×h×w float tensors in [0, 1] (any file mode is converted to 8-bit RGB by
:mod:`common.data.images`).

* Training items: a patch at a uniformly random position, then a horizontal and a vertical flip,
  each with probability 1/2.
* Validation items: the centred patch, or the whole image when ``patch_size`` is None.
* Images smaller than the patch (e.g. 40×40 with a 256 patch) are **used, not skipped**: they are
  reflect-padded, centred, to the patch size first (the reflection repeats as often as needed), so
  every item of a dataset has the same size and batches stack.

Reproducibility: a training item draws its crop and flips from its own ``torch.Generator`` seeded
from (seed, epoch, index) and never touches global RNG state. Item ``i`` of epoch ``e`` is therefore
the same tensor whatever the number of DataLoader workers, the rank, or whether the run was resumed.
``set_epoch`` writes the epoch into shared memory, so persistent DataLoader workers see it too; call
it before creating the epoch's iterator (as with ``DistributedSampler``).

Decoded images are kept in memory (per process) while they fit in ``cache_mb`` megabytes: on a small
set such as the sample photos, decoding a PNG every step costs more than the training step itself.

Unreadable files: :func:`find_images` / :func:`readable_images` open every file's header (about
0.2 ms a file) and skip, naming each file and then giving a count, those PIL cannot identify; a file
that only fails while decoding (e.g. truncated) is reported when first met and replaced by the next
file that decodes. ``strict=True`` turns both into a
:class:`UserError`.
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from common.data.images import list_images, load_rgb, too_large_message
from common.errors import UserError

MAX_NAMED_SKIPS = 20  # beyond this many unreadable files, only the count is printed


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------- file discovery
def find_images(root: str | os.PathLike, strict: bool = False) -> list[Path]:
    """Readable image files below ``root`` (recursive, sorted by relative path); see :func:`readable_images`."""
    return readable_images(list_images(root), root, strict)


def readable_images(files: Sequence[Path], root: str | os.PathLike, strict: bool = False) -> list[Path]:
    """The ``files`` (below ``root``) whose header PIL can read.

    Others are skipped with a warning naming them, or raise a :class:`UserError` when ``strict``.
    No readable file at all is a :class:`UserError`.
    """
    readable, skipped = [], []
    for path in files:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path):
                    pass
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            if strict:
                raise UserError(too_large_message(path, exc)) from exc
            skipped.append(path)
            if len(skipped) <= MAX_NAMED_SKIPS:
                warn(f"skipping {too_large_message(path, exc)}")
        except (OSError, ValueError, SyntaxError) as exc:
            if strict:
                raise UserError(f"unreadable image {path} ({exc}); remove it or drop --strict") from exc
            skipped.append(path)
            if len(skipped) <= MAX_NAMED_SKIPS:
                warn(f"skipping unreadable image {path} ({exc})")
        else:
            readable.append(path)
    if skipped:
        warn(f"skipped {len(skipped)} unreadable file(s) of {len(files)} in {root}")
    if not readable:
        raise UserError(f"none of the {len(files)} image files in {root} can be read")
    return readable


# ---------------------------------------------------------------------------------- hash split
def split_key(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """The name the split hashes: the path relative to ``root``, '/'-separated, without extension.

    Dropping the extension keeps an image and its prepared crop (``a/b.jpg`` -> ``a/b.png``) on the
    same side of the split.
    """
    relative = Path(path).relative_to(root).with_suffix("")
    return relative.as_posix()


def hash_fraction(key: str, salt: str = "") -> float:
    """A stable number in [0, 1): the first 8 bytes of SHA-1(salt + key), big-endian, over 2**64."""
    digest = hashlib.sha1((salt + key).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_validation(key: str, val_ratio: float) -> bool:
    """Whether ``key`` falls into the validation part of a ``val_ratio`` split."""
    return hash_fraction(key) < val_ratio


def hash_split(files: Sequence[Path], root: str | os.PathLike, val_ratio: float) -> tuple[list[Path], list[Path]]:
    """Split ``files`` (below ``root``) into (train, val) by :func:`is_validation`; order is kept."""
    train, val = [], []
    for path in files:
        (val if is_validation(split_key(path, root), val_ratio) else train).append(path)
    return train, val


def hash_subset(files: Sequence[Path], root: str | os.PathLike, max_images: int | None) -> list[Path]:
    """At most ``max_images`` of ``files``: those with the smallest salted hash, in their original order.

    A deterministic pseudo-random pick (not the first files by name, which may all be one class). The
    salt makes the ranking independent of the split hash, so the subset is not biased toward either
    side of a later :func:`hash_split`.
    """
    if max_images is None or max_images >= len(files):
        return list(files)
    ranked = sorted(files, key=lambda p: hash_fraction(split_key(p, root), salt="subset:"))
    chosen = set(ranked[:max_images])
    return [p for p in files if p in chosen]


# ---------------------------------------------------------------------------------- cropping
def item_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator whose stream depends only on (seed, epoch, index)."""
    state = np.random.SeedSequence([seed % 2**64, epoch, index]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def reflect_pad_to(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad an H×W×C array, centred, to at least ``height``×``width``."""
    pad_h, pad_w = max(0, height - array.shape[0]), max(0, width - array.shape[1])
    if pad_h == 0 and pad_w == 0:
        return array
    return np.pad(array, ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
                  mode="reflect")


def to_chw_tensor(array: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 (any strides, possibly read-only) -> 3×H×W float tensor in [0, 1]."""
    return torch.from_numpy(np.array(array, dtype=np.uint8, order="C")).permute(2, 0, 1).float().div_(255.0)


class ImageFileDataset(Dataset):
    """Images from a list of files, as patches (see the module docstring for the exact rules).

    Args:
        files: image paths; ``root`` (their common folder) is kept for naming.
        patch_size: side of the square patch, or None for whole images (validation only).
        train: random crop + flips (True) or centre crop (False).
        seed: base of the per-item random streams.
        strict: raise on an unreadable file instead of substituting the next item.
        cache_mb: keep decoded images in memory up to this many megabytes (0: decode every time).
    """

    def __init__(self, files: Sequence[Path], patch_size: int | None, train: bool, seed: int = 0,
                 strict: bool = False, root: str | os.PathLike | None = None, cache_mb: float = 0.0):
        if not files:
            raise UserError(f"no images for this dataset{f' in {root}' if root else ''}")
        if patch_size is None and train:
            raise ValueError("training needs a patch size")
        if patch_size is not None and patch_size < 1:
            raise UserError(f"the patch size must be positive, got {patch_size}")
        self.files = list(files)
        self.root = Path(root) if root is not None else None
        self.patch_size = patch_size
        self.train = train
        self.seed = seed
        self.strict = strict
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._reported: set[int] = set()
        if cache_mb < 0:
            raise UserError(f"the image cache size must be >= 0 MB, got {cache_mb:g}")
        self._cache: dict[int, np.ndarray] = {}
        self._cache_room = int(cache_mb * 2**20)

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def __len__(self) -> int:
        return len(self.files)

    def _load(self, index: int) -> np.ndarray:
        """The H×W×3 uint8 pixels of item ``index`` (from the cache when it is there)."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        array = self._decode(index)
        if array.nbytes <= self._cache_room:
            array.setflags(write=False)  # items are crops of it: nobody may change the cached pixels
            self._cache[index] = array
            self._cache_room -= array.nbytes
        return array

    def _decode(self, index: int) -> np.ndarray:
        """The H×W×3 uint8 pixels of item ``index``, or of the next readable file (non-strict)."""
        for offset in range(len(self.files)):
            position = (index + offset) % len(self.files)
            try:
                return np.asarray(load_rgb(self.files[position]), dtype=np.uint8)
            except UserError as exc:
                if self.strict:
                    raise UserError(f"{exc}; remove it or drop --strict") from exc
                if position not in self._reported:
                    self._reported.add(position)
                    warn(f"{exc}; using the next image instead")
        raise UserError(f"none of the {len(self.files)} images{f' in {self.root}' if self.root else ''} can be decoded")

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self.files):
            raise IndexError(index)
        array = self._load(index)
        size = self.patch_size
        if size is None:
            return to_chw_tensor(array)
        array = reflect_pad_to(array, size, size)
        height, width = array.shape[:2]
        if self.train:
            generator = item_generator(self.seed, self.epoch, index)
            top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
            flip_h, flip_v = (torch.rand(2, generator=generator) < 0.5).tolist()
        else:
            top, left = (height - size) // 2, (width - size) // 2
            flip_h = flip_v = False
        array = array[top:top + size, left:left + size]
        if flip_h:
            array = array[:, ::-1]
        if flip_v:
            array = array[::-1]
        return to_chw_tensor(array)

    def describe(self) -> str:
        where = f" from {self.root}" if self.root else ""
        crop = "whole images" if self.patch_size is None else (
            f"random {self.patch_size}px crops + flips" if self.train else f"centre {self.patch_size}px crops")
        return f"{len(self)} images{where} ({crop})"


def recon_subset(dataset: Dataset, count: int) -> Subset:
    """The first ``count`` items of ``dataset`` (all if fewer), in order: a fixed reconstruction set."""
    if count < 0:
        raise UserError(f"--recon_count must be >= 0, got {count}")
    return Subset(dataset, list(range(min(count, len(dataset)))))
