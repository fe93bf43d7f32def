"""Codec speed: eval-mode forward against real compress / decompress of bmshj2018-factorized.

For each size the model runs ``--repeats`` times after one warm-up; the medians are printed with the ratios
compress/forward and decompress/forward, and the coded bpp. The input is the ``coffee`` sample photo resized
to the size (``--content photo``) or uniform noise (``--content noise``, the worst case for the coder).
Weights are a seeded random init unless ``--checkpoint`` is given, so bpp is only meaningful with one.

    python benchmarks/codec_speed.py [--quality 1] [--sizes 256x256 768x512] [--repeats 5] [--threads N]
                                     [--content photo|noise] [--checkpoint PATH] [--device cpu|cuda]

Sizes are WIDTHxHEIGHT (768x512 is a landscape Kodak image); both must be multiples of 64.
"""
from __future__ import annotations

import argparse
import time

import torch

from common.cli import OneLineErrorParser, run_main
from common.errors import UserError
from common.eval import payload_bytes
from common.assembly import build_with_weights
from common.models import build
from benchmarks.timing import median_time, photo


def parse_size(text: str) -> tuple[int, int]:
    """'768x512' -> (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    if width % 64 or height % 64 or width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"width and height must be positive multiples of 64, got {text!r}")
    return width, height


def make_input(content: str, width: int, height: int) -> torch.Tensor:
    if content == "noise":
        return torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(0))
    return photo(width, height)


@torch.no_grad()
def benchmark(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict:
    device = x.device
    encoded = model.compress(x)
    t_forward = median_time(lambda: model(x), repeats, device)
    t_compress = median_time(lambda: model.compress(x), repeats, device)
    t_decompress = median_time(lambda: model.decompress(encoded["strings"], encoded["shape"]), repeats, device)
    bpp = payload_bytes(encoded["strings"]) * 8 / (x.size(-2) * x.size(-1))
    return {"forward": t_forward, "compress": t_compress, "decompress": t_decompress, "bpp": bpp}


def main(argv=None) -> int:
    parser = OneLineErrorParser(prog="python benchmarks/codec_speed.py",
                                description="forward vs compress/decompress time of bmshj2018-factorized")
    parser.add_argument("--quality", type=int, default=1)
    parser.add_argument("--checkpoint", help="weights to time (default: seeded random init)")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(256, 256), (768, 512)],
                        metavar="WxH")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--content", choices=("photo", "noise"), default="photo")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was given but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = (build_with_weights("bmshj2018-factorized", quality=args.quality, checkpoint=args.checkpoint)
             if args.checkpoint else build("bmshj2018-factorized", quality=args.quality)).eval().to(args.device)
    start = time.perf_counter()
    model.update(force=True)
    update_ms = (time.perf_counter() - start) * 1e3

    print(f"bmshj2018-factorized q{args.quality}, {args.content} input, {args.device}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats} after 1 warm-up; update(force=True) "
          f"{update_ms:.1f} ms")
    print("| size (WxH) | forward ms | compress ms | decompress ms | compress/forward | decompress/forward | bpp |")
    print("|---|---|---|---|---|---|---|")
    for width, height in args.sizes:
        x = make_input(args.content, width, height).to(args.device)
        r = benchmark(model, x, args.repeats)
        print(f"| {width}x{height} | {r['forward'] * 1e3:.1f} | {r['compress'] * 1e3:.1f} | "
              f"{r['decompress'] * 1e3:.1f} | {r['compress'] / r['forward']:.2f} | "
              f"{r['decompress'] / r['forward']:.2f} | {r['bpp']:.4f} |")
    return 0


if __name__ == "__main__":
    run_main(main)
