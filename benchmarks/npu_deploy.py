"""Deployment facts of study 6's trained models (``make study-npu``), every arm side by side in one run.

For each arm's final model of one seed and λ: the encoder and decoder graphs exported to ONNX (dynamic height and
width), their operators outside the NPU-friendly set of seed 003 §7 (``common.export.onnx.NPU_FRIENDLY_OPS``), the
largest difference between onnxruntime and PyTorch (on a random image, and on the latents of the embedded 'coffee'
photo at ``--size``, with the share of 8-bit pixel values that differ and the PSNR between the two decodes), the
exporter's verdict (``common.export.onnx``; layer by layer for a QAT graph), and the decoder graph's onnxruntime
CPU latency at ``--size`` (768x512 by default, Kodak's size): the median over ``--repeats`` rounds in which every
arm runs once in turn, so all arms see the same machine state, and its ratio to the GDN reference's.

    python -m benchmarks.npu_deploy runs/studies/npu [--seed 0] [--lambda 0.0035] [--size 768x512]
        [--repeats 20] [--threads 1] [--json OUT.json] [--markdown OUT.md]
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from benchmarks.timing import parse_size, photo
from common.checkpoint import atomic_write_text
from common.cli import OneLineErrorParser, number, run_main
from common.errors import UserError
from common.losses import quantize_8bit
from common.export.onnx import export_onnx, onnxruntime_session, part_module

REFERENCE = "gdn"


def arm_checkpoints(runs_dir: Path, seed: int, lmbda: float) -> dict[str, Path]:
    """Each arm's final model of ``seed`` and ``lmbda``, the reference first."""
    found = {path.parent.parent.parent.name: path
             for path in sorted(runs_dir.glob(f"*/seed{seed}/lambda_{lmbda:g}/last.pt"))}
    if REFERENCE not in found:
        raise UserError(f"no {REFERENCE}/seed{seed}/lambda_{lmbda:g}/last.pt under {runs_dir}: run make study-npu "
                        "first, or give the --seed and --lambda of one of its runs")
    return {REFERENCE: found.pop(REFERENCE), **found}


def decoder_input(model, width: int, height: int) -> torch.Tensor:
    """The rounded latents of the embedded photo at width x height: what the decoder graph sees in deployment."""
    with torch.no_grad():
        return torch.round(model.g_a(photo(width, height)))


def psnr_db(image: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of two images in [0, 1] (inf when they are equal)."""
    mse = float(np.mean((image.astype(np.float64) - reference) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def measure_arms(checkpoints: dict[str, Path], width: int, height: int, repeats: int, threads: int,
                 workdir: Path) -> dict[str, dict]:
    from common.assembly import load_model

    results, sessions, inputs = {}, {}, {}
    for arm, checkpoint in checkpoints.items():
        model = load_model(checkpoint=str(checkpoint)).eval()
        entry = {"checkpoint": str(checkpoint)}
        for part in ("encoder", "decoder"):
            report = export_onnx(model, part, workdir / f"{arm}_{part}.onnx", input_size=256, dynamic=True)
            entry[part] = {"ok": report.ok, "max_abs_diff": report.max_abs_diff, "tolerance": report.tolerance,
                           "operators": dict(sorted(report.op_types.items())),
                           "outside_npu_set": report.unfriendly_ops(),
                           "quantized_check": dataclasses.asdict(report.quantized) if report.quantized else None}
        latents = decoder_input(model, width, height)
        session = onnxruntime_session(workdir / f"{arm}_decoder.onnx", threads)
        name = session.get_inputs()[0].name
        produced = session.run(None, {name: latents.numpy()})[0]
        with torch.no_grad():
            expected = part_module(model, "decoder")[0](latents).numpy()  # the exported graph's PyTorch module
        entry["decoder"].update(photo_max_abs_diff=float(np.abs(produced - expected).max()),
                                photo_8bit_differ=float((quantize_8bit(torch.from_numpy(produced))
                                                         != quantize_8bit(torch.from_numpy(expected))).float().mean()),
                                photo_psnr_ort_vs_pytorch_db=psnr_db(produced, expected))
        results[arm], sessions[arm], inputs[arm] = entry, (session, name), latents.numpy()
    times: dict[str, list[float]] = {arm: [] for arm in checkpoints}
    for round_index in range(repeats + 1):  # the first round warms every session up and is not counted
        for arm, (session, name) in sessions.items():
            start = time.perf_counter()
            session.run(None, {name: inputs[arm]})
            if round_index:
                times[arm].append(time.perf_counter() - start)
    reference = statistics.median(times[REFERENCE])
    for arm, values in times.items():
        median = statistics.median(values)
        results[arm]["decoder"].update({"latency_ms_median": median * 1e3, "latency_ms_min": min(values) * 1e3,
                                        "latency_ms_max": max(values) * 1e3, "latency_vs_gdn": median / reference})
    return results


def markdown(document: dict) -> str:
    lines = [f"Deployment facts of each arm's final model (seed {document['seed']}, λ {document['lambda']:g}); "
             f"decoder latency: onnxruntime CPU, {document['threads']} thread(s), {document['size']}, median of "
             f"{document['repeats']} interleaved rounds; {document['machine']}", "",
             "| arm | encoder ops outside the NPU set | decoder ops outside the NPU set | ORT vs PyTorch max abs diff "
             "(encoder / decoder / decoder on the photo) | decoded photo, ORT vs PyTorch: 8-bit values that differ, "
             "PSNR | exporter's check (encoder / decoder; QAT graphs: each quantized layer within one step of its "
             "output quantizer) | decoder latency ms | vs GDN |",
             "|---|---|---|---|---|---|---|---|"]
    for arm, entry in document["arms"].items():
        enc, dec = entry["encoder"], entry["decoder"]
        verdicts = " / ".join(("yes" if part["ok"] else "NO") + (" (per layer)" if part["quantized_check"] else "")
                              for part in (enc, dec))
        lines.append(f"| {arm} | {', '.join(enc['outside_npu_set']) or 'none'} | "
                     f"{', '.join(dec['outside_npu_set']) or 'none'} | {enc['max_abs_diff']:.2g} / "
                     f"{dec['max_abs_diff']:.2g} / {dec['photo_max_abs_diff']:.2g} | "
                     f"{100 * dec['photo_8bit_differ']:.2g} %, {dec['photo_psnr_ort_vs_pytorch_db']:.1f} dB | {verdicts} | "
                     f"{dec['latency_ms_median']:.1f} | {dec['latency_vs_gdn']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    from common.receipt import machine_description

    parser = OneLineErrorParser(prog="python -m benchmarks.npu_deploy", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", help="study 6's run folders (make study-npu: runs/studies/npu)")
    parser.add_argument("--seed", type=number(int, minimum=0), default=0)
    parser.add_argument("--lambda", dest="lmbda", type=number(float, above=0), default=0.0035)
    parser.add_argument("--size", type=parse_size, default=(768, 512), help="WIDTHxHEIGHT of the decoded image")
    parser.add_argument("--repeats", type=number(int, minimum=1, maximum=10_000), default=20)
    parser.add_argument("--threads", type=number(int, minimum=1, maximum=256), default=1)
    parser.add_argument("--json", help="write the measurements here")
    parser.add_argument("--markdown", help="write the table here")
    args = parser.parse_args(argv)
    width, height = args.size
    if width % 16 or height % 16:
        raise UserError(f"--size must be multiples of 16 (the decoder's latents are 1/16 of the image), got "
                        f"{width}x{height}")
    checkpoints = arm_checkpoints(Path(args.runs_dir), args.seed, args.lmbda)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as workdir:
        arms = measure_arms(checkpoints, width, height, args.repeats, args.threads, Path(workdir))
    document = {"seed": args.seed, "lambda": args.lmbda, "size": f"{width}x{height}", "repeats": args.repeats,
                "threads": args.threads, "machine": machine_description(), "arms": arms}
    text = markdown(document)
    print(text)
    if args.json:
        atomic_write_text(args.json, json.dumps(document, indent=2) + "\n")
    if args.markdown:
        atomic_write_text(args.markdown, text)
    return 0


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
