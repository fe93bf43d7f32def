"""Reading image files of any common mode as 8-bit RGB."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from common.errors import UserError

# Pillow's own default (about 89 megapixels, a 9459 px square): larger files are refused as possible bombs.
DEFAULT_MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")


def list_images(root: str | os.PathLike) -> list[Path]:
    """All image files below ``root`` (recursive), sorted by relative path. Errors name the folder."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise UserError(f"dataset path is not a folder: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {root}")
    return files


def to_rgb8(image: Image.Image) -> Image.Image:
    """Convert grayscale, palette, RGBA, CMYK and 16-bit images to 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        # 16-bit modes always span 0..65535 (a dark 16-bit image must stay dark); mode "I" carries no
        # bit depth, so values above 255 are taken as 16-bit and the rest as 8-bit.
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(np.round(array / peak * 255.0), 0, 255).astype(np.uint8), mode="L")
    elif image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(array * 255.0), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        # Composite on white so transparent areas do not become arbitrary colours.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def set_max_image_pixels(limit: int | None) -> None:
    """Raise (or restore) Pillow's decompression-bomb limit: images above it are refused, not decoded."""
    Image.MAX_IMAGE_PIXELS = DEFAULT_MAX_IMAGE_PIXELS if limit is None else int(limit)


def too_large_message(path, exc: Exception) -> str:
    return (f"image {path} is larger than the pixel limit of {Image.MAX_IMAGE_PIXELS} pixels ({exc}); "
            "if you trust it, pass --max_image_pixels N")


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as an 8-bit RGB PIL image; unreadable files raise :class:`UserError` naming the file."""
    try:
        with warnings.catch_warnings():
            # Pillow warns between the limit and twice the limit and raises beyond: refuse both alike.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                return to_rgb8(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(too_large_message(path, exc)) from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"cannot read image {path}: {exc}") from exc


def to_tensor(image: Image.Image) -> torch.Tensor:
    """8-bit RGB PIL image -> float tensor 3×H×W in [0, 1]."""
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_rgb_tensor(path: str | os.PathLike) -> torch.Tensor:
    return to_tensor(load_rgb(path))
