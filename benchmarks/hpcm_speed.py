"""HPCM speed: eval forward against real compress / decompress, and a bit-exactness check.

For each device and size the model runs ``--repeats`` times after one warm-up; the medians are printed
with compress/forward and decompress/forward, the coded bpp and whether the decoded image equals the
eval forward output clamped to [0, 1] (it must, bit for bit). The input is the ``coffee`` sample photo
resized to the size. Weights follow the deterministic parity recipe (``common.models.hpcm.weights``;
default initialisation codes to almost nothing) unless ``--checkpoint`` is given, so bpp is only
meaningful with a trained checkpoint.

    python benchmarks/hpcm_speed.py [--model hpcm-base] [--sizes 256x256 768x512] [--repeats 3]
                                    [--devices cpu cuda] [--threads N] [--checkpoint PATH]

Sizes are WIDTHxHEIGHT and must be multiples of the model's ``forward_multiple`` (256 for Base/Large).
Without ``--devices`` the CPU and, when available, CUDA are timed. Exit code 1 if a decode mismatches.
"""
from __future__ import annotations


import torch

from common.cli import OneLineErrorParser, run_main
from common.errors import UserError
from common.eval import payload_bytes
from common.models import build
from common.models.hpcm.weights import fill_parity_weights
from benchmarks.timing import median_time, parse_size, photo

MODELS = ("hpcm-base", "hpcm-large", "hpcm-tiny")


@torch.no_grad()
def benchmark(model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict:
    device = x.device
    x_hat = model(x)["x_hat"].clamp(0, 1)
    encoded = model.compress(x)
    decoded = model.decompress(encoded["strings"], encoded["shape"])["x_hat"]
    return {"forward": median_time(lambda: model(x), repeats, device),
            "compress": median_time(lambda: model.compress(x), repeats, device),
            "decompress": median_time(lambda: model.decompress(encoded["strings"], encoded["shape"]),
                                      repeats, device),
            "bpp": payload_bytes(encoded["strings"]) * 8 / (x.shape[-2] * x.shape[-1]),
            "exact": torch.equal(decoded, x_hat),
            "max_diff": float((decoded - x_hat).abs().max())}


def main(argv=None) -> int:
    parser = OneLineErrorParser(prog="python benchmarks/hpcm_speed.py",
                                description="HPCM forward vs real compress/decompress time")
    parser.add_argument("--model", choices=MODELS, default="hpcm-base")
    parser.add_argument("--checkpoint", help="weights to time (default: deterministic parity-recipe weights)")
    parser.add_argument("--sizes", nargs="+", type=parse_size, default=[(256, 256), (768, 512)], metavar="WxH")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"),
                        help="devices to time (default: cpu, plus cuda when available)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads on the CPU (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        raise UserError("--devices cuda was given but no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    # Encoder and decoder must compute identical entropy parameters: no autotuned or TF32 kernels on CUDA.
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

    model = build(args.model, checkpoint=args.checkpoint).eval()
    if not args.checkpoint:
        fill_parity_weights(model)
    for width, height in args.sizes:
        if width % model.forward_multiple or height % model.forward_multiple:
            raise UserError(f"size {width}x{height}: {args.model} needs multiples of {model.forward_multiple}")
    model.update(force=True)

    weights = args.checkpoint or "parity-recipe weights (salt 0)"
    print(f"{args.model}, {weights}, coffee photo, {torch.get_num_threads()} CPU threads, "
          f"median of {args.repeats} after 1 warm-up")
    print("| device | size (WxH) | forward ms | compress ms | decompress ms | compress/forward | "
          "decompress/forward | bpp | decode == forward |")
    print("|---|---|---|---|---|---|---|---|---|")
    all_exact = True
    for device in devices:
        model.to(device)
        for width, height in args.sizes:
            r = benchmark(model, photo(width, height).to(device), args.repeats)
            all_exact &= r["exact"]
            exact = "yes" if r["exact"] else f"NO (max diff {r['max_diff']:.2e})"
            print(f"| {device} | {width}x{height} | {r['forward'] * 1e3:.0f} | {r['compress'] * 1e3:.0f} | "
                  f"{r['decompress'] * 1e3:.0f} | {r['compress'] / r['forward']:.2f} | "
                  f"{r['decompress'] / r['forward']:.2f} | {r['bpp']:.4f} | {exact} |", flush=True)
    return 0 if all_exact else 1


if __name__ == "__main__":
    run_main(main)
