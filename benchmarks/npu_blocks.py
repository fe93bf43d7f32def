"""GDN vs ReLU vs GDNishLite (vs GDNishLite + Upsample decoder) on bmshj2018-factorized q1, side by side.

For each variant: parameters, multiply-accumulates per pixel (torch.utils.flop_counter: convolutions and
matrix products; element-wise ops such as GDN's sqrt or the HardSigmoid gate are not MACs and are not
counted), CPU time of the full reconstruction graph ``g_s(round(g_a(x)))`` in PyTorch and in
onnxruntime (median of repeats, ratio to GDN), and the ONNX operator types of the encoder and decoder
graphs outside the NPU-friendly set of seed 003 §7 (``common.export.onnx.NPU_FRIENDLY_OPS``), and how far
the freshly replaced model is from the GDN model it was built from (relative L2 change of ``x_hat``).

Weights are random (quality-1 sizes): speed, size and operator sets do not depend on trained values.

    python -m benchmarks.npu_blocks [--input_size 256] [--repeats 10] [--threads 1] [--json out.json]
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from compressai.models import FactorizedPrior
from torch.utils.flop_counter import FlopCounterMode

from common.cli import OneLineErrorParser, run_main
from common.errors import UserError
from common.export.onnx import FullCodec, export_onnx, onnxruntime_session
from common.models.bmshj2018 import channels
from common.replace import apply_config, make_config

VARIANTS = {
    "GDN": None,
    "ReLU": make_config("all", "relu"),
    "GDNishLite": make_config("all", "gdnish"),
    "GDNishLite+Upsample": make_config("all", "gdnish", decoder_upsample=True),
}


def hand_count_gdn_macs_per_pixel(n: int, m: int) -> float:
    """MACs per input pixel of the GDN model, by hand: four 5x5 stride-2 convs per transform at pixel
    fractions 1/4, 1/16, 1/64, 1/256 of the image, and one N x N 1x1 conv per GDN/IGDN."""
    encoder_convs = (3 * n * 25) / 4 + (n * n * 25) / 16 + (n * n * 25) / 64 + (n * m * 25) / 256
    gdn = n * n * (1 / 4 + 1 / 16 + 1 / 64)
    return 2 * (encoder_convs + gdn)  # the decoder mirrors the encoder exactly


def macs_per_pixel(module: torch.nn.Module, x: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module(x)
    return counter.get_total_flops() / 2 / (x.shape[-2] * x.shape[-1])


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def base_model() -> FactorizedPrior:
    torch.manual_seed(0)
    return FactorizedPrior(*channels(1)).eval()


def measure(name: str, config: dict | None, input_size: int, repeats: int, threads: int, workdir: Path,
            reference) -> dict:
    model = apply_config(base_model(), config).eval()
    model.update(force=True)
    graph = FullCodec(model).eval()
    x = torch.rand(1, 3, input_size, input_size)
    with torch.no_grad():
        x_hat = model(x)["x_hat"]
    row = {
        "init_rel_change": ((x_hat - reference(x)).norm() / reference(x).norm()).item(),
        "params": sum(p.numel() for p in model.parameters()),
        "params_g_a": sum(p.numel() for p in model.g_a.parameters()),
        "params_g_s": sum(p.numel() for p in model.g_s.parameters()),
        "macs_per_pixel": macs_per_pixel(graph, x),
    }
    with torch.no_grad():
        row["torch_ms"] = 1000 * median_time(lambda: graph(x), repeats)
    reports = {part: export_onnx(model, part, workdir / f"{name}_{part}.onnx", input_size)
               for part in ("full", "encoder", "decoder")}
    if not all(r.ok for r in reports.values()):
        raise RuntimeError(f"ONNX parity failed for {name}")
    session = onnxruntime_session(reports["full"].path, threads)
    feed = {session.get_inputs()[0].name: x.numpy()}
    row["ort_ms"] = 1000 * median_time(lambda: session.run(None, feed), repeats)
    for part in ("encoder", "decoder"):
        row[f"{part}_ops"] = dict(sorted(reports[part].op_types.items()))
        row[f"{part}_unfriendly"] = reports[part].unfriendly_ops()
    return row


def format_table(rows: dict[str, dict]) -> str:
    base = rows["GDN"]
    lines = [f"{'variant':<20} {'params':>10} {'MACs/px':>9} {'torch ms':>9} {'ratio':>6} {'ORT ms':>8} "
             f"{'ratio':>6} {'init chg':>8}  ops outside the NPU set (encoder | decoder)"]
    for name, r in rows.items():
        lines.append(f"{name:<20} {r['params']:>10,} {r['macs_per_pixel']:>9,.0f} {r['torch_ms']:>9.1f} "
                     f"{r['torch_ms'] / base['torch_ms']:>6.2f} {r['ort_ms']:>8.1f} {r['ort_ms'] / base['ort_ms']:>6.2f} {r['init_rel_change']:>8.2g}"
                     f"  {len(r['encoder_unfriendly'])}: {','.join(r['encoder_unfriendly']) or '-'} | "
                     f"{len(r['decoder_unfriendly'])}: {','.join(r['decoder_unfriendly']) or '-'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = OneLineErrorParser(prog="python -m benchmarks.npu_blocks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_size", type=int, default=256, help="square image side (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per variant (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for PyTorch and onnxruntime (default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write the measurements to this JSON file")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        raise UserError("--repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)
    gdn = base_model()

    def reference(x):
        with torch.no_grad():
            return gdn(x)["x_hat"]

    with tempfile.TemporaryDirectory() as tmp:
        rows = {name: measure(name, config, args.input_size, args.repeats, args.threads, Path(tmp), reference)
                for name, config in VARIANTS.items()}
    hand = hand_count_gdn_macs_per_pixel(*channels(1))
    print(f"bmshj2018-factorized q1, {args.input_size}x{args.input_size}, {args.threads} thread(s), "
          f"median of {args.repeats}; full graph = g_s(round(g_a(x)))")
    print(format_table(rows))
    print(f"check: GDN MACs/px counted {rows['GDN']['macs_per_pixel']:,.0f}, by hand {hand:,.0f} "
          "(convs + GDN 1x1; biases not counted)")
    if args.json:
        Path(args.json).write_text(json.dumps({"input_size": args.input_size, "threads": args.threads,
                                               "repeats": args.repeats, "variants": rows}, indent=2))
    return 0


if __name__ == "__main__":
    run_main(main)
