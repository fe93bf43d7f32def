"""``python -m common.eval``: evaluate checkpoints or pretrained weights on an image folder with real bitstreams.

Writes CompressAI-format JSON (one list entry per checkpoint / quality) and a per-image CSV beside it.
"""
from __future__ import annotations

import sys
from pathlib import Path
import warnings
from typing import Sequence

import torch

from common import receipt, replace
from common.cli import MAX_WORKERS, OneLineErrorParser, bool_flag, number, run_main
from common.flags import add_pixel_limit_argument, add_replace_arguments
from common.data.images import list_images, set_max_image_pixels
from common.errors import UserError
from common.paths import output_file, path_text
from common.eval.evaluate import (PAD_MODES, DecodeMismatchWarning, codec_description, describe,
                                  describe_test_set, evaluate, write_results)
from common.models import available_models, entry, memory_format
from common.models.memory_format import MEMORY_FORMATS
from common.models.hpcm.model import BITSTREAM_FORMATS
from common.assembly import build_with_weights, load_model

# Padding beyond the largest eval multiple (HPCM's 256) only costs memory: each side grows to the next multiple,
# and a multiple of 10^9 asks for a 10^9 x 10^9 image. 4096 keeps any padded image within 4096 px of its own size.
MAX_PAD_MULTIPLE = 4096


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(
        prog="python -m common.eval",
        description="Real-bitstream evaluation (CompressAI eval_model protocol): zero padding, centred, to the "
                    "model's eval multiple (64 bmshj2018, 256 HPCM); bpp from the bytes over the unpadded "
                    "pixels; PSNR / MS-SSIM on 8-bit images; arithmetic means over images.")
    parser.add_argument("--model", required=True, help=f"model name ({', '.join(available_models())})")
    parser.add_argument("--quality", help="quality level; with --pretrained a comma list (1,2,3) gives one "
                                          "point per quality")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", nargs="+", metavar="PATH",
                        help="one or more checkpoints; each becomes one point of the curve")
    source.add_argument("--pretrained", action="store_true",
                        help="published weights from the local torch.hub cache (never downloaded)")
    parser.add_argument("--metric", choices=("mse", "ms-ssim"), default="mse",
                        help="which published weights --pretrained loads (default: mse)")
    parser.add_argument("--dataset", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--output", required=True, help="JSON file to write; the per-image CSV goes beside it")
    parser.add_argument("--test_set", help="test set recorded in the JSON: a folder of baselines/published "
                                           "(kodak, clic2020-professional-valid, ...) to be compared with its "
                                           "curves by common.rd, or any name (default: the folder's name)")
    parser.add_argument("--name", help="curve name in the JSON (default: model name, plus -metric for --pretrained)")
    parser.add_argument("--entropy-estimation", "--entropy_estimation", dest="entropy_estimation",
                        action="store_true", help="likelihood-based bpp from the eval forward instead of coding "
                                                  "(pads too, unlike compressai's)")
    parser.add_argument("--pad_mode", choices=PAD_MODES, default="zero",
                        help="padding to the eval multiple (default: zero, as the published protocols)")
    parser.add_argument("--pad_multiple", type=number(int, minimum=1, maximum=MAX_PAD_MULTIPLE),
                        help=f"pad to this multiple (1 to {MAX_PAD_MULTIPLE}) instead of the model's eval multiple "
                             "(recorded in the JSON)")
    add_pixel_limit_argument(parser)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--memory_format", choices=MEMORY_FORMATS, default="auto",
                        help="layout of the model's activations: auto = what the model declares for "
                        "the CPU (channels_last for HPCM-Base/-Large), PyTorch's default otherwise")
    parser.add_argument("--threads", type=number(int, minimum=1, maximum=MAX_WORKERS),
                        help="torch CPU threads (compressai's eval_model uses 1; default: torch's choice)")
    parser.add_argument("--no-update", "--no_update", dest="update", action="store_false",
                        help="keep the CDF tables stored in the checkpoint (default: rebuild them with "
                             "update(force=True), as compressai's eval_model does for checkpoints)")
    parser.add_argument("--bitstream", choices=BITSTREAM_FORMATS,
                        help="HPCM models: the byte layout of the streams, ours (default) or the official code's "
                             "(its float32 CDF tables and symbol order; same size to a few bytes)")
    bool_flag(parser, "--trust_checkpoint", False,
              "allow pickled Python objects in checkpoints (only for files you trust)")
    # Only needed for raw state dicts of replaced models; our training checkpoints record their recipe.
    add_replace_arguments(parser, trainable_scopes=False)
    return parser


def _qualities(text: str | None, pretrained: bool) -> list[int | None]:
    if text is None:
        return [None]
    try:
        qualities = [int(q) for q in text.split(",") if q.strip()]
    except ValueError:
        raise UserError(f"--quality must be an integer or a comma list of integers, got {text!r}") from None
    if not qualities:
        raise UserError("--quality is empty")
    if len(qualities) > 1 and not pretrained:
        raise UserError("a list of qualities needs --pretrained; give one checkpoint per point instead")
    return qualities


def _load(args, quality: int | None, checkpoint: str | None, replace_config: dict | None) -> torch.nn.Module:
    if checkpoint is not None:
        return load_model(args.model, quality=quality or 1, checkpoint=checkpoint, trust=args.trust_checkpoint,
                          replace=replace_config)
    if not entry(args.model).published_weights:
        published = [name for name in available_models() if entry(name).published_weights]
        raise UserError(f"--pretrained is available for {', '.join(published)} only; pass the weights of "
                        f"{args.model} with --checkpoint PATH")
    if replace_config is not None:
        raise UserError("replacement flags apply to checkpoints only; published weights are the original models")
    # build_with_weights() rather than load_model(): only it knows the --metric of published weights.
    kwargs = {"quality": quality} if quality is not None else {}
    return build_with_weights(args.model, pretrained=True, metric=args.metric, trust=args.trust_checkpoint, **kwargs)


def report_bpp_gaps(label: str, rows: list[dict]) -> None:
    """Each image's real vs estimated bpp on stderr, and a warning where the gap is more than the coder's fixed
    cost can explain (``common.receipt.suspect_gaps``)."""
    gaps = receipt.bpp_gaps(rows)
    for image in gaps["images"]:
        print(f"  {image['image']}: bpp {image['bpp']:.4f}, estimate {image['bpp_estimated']:.4f} "
              f"({image['gap_%']:+.2f} %)", file=sys.stderr)
    suspect = receipt.suspect_gaps(gaps)
    if suspect:
        warnings.warn(receipt.gap_warning(suspect, label), stacklevel=2)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    prefix = "WARNING" if issubclass(category, DecodeMismatchWarning) else "warning"
    return f"{prefix}: {message}\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.formatwarning = _one_line_warning
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA device is available; use --device cpu")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    if Path(args.output).suffix.lower() != ".json":
        raise UserError(f"--output must name a .json file (the per-image CSV is written beside it), got {args.output}")
    output_file(args.output, "--output")
    output_file(Path(args.output).with_suffix(".csv"), "--output's CSV")
    set_max_image_pixels(args.max_image_pixels)
    images = list_images(args.dataset)
    qualities = _qualities(args.quality, args.pretrained)
    replace_config = replace.config_from_args(args)
    runs = ([(q, None, f"q{q}" if q is not None else "pretrained") for q in qualities] if args.pretrained
            else [(qualities[0], path, path_text(path)) for path in args.checkpoint])

    labels, aggregates, rows_per_point, description = [], [], [], ""
    for quality, checkpoint, label in runs:
        model = _load(args, quality, checkpoint, replace_config)
        if args.bitstream is not None:
            if not hasattr(model, "bitstream"):
                raise UserError(f"--bitstream applies to HPCM models; {args.model} has one byte layout")
            model.bitstream = args.bitstream
        memory_format.apply(model, args.memory_format, torch.device(args.device))
        default_multiple = model.eval_pad_multiple
        pad_multiple = args.pad_multiple or default_multiple
        # compressai's published files already carry their CDF tables; checkpoints get them rebuilt.
        rows, agg = evaluate(model, images, pad_multiple=pad_multiple, pad_mode=args.pad_mode,
                             entropy_estimation=args.entropy_estimation,
                             update=args.update and not args.pretrained, device=args.device, root=args.dataset)
        description = describe(args.entropy_estimation, args.pad_mode, pad_multiple, default_multiple,
                               agg["num_images_fewer_ms_ssim_scales"])
        labels.append(label)
        aggregates.append(agg)
        rows_per_point.append(rows)
        if not args.entropy_estimation:
            report_bpp_gaps(label, rows)
        print(f"{label}: {agg['num_images']} images, bpp {agg['bpp']:.4f} (likelihood estimate "
              f"{agg['bpp_estimated']:.4f}), PSNR {agg['psnr-rgb']:.4f} dB, MS-SSIM {agg['ms-ssim-rgb']:.6f}, "
              f"enc {agg['encoding_time']:.3f} s, dec {agg['decoding_time']:.3f} s", file=sys.stderr)

    name = args.name or (f"{args.model}-{args.metric}" if args.pretrained else args.model)
    json_path, csv_path = write_results(args.output, name, description, labels, aggregates, rows_per_point,
                                        test_set=describe_test_set(args.dataset, len(images), args.test_set),
                                        codec=codec_description(args.model, args.bitstream))
    print(f"wrote {json_path} and {csv_path}", file=sys.stderr)
    return 0


def cli() -> None:
    """The ``lic-eval`` command (installed by ``make setup``): ``main`` with one-line errors."""
    run_main(main)


if __name__ == "__main__":
    cli()
