"""The embedded sample set: real photos that ship inside installed wheels, usable fully offline.

Twelve photos (all at least 300 px on the short side) from scikit-image (``skimage.data``),
scikit-learn (``load_sample_image``) and matplotlib (``cbook.get_sample_data``) are written once as
PNG into a cache folder, ``$LIC_SAMPLES_DIR`` or ``~/.cache/lic-toolkit/samples``, split into

* ``test/`` (4 images of different content): astronaut (portrait, fine texture), coffee (indoor
  still life), china (outdoor architecture), flower (saturated nature close-up). Only the final
  evaluation of a run or a study reads them;
* ``val/`` (2 images): chelsea (animal fur, indoor) and rocket (outdoor scene), the validation set of
  training (convergence verdict, best and EMA checkpoints, any tuning), disjoint from the test photos;
* ``train/`` (6 images): hubble_deep_field, immunohistochemistry, retina, motorcycle_left,
  motorcycle_right, grace_hopper. Both stereo views stay in ``train/`` so neither held-out split has a
  near-duplicate in training.

The shipped base model (``baselines/pretrained/``) was trained before ``val/`` existed, on the 6 training
photos and the 2 validation ones; fine-tuning from it never sees the validation photos, and nothing sees
the test photos before the final evaluation.

Nothing is downloaded. Writes are atomic (temporary file + rename) and existing files are kept, so
concurrent or repeated calls are safe and cheap. Several sources were JPEG-compressed once, so these
photos carry mild JPEG artefacts: fine for demos and tests, not a benchmark.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from common.errors import UserError

TEST_NAMES = ("astronaut", "coffee", "china", "flower")
VALIDATION_NAMES = ("chelsea", "rocket")
SPLITS = ("train", "val", "test")


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data
        return getattr(skimage.data, name)()
    return load


def _motorcycle(view: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data
        return skimage.data.stereo_motorcycle()[view]
    return load


def _sklearn(filename: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image
        return load_sample_image(filename)
    return load


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    with cbook.get_sample_data("grace_hopper.jpg") as handle, Image.open(handle) as image:
        return np.asarray(image.convert("RGB"))


SAMPLES: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "motorcycle_left": _motorcycle(0),
    "motorcycle_right": _motorcycle(1),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _grace_hopper,
}


def samples_root() -> Path:
    """The cache folder: ``$LIC_SAMPLES_DIR`` if set, else ``~/.cache/lic-toolkit/samples``."""
    configured = os.environ.get("LIC_SAMPLES_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lic-toolkit" / "samples"


def sample_split(name: str) -> str:
    return "test" if name in TEST_NAMES else "val" if name in VALIDATION_NAMES else "train"


def sample_path(name: str, root: Path | None = None) -> Path:
    return (root or samples_root()) / sample_split(name) / f"{name}.png"


def _write_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # Fast zlib level: a one-off write, 3-4x quicker than the default for ~10 % larger files.
        Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8)[..., :3]).save(tmp, format="PNG",
                                                                                   compress_level=1)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def materialize(root: Path | None = None) -> Path:
    """Write any missing sample PNG below ``root`` (default :func:`samples_root`); returns the root."""
    root = root or samples_root()
    for name, load in SAMPLES.items():
        path = sample_path(name, root)
        # A cache written before val/ existed holds the validation photos in train/: training must not see them.
        for split in SPLITS:
            if split != path.parent.name:
                (root / split / path.name).unlink(missing_ok=True)
        if path.exists():
            continue
        try:
            array = load()
        except ImportError as exc:
            raise UserError(f"the embedded sample photos need scikit-image, scikit-learn and matplotlib "
                            f"({exc}); install them or pass --train_dataset/--test_dataset") from exc
        try:
            _write_png(array, path)
        except OSError as exc:
            raise UserError(f"cannot write the sample photos to {root} ({exc}); set LIC_SAMPLES_DIR to a "
                            f"writable folder") from exc
    return root


def sample_dirs(root: Path | None = None) -> tuple[Path, Path]:
    """``(train_dir, test_dir)`` of the embedded sample set, materialised on first use."""
    train, _, test = sample_splits(root)
    return train, test


def sample_splits(root: Path | None = None) -> tuple[Path, Path, Path]:
    """``(train_dir, val_dir, test_dir)`` of the embedded sample set, materialised on first use."""
    root = materialize(root)
    return root / "train", root / "val", root / "test"
