"""Classic codecs as live anchors: JPEG and WebP through Pillow, measured on the same images as a learned codec.

``python -m baselines.classic --dataset DIR --out_dir D [--codecs jpeg,webp] [--qualities 5,10,...]``

For every image and quality the image is encoded in memory; bpp comes from the encoded bytes over the
image's pixels, PSNR and MS-SSIM from the decoded 8-bit image with the same functions that
``common.eval`` applies to a learned codec's reconstruction, so the two curves compare like with like.
Aggregates are arithmetic means over images (CompressAI's convention). Each curve file records the
Pillow and codec-library versions and the test set.

Pillow's defaults are kept: JPEG with 4:2:0 chroma subsampling and standard Huffman tables (as
CompressAI's published JPEG curves, also made with Pillow), WebP lossy with method 4.
"""
from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Sequence

import PIL
from PIL import Image, features

from common.data.images import list_images, load_rgb, to_tensor
from common.errors import UserError
from common.paths import output_dir
from common.eval.evaluate import aggregate, describe_test_set, write_results
from common.losses import ms_ssim, ms_ssim_scales, psnr_8bit, quantize_8bit
from common.rd import ms_ssim_to_db

# Pillow format name and the feature whose version names the codec library.
CODECS = {"jpeg": ("JPEG", "libjpeg_turbo"), "webp": ("WEBP", "webp")}
DISPLAY_NAMES = {"jpeg": "JPEG", "webp": "WebP"}
# Wide enough to reach from well below to well above what a small learned codec covers on photos.
# Dense where one quality step moves PSNR most (JPEG gains 0.5-1 dB per step below 10 on the sample photos), so
# that a ladder trimmed to a learned curve's quality range does not reach far beyond it. No 1: libjpeg codes
# quality 1 exactly as 2, and two identical points are not a curve BD-rate can use.
DEFAULT_QUALITIES = (2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90, 95)


def parse_codecs(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in CODECS]
    if not names or unknown:
        raise UserError(f"--codecs must name some of: {', '.join(CODECS)} (got {text!r})")
    return names


def parse_qualities(text: str) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError as exc:
        raise UserError(f"--qualities must be comma-separated integers, got {text!r}") from exc
    if not values or values[0] < 1 or values[-1] > 100:
        raise UserError(f"--qualities must lie in 1..100, got {text!r}")
    return values


def codec_version(codec: str) -> str:
    """``"Pillow 10.4.0, libjpeg-turbo 3.0.3"``-style description of what encodes ``codec``."""
    library = CODECS[codec][1]
    version = features.version(library) if features.check(library) else None
    return f"Pillow {PIL.__version__}, {library.replace('_', '-')} {version or 'unknown version'}"


def describe_codec(codec: str) -> str:
    return f"{DISPLAY_NAMES[codec]} through {codec_version(codec)}, Pillow's default settings"


def encode(image: Image.Image, codec: str, quality: int) -> bytes:
    """The encoded bytes of an RGB image (Pillow's defaults apart from the quality)."""
    buffer = io.BytesIO()
    image.save(buffer, format=CODECS[codec][0], quality=quality)
    return buffer.getvalue()


def evaluate_image(image: Image.Image, codec: str, quality: int, name: str) -> dict:
    """One per-image row with the keys of ``common.eval``'s rows (bytes, bpp, PSNR, MS-SSIM, times)."""
    start = time.perf_counter()
    payload = encode(image, codec, quality)
    encoding_time = time.perf_counter() - start
    start = time.perf_counter()
    with Image.open(io.BytesIO(payload)) as decoded_file:
        decoded = decoded_file.convert("RGB")
    decoding_time = time.perf_counter() - start
    x, x_hat = to_tensor(image).unsqueeze(0), to_tensor(decoded).unsqueeze(0)
    width, height = image.size
    row = {"image": name, "height": height, "width": width, "quality": quality, "bytes": len(payload),
           "bpp": len(payload) * 8.0 / (height * width), "psnr-rgb": psnr_8bit(x, x_hat).item(),
           "ms-ssim-rgb": ms_ssim(quantize_8bit(x), quantize_8bit(x_hat), data_range=255.0).item(),
           "encoding_time": encoding_time, "decoding_time": decoding_time}
    row["ms-ssim-db-rgb"] = ms_ssim_to_db(row["ms-ssim-rgb"])
    row["ms_ssim_scales"] = ms_ssim_scales(min(height, width))[0]
    return row


def evaluate_codec(codec: str, qualities: Sequence[int], image_paths: Sequence[Path],
                   root: Path) -> tuple[list[str], list[dict], list[list[dict]]]:
    """(point labels, aggregates, per-image rows per point) of ``codec`` at each quality, in rising order."""
    images = [(str(path.relative_to(root)), load_rgb(path)) for path in image_paths]
    labels, aggregates, rows_per_point = [], [], []
    for quality in sorted(qualities):
        rows = [evaluate_image(image, codec, quality, name) for name, image in images]
        labels.append(f"quality={quality}")
        aggregates.append({**aggregate(rows), "quality": quality})
        rows_per_point.append(rows)
    return labels, aggregates, rows_per_point


def write_codec_curves(dataset: Path, out_dir: Path, codecs: Sequence[str] = tuple(CODECS),
                       qualities: Sequence[int] = DEFAULT_QUALITIES,
                       test_set: dict | None = None) -> list[Path]:
    """Evaluate each codec on the images below ``dataset``; write ``<codec>.json`` (+ CSV) into ``out_dir``."""
    image_paths = list_images(dataset)
    info = test_set or describe_test_set(dataset, len(image_paths))
    written = []
    for codec in codecs:
        labels, aggregates, rows = evaluate_codec(codec, qualities, image_paths, dataset)
        json_path, _ = write_results(out_dir / f"{codec}.json", DISPLAY_NAMES[codec], describe_codec(codec), labels,
                                     aggregates, rows, test_set=info, codec=codec_version(codec))
        written.append(json_path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    from common.cli import OneLineErrorParser

    parser = OneLineErrorParser(prog="python -m baselines.classic",
                                description="JPEG/WebP R-D curves (Pillow) on a folder of images, in "
                                            "CompressAI's JSON format.")
    parser.add_argument("--dataset", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--out_dir", required=True, help="folder for <codec>.json and <codec>.csv")
    parser.add_argument("--codecs", default=",".join(CODECS), help="comma-separated: jpeg, webp")
    parser.add_argument("--qualities", default=",".join(map(str, DEFAULT_QUALITIES)),
                        help="comma-separated encoder qualities (1-100)")
    parser.add_argument("--test_set", help="name recorded as the test set (default: the folder's name)")
    args = parser.parse_args(argv)
    dataset = Path(args.dataset)
    output_dir(args.out_dir, "--out_dir")
    codecs, qualities = parse_codecs(args.codecs), parse_qualities(args.qualities)
    info = describe_test_set(dataset, len(list_images(dataset)), args.test_set)
    for path in write_codec_curves(dataset, Path(args.out_dir), codecs, qualities, info):
        print(f"wrote {path}")
    return 0


def cli() -> None:
    """The ``lic-classic`` command (installed by ``make setup``): ``main`` with one-line errors."""
    from common.cli import run_main

    run_main(main)


if __name__ == "__main__":
    cli()
