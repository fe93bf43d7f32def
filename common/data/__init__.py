"""Training and validation data: image folders, COCO, and the embedded sample photos.

Where the data comes from (:func:`build_datasets`), first match wins:

* training images: ``--train_dataset DIR`` > ``--coco_dir DIR`` > the embedded samples
  (:mod:`common.data.samples`);
* validation images: ``--test_dataset DIR`` > a hash split of the training images when
  ``--val_ratio R`` (> 0) is given > the training source's own validation folder (COCO ``val2017/``,
  prepared ``val/``, samples ``test/``) > a hash split with R = 0.02.

COCO layouts: raw ``DIR/train2017/`` (+ ``DIR/val2017/``), or with ``--use_prepared true`` the
output of ``python -m common.data.coco_prepare``: ``DIR/train/`` (+ ``DIR/val/``) of ready crops.

``--max_images N`` keeps a deterministic pseudo-random N of the training source (before a hash
split, so the validation part shrinks with it). ``--patch_size`` defaults to 256 (CompressAI's and
HPCM's training size); the seeds' COCO recipes use 224 (``--patch_size 224``, the size
``coco_prepare`` writes). Validation items are centre crops of the same size, as in CompressAI's
``examples/train.py``. Hash split, cropping, flips, padding and unreadable-file rules:
:mod:`common.data.datasets`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from common.data.datasets import (ImageFileDataset, find_images, hash_split, hash_subset, is_validation,
                                  readable_images, recon_subset, split_key, warn)
from common.data.images import list_images, load_rgb, load_rgb_tensor, set_max_image_pixels, to_tensor
from common.data.samples import sample_dirs, sample_splits
from common.errors import UserError

__all__ = ["DataConfig", "ImageFileDataset", "build_datasets", "find_images", "hash_split", "hash_subset",
           "is_validation", "list_images", "load_rgb", "load_rgb_tensor", "recon_subset", "sample_dirs", "sample_splits",
           "split_key", "to_tensor"]

DEFAULT_VAL_RATIO = 0.02
DEFAULT_PATCH_SIZE = 256
DEFAULT_CACHE_MB = 512.0


def default_num_workers() -> int:
    """DataLoader workers when not told: up to 4, no more than the machine's CPUs."""
    return min(4, os.cpu_count() or 1)


@dataclass
class DataConfig:
    """Training and validation images (:func:`common.data.build_datasets`)."""

    train_dataset: str | None = None
    test_dataset: str | None = None
    coco_dir: str | None = None
    use_prepared: bool = False
    val_ratio: float | None = None
    max_images: int | None = None
    patch_size: int = DEFAULT_PATCH_SIZE
    val_patch_size: int | None = None
    num_workers: int = field(default_factory=default_num_workers)
    strict: bool = False
    max_image_pixels: int | None = None
    cache_images_mb: float = DEFAULT_CACHE_MB


def _existing_dir(path: str | os.PathLike, flag: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise UserError(f"{flag} folder not found: {path}")
    if not path.is_dir():
        raise UserError(f"{flag} is not a folder: {path}")
    return path


def _coco_roots(coco_dir: Path, use_prepared: bool) -> tuple[Path, Path | None]:
    """(training folder, its validation folder or None) of a COCO root."""
    train, val = ("train", "val") if use_prepared else ("train2017", "val2017")
    if not (coco_dir / train).is_dir():
        if use_prepared and (coco_dir / "train2017").is_dir():
            raise UserError(f"{coco_dir} is a raw COCO folder (train2017/), not prepared crops: drop "
                            f"--use_prepared or run python -m common.data.coco_prepare first")
        if not use_prepared and (coco_dir / "train").is_dir():
            raise UserError(f"{coco_dir} holds prepared crops (train/): add --use_prepared true")
        hint = ("create it with python -m common.data.coco_prepare --coco_dir COCO --out_dir "
                f"{coco_dir}" if use_prepared else "expected the COCO 2017 layout train2017/, val2017/")
        raise UserError(f"no {train}/ folder in {coco_dir}: {hint}")
    return coco_dir / train, (coco_dir / val if (coco_dir / val).is_dir() else None)


def _training_source(args: DataConfig) -> tuple[Path, Path | None, str]:
    """(training folder, the source's own validation folder or None, description)."""
    if args.train_dataset and args.coco_dir:
        raise UserError("pass either --train_dataset or --coco_dir, not both")
    if args.train_dataset:
        return _existing_dir(args.train_dataset, "--train_dataset"), None, "--train_dataset"
    if args.coco_dir:
        coco_dir = _existing_dir(args.coco_dir, "--coco_dir")
        train, val = _coco_roots(coco_dir, args.use_prepared)
        return train, val, "prepared COCO crops" if args.use_prepared else "COCO"
    train, val, _ = sample_splits()
    return train, val, "the embedded sample photos (no data flag given; validation on their val/ split)"


def _check_prepared_size(files: list[Path], patch_size: int) -> None:
    with Image.open(files[0]) as image:
        width, height = image.size
    if min(width, height) < patch_size:
        warn(f"prepared crops are {width}x{height}, smaller than --patch_size {patch_size}: they will be "
             f"reflect-padded; pass --patch_size {min(width, height)}")


def build_datasets(args: DataConfig, seed: int = 0,
                   report: bool = True) -> tuple[ImageFileDataset, ImageFileDataset]:
    """``(train_dataset, val_dataset)`` from the flags of :func:`add_arguments` (rules: module docstring).

    ``report`` prints where the data comes from; DDP ranks other than 0 pass False to avoid N copies.
    """
    set_max_image_pixels(args.max_image_pixels)
    val_ratio, max_images, patch_size = args.val_ratio, args.max_images, args.patch_size
    if val_ratio is not None and not 0.0 <= val_ratio < 1.0:
        raise UserError(f"--val_ratio must be in [0, 1), got {val_ratio}")
    if max_images is not None and max_images < 1:
        raise UserError(f"--max_images must be >= 1, got {max_images}")
    if patch_size < 1:
        raise UserError(f"--patch_size must be >= 1, got {patch_size}")
    val_patch_size = patch_size if args.val_patch_size is None else args.val_patch_size
    if val_patch_size < 1:
        raise UserError(f"--val_patch_size must be >= 1, got {val_patch_size}")

    train_root, own_val_root, source = _training_source(args)
    pool = hash_subset(list_images(train_root), train_root, max_images)
    if args.test_dataset and val_ratio:
        raise UserError("--val_ratio splits the training images but --test_dataset already gives "
                        "validation images: drop one of them")
    if args.test_dataset:
        val_root = _existing_dir(args.test_dataset, "--test_dataset")
        train_files, val_files = pool, list_images(val_root)
    elif not val_ratio and own_val_root is not None:
        val_root = own_val_root
        train_files, val_files = pool, list_images(val_root)
    elif val_ratio == 0.0:
        raise UserError(f"--val_ratio 0 leaves no validation images ({train_root} has no validation "
                        f"folder): pass --test_dataset DIR or a ratio > 0")
    else:
        val_root = train_root
        ratio = DEFAULT_VAL_RATIO if val_ratio is None else val_ratio
        train_files, val_files = hash_split(pool, train_root, ratio)
        if not val_files or not train_files:
            side = "validation" if not val_files else "training"
            raise UserError(f"the hash split of {len(pool)} images in {train_root} with --val_ratio {ratio} "
                            f"leaves no {side} image: pass --test_dataset DIR or change --val_ratio")

    train_files = readable_images(train_files, train_root, args.strict)
    val_files = readable_images(val_files, val_root, args.strict)
    if args.coco_dir and args.use_prepared:
        _check_prepared_size(train_files, patch_size)
    cache_mb = args.cache_images_mb
    if cache_mb < 0:
        raise UserError(f"--cache_images_mb must be >= 0, got {cache_mb:g}")
    train_set = ImageFileDataset(train_files, patch_size, train=True, seed=seed, strict=args.strict,
                                 root=train_root, cache_mb=cache_mb)
    val_set = ImageFileDataset(val_files, val_patch_size, train=False, seed=seed, strict=args.strict,
                               root=val_root, cache_mb=cache_mb)
    if report:
        print(f"data: training on {source}: {train_set.describe()}")
        print(f"data: validating on {val_set.describe()}")
    return train_set, val_set
