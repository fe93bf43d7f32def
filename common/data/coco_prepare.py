"""Prepare fixed-size COCO crops: ``python -m common.data.coco_prepare --coco_dir COCO --out_dir OUT``.

Input: ``COCO/train2017/`` (and ``COCO/val2017/`` with ``--include_val true``).
Output (lossless PNG, train with ``--coco_dir OUT --use_prepared true``)::

    OUT/train/<name>.png    centre crops of the train2017 images outside the validation split
    OUT/val/<name>.png      centre crops of the train2017 images in the hash split (--val_ratio R > 0)
                            and of every val2017 image (--include_val true)
    OUT/prepare.json        the settings; a re-run with a different --size/--val_ratio is refused

``<name>`` is the source path relative to its split folder, extension replaced by ``.png``, so the
split hash (:func:`common.data.datasets.split_key`) sends a crop to the same side as its source.
Each crop is the centred ``--size`` square at the original resolution (no resampling, which would
change the pixel statistics the codec learns); smaller images are reflect-padded to the size first.
``--max_images N`` takes a fixed pseudo-random N of train2017 before the split (val2017 is not cut).

Files are written to a temporary name and renamed, so an interrupted run leaves no partial PNG and a
re-run skips every finished file. Unreadable sources are reported by name and skipped (exit 0 with a
count), or stop the run with ``--strict true``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.cli import MAX_CROP, MAX_WORKERS, OneLineErrorParser, bool_flag, number, run_main
from common.data.datasets import MAX_NAMED_SKIPS, hash_subset, is_validation, reflect_pad_to, split_key
from common.flags import add_pixel_limit_argument
from common.data.images import list_images, load_rgb, set_max_image_pixels
from common.paths import output_dir
from common.errors import UserError

MANIFEST = "prepare.json"
MANIFEST_FORMAT = "lic-toolkit/coco-crops/1"
TEMP_MARK = ".part-"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="python -m common.data.coco_prepare",
        description="Write centre crops of COCO 2017 images as PNG (train/ and val/), in parallel and "
                    "resumably. Train on them with --coco_dir OUT_DIR --use_prepared true.")
    parser.add_argument("--coco_dir", required=True, help="COCO 2017 root holding train2017/ (and val2017/)")
    parser.add_argument("--out_dir", required=True, help="output root (train/, val/, prepare.json)")
    bool_flag(parser, "--include_val", False, "also crop val2017/ into OUT_DIR/val/")
    parser.add_argument("--val_ratio", type=number(float, minimum=0, below=1), default=0.0,
                        help="fraction of train2017 sent to OUT_DIR/val/ by the deterministic hash split "
                             "(default: %(default)s)")
    parser.add_argument("--max_images", type=number(int, minimum=1), default=None, metavar="N",
                        help="use at most N train2017 images, a fixed pseudo-random subset (default: all)")
    parser.add_argument("--size", type=number(int, minimum=1, maximum=MAX_CROP), default=224, help="crop side in pixels (default: %(default)s)")
    parser.add_argument("--workers", type=number(int, minimum=1, maximum=MAX_WORKERS), default=os.cpu_count() or 1, help="parallel processes (default: %(default)s, the CPU count)")
    bool_flag(parser, "--strict", False, "stop at the first unreadable image instead of skipping it")
    add_pixel_limit_argument(parser)
    return parser


def crop_to_png(source: Path, destination: Path, size: int) -> None:
    """Centre-crop ``source`` (reflect-padded if smaller) to ``size``² and write it atomically as PNG."""
    array = reflect_pad_to(np.asarray(load_rgb(source), dtype=np.uint8), size, size)
    top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
    crop = np.ascontiguousarray(array[top:top + size, left:left + size])
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f"{destination.name}{TEMP_MARK}{os.getpid()}")
    try:
        Image.fromarray(crop).save(tmp, format="PNG")
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)


def _job(task: tuple[Path, Path, int]) -> tuple[Path, str | None]:
    """Worker entry: (source, None) on success, (source, reason) when the source cannot be read."""
    source, destination, size = task
    try:
        crop_to_png(source, destination, size)
    except UserError as exc:
        return source, str(exc)
    return source, None


def plan(coco_dir: Path, out_dir: Path, include_val: bool, val_ratio: float,
         max_images: int | None) -> list[tuple[Path, Path]]:
    """Every (source, destination) pair of the run, finished or not."""
    train_root = coco_dir / "train2017"
    if not train_root.is_dir():
        raise UserError(f"no train2017/ folder in {coco_dir}: expected the COCO 2017 layout "
                        f"(train2017/, val2017/)")
    pairs = []
    for source in hash_subset(list_images(train_root), train_root, max_images):
        key = split_key(source, train_root)
        split = "val" if val_ratio > 0 and is_validation(key, val_ratio) else "train"
        pairs.append((source, out_dir / split / f"{key}.png"))
    if include_val:
        val_root = coco_dir / "val2017"
        if not val_root.is_dir():
            raise UserError(f"--include_val true but there is no val2017/ folder in {coco_dir}")
        pairs += [(source, out_dir / "val" / f"{split_key(source, val_root)}.png")
                  for source in list_images(val_root)]
    destinations: dict[Path, Path] = {}
    for source, destination in pairs:
        if destination in destinations:
            raise UserError(f"{source} and {destinations[destination]} would both be written to "
                            f"{destination}; rename one of them")
        destinations[destination] = source
    return pairs


def check_manifest(out_dir: Path, settings: dict) -> None:
    """Refuse to mix crops of different settings in one folder; record the settings on first use."""
    path = out_dir / MANIFEST
    if path.exists():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path} ({exc}); delete it if {out_dir} holds no crops") from exc
        for key, value in settings.items():
            if recorded.get(key) != value:
                raise UserError(f"{out_dir} was prepared with {key}={recorded.get(key)}, not {value}: use "
                                f"another --out_dir or the same settings")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{MANIFEST}{TEMP_MARK}{os.getpid()}")
    tmp.write_text(json.dumps({"format": MANIFEST_FORMAT, **settings}, indent=1) + "\n")
    os.replace(tmp, path)


def remove_stale_temporaries(out_dir: Path) -> int:
    """Delete temporary files left by an interrupted run; returns how many."""
    stale = [p for p in out_dir.rglob(f"*{TEMP_MARK}*") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.val_ratio < 1.0:
        raise UserError(f"--val_ratio must be in [0, 1), got {args.val_ratio}")
    if args.size < 1 or args.workers < 1:
        raise UserError("--size and --workers must be >= 1")
    if args.max_images is not None and args.max_images < 1:
        raise UserError(f"--max_images must be >= 1, got {args.max_images}")
    coco_dir, out_dir = Path(args.coco_dir).expanduser(), Path(args.out_dir).expanduser()
    if coco_dir.exists() and not coco_dir.is_dir():
        raise UserError(f"--coco_dir is not a folder: {coco_dir}")
    if not coco_dir.is_dir():
        raise UserError(f"--coco_dir folder not found: {coco_dir}")

    output_dir(out_dir, "--out_dir")
    set_max_image_pixels(args.max_image_pixels)
    pairs = plan(coco_dir, out_dir, args.include_val, args.val_ratio, args.max_images)
    check_manifest(out_dir, {"size": args.size, "crop": "center", "val_ratio": args.val_ratio})
    remove_stale_temporaries(out_dir)
    todo = [(source, destination, args.size) for source, destination in pairs if not destination.exists()]
    print(f"coco_prepare: {len(pairs)} images, {len(pairs) - len(todo)} already done, {len(todo)} to crop "
          f"to {args.size}x{args.size} into {out_dir}")

    failed: list[tuple[Path, str]] = []
    bar = tqdm(total=len(pairs), initial=len(pairs) - len(todo), unit="img", desc="crop", dynamic_ncols=True)
    pool = multiprocessing.Pool(args.workers) if args.workers > 1 and len(todo) > 1 else None
    try:
        results = pool.imap_unordered(_job, todo, chunksize=8) if pool else map(_job, todo)
        for source, reason in results:
            bar.update(1)
            if reason is None:
                continue
            if args.strict:
                raise UserError(f"{reason}; remove the file or drop --strict")
            failed.append((source, reason))
            if len(failed) <= MAX_NAMED_SKIPS:
                tqdm.write(f"warning: {reason} (skipped)", file=sys.stderr)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    written = len(todo) - len(failed)
    if failed:
        print(f"warning: skipped {len(failed)} unreadable image(s) of {len(todo)}", file=sys.stderr)
        if len(failed) == len(pairs):
            raise UserError(f"none of the {len(pairs)} images could be read; check {coco_dir}")
    print(f"coco_prepare: wrote {written} crops; {out_dir / 'train'}"
          + (f" and {out_dir / 'val'}" if (out_dir / "val").is_dir() else "") + " are ready")
    return 0


def cli() -> None:
    """The ``lic-coco-prepare`` command (installed by ``make setup``): ``main`` with one-line errors."""
    run_main(main)


if __name__ == "__main__":
    cli()
