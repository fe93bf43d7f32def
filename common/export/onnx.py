"""ONNX export of a model's transforms (full / encoder / decoder) with an onnxruntime parity check.

What each part computes (inputs and outputs are float32 NCHW):

- ``encoder``: ``x -> y = g_a(x)`` (the unquantized latent; rounding belongs to the entropy coder);
- ``decoder``: ``y_hat -> x_hat = clamp(g_s(y_hat), 0, 1)``, as compressai's ``decompress`` does;
  the latent channel count is read from the first layer of ``g_s``;
- ``full``: ``x -> x_hat = clamp(g_s(round(y - m) + m), 0, 1)`` with ``m`` the EntropyBottleneck
  medians (bmshj2018-factorized) or the means h_s predicts from the coded z (mbt2018-mean), i.e. exactly
  the image a compress/decompress round trip reconstructs (the entropy coding itself, lossless, is left
  out). Models with a context model (ELIC, HPCM) decode y step by step and export encoder and decoder only.

The graph is written by PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``):
it still ships with torch 2.14, runs offline, and gives plain opset-13 graphs (the dynamo exporter
needs onnxscript and emits larger graphs for the same modules). Every export is checked with
``onnx.checker`` and run in onnxruntime on random input against PyTorch; the check fails when the
largest absolute difference exceeds ``atol * max(1, max|reference|)`` (default ``atol = 1e-3``: a quarter
of one 8-bit code value for images, a thousandth of a quantization step for latents, while float32
reordering differences between the two runtimes are around 1e-6). Graphs of QAT models hold
QuantizeLinear/DequantizeLinear pairs: a float difference of 1e-7 can move a value across a rounding
boundary there, so their tolerance adds two steps of the last output quantizer.

Usage::

    python -m common.export.onnx --ckpt checkpoints/last.pt --part full --out onnx/full.onnx --input_size 224
"""
from __future__ import annotations

import argparse
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from compressai.models import FactorizedPrior, MeanScaleHyperprior
from torch import Tensor, nn

from common import replace
from common.cli import OneLineErrorParser, bool_flag, number, run_main
from common.flags import add_replace_arguments
from common.errors import UserError
from common.paths import output_file

PARTS = ("full", "encoder", "decoder")
DEFAULT_ATOL = 1e-3
# The opsets the TorchScript exporter writes (torch is pinned in requirements.lock, so these private constants are
# stable); torch.onnx.export raises a multi-line error for any other.
from torch.onnx._constants import ONNX_MIN_OPSET  # noqa: E402
from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as ONNX_MAX_OPSET  # noqa: E402
DOWNSAMPLING = 16  # g_a reduces H and W by 16 in every registered model
# The models whose bitstream reconstruction is one graph (FullCodec), with their registry names: their y is coded
# without a context model.
# Exact types: compressai's context models (mbt2018's JointAutoregressiveHierarchicalPriors) subclass them.
FULL_GRAPH_MODELS = {FactorizedPrior: "bmshj2018-factorized", MeanScaleHyperprior: "mbt2018-mean"}
# The example image is traced and run in PyTorch and onnxruntime at this side: 8192 px already needs gigabytes of
# activations per convolution, and larger sides only fail in the allocator.
MAX_INPUT_SIZE = 8192
# Operators an INT8 NPU runs natively (seed 003 §7); anything else counts as NPU-unfriendly.
NPU_FRIENDLY_OPS = frozenset({"Conv", "Relu", "Clip", "HardSigmoid", "HardSwish", "Mul", "Add", "Resize",
                              "GlobalAveragePool", "ReduceMean", "Transpose", "QuantizeLinear",
                              "DequantizeLinear", "Constant", "Identity"})


class Encoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.g_a = model.g_a

    def forward(self, x: Tensor) -> Tensor:
        return self.g_a(x)


class Decoder(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.g_s = model.g_s

    def forward(self, y_hat: Tensor) -> Tensor:
        return self.g_s(y_hat).clamp(0.0, 1.0)


class FullCodec(nn.Module):
    """Encoder, rounding around the entropy coder's centres and decoder: the reconstruction of a real bitstream
    round trip.

    A factorized model codes y around the medians of its EntropyBottleneck. A mean-scale hyperprior's
    EntropyBottleneck codes z = h_a(y) (N channels, not y's M) around its medians, and y is coded around the
    means that h_s predicts from the coded z.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.g_a = model.g_a
        self.g_s = model.g_s
        self.hyperprior = type(model) is MeanScaleHyperprior
        if self.hyperprior:
            self.h_a, self.h_s = model.h_a, model.h_s
        medians = model.entropy_bottleneck._get_medians().detach()  # (C, 1, 1) of y, or of z for a hyperprior
        self.register_buffer("medians", medians.reshape(1, -1, 1, 1).clone())

    def forward(self, x: Tensor) -> Tensor:
        y = self.g_a(x)
        if self.hyperprior:
            z = self.h_a(y)
            _, means = self.h_s(torch.round(z - self.medians) + self.medians).chunk(2, 1)
        else:
            means = self.medians
        y_hat = torch.round(y - means) + means
        return self.g_s(y_hat).clamp(0.0, 1.0)


def latent_channels(model: nn.Module) -> int:
    """Input channels of the first layer of ``g_s`` (works through replaced and fake-quantized layers)."""
    for module in model.g_s.modules():
        if isinstance(getattr(module, "in_channels", None), int):
            return module.in_channels
    raise UserError("cannot infer the latent channel count: g_s has no convolution")


def part_module(model: nn.Module, part: str) -> tuple[nn.Module, str, str]:
    """(graph module, input name, output name) for ``part``."""
    for attr in ("g_a", "g_s"):
        if not hasattr(model, attr):
            raise UserError(f"{type(model).__name__} has no {attr}; ONNX export needs the analysis and synthesis "
                            "transforms g_a and g_s")
    if part == "full" and type(model) not in FULL_GRAPH_MODELS:
        raise UserError(f"--part full exports the bitstream reconstruction of {' and '.join(FULL_GRAPH_MODELS.values())} "
                        f"models; {type(model).__name__} decodes y step by step with a context model, which is no "
                        "single graph: export --part encoder and --part decoder")
    if part == "encoder":
        return Encoder(model).eval(), "x", "y"
    if part == "decoder":
        return Decoder(model).eval(), "y_hat", "x_hat"
    if part == "full":
        return FullCodec(model).eval(), "x", "x_hat"
    raise UserError(f"--part must be one of {', '.join(PARTS)}, got {part!r}")


def output_quant_step(graph: nn.Module) -> float:
    """Quantization step of the graph's last fake-quantized layer (0 for float graphs)."""
    from common.qat import fake_quant_layers
    layers = fake_quant_layers(graph)
    if not layers or not layers[-1].eval_fakequant:
        return 0.0
    return float(layers[-1].output_fake_quant.scale.max())


def example_input(model: nn.Module, part: str, height: int, width: int, seed: int = 0) -> Tensor:
    """A random image, or for the decoder a realistic latent: the rounded encoding of a random image."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, height, width, generator=generator)
    if part != "decoder":
        return x
    with torch.no_grad():
        y_hat = torch.round(model.g_a(x))
    if y_hat.shape[1] != latent_channels(model):
        raise UserError("g_a output channels differ from g_s input channels")
    return y_hat


@dataclass
class ExportReport:
    path: Path
    part: str
    input_shape: tuple
    dynamic: bool
    opset: int
    max_abs_diff: float
    tolerance: float
    op_types: Counter

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def unfriendly_ops(self) -> list[str]:
        return sorted(set(self.op_types) - NPU_FRIENDLY_OPS)

    def summary(self) -> str:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.op_types.items()))
        return (f"exported {self.part} {'x'.join(map(str, self.input_shape))} ({'dynamic' if self.dynamic else 'static'}"
                f" H/W, opset {self.opset}) to {self.path}\n"
                f"onnx.checker: ok; onnxruntime vs PyTorch max abs diff {self.max_abs_diff:.3g} "
                f"(tolerance {self.tolerance:.3g}): {'ok' if self.ok else 'FAILED'}\n"
                f"operators: {ops}\n"
                f"outside the NPU-friendly set: {', '.join(self.unfriendly_ops()) or 'none'}")


def operator_types(onnx_path: str | Path) -> Counter:
    import onnx
    return Counter(node.op_type for node in onnx.load(str(onnx_path)).graph.node)


def onnxruntime_session(onnx_path: str | Path, threads: int = 0):
    """CPU inference session (``threads`` 0: onnxruntime's default)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])


def run_onnxruntime(onnx_path: str | Path, inputs: Tensor) -> np.ndarray:
    session = onnxruntime_session(onnx_path)
    return session.run(None, {session.get_inputs()[0].name: inputs.numpy()})[0]


def export_onnx(model: nn.Module, part: str, out: str | Path, input_size: int = 256, dynamic: bool = False,
                opset: int = 13, atol: float = DEFAULT_ATOL) -> ExportReport:
    """Export ``part`` of ``model``, validate it and compare onnxruntime with PyTorch.

    With ``dynamic`` the batch, height and width axes are symbolic and the parity check also runs at a
    second, non-square size. Returns an :class:`ExportReport` (check ``.ok``).
    """
    import onnx

    if opset < 13:
        raise UserError(f"--opset must be >= 13 (HardSigmoid/Clip/QuantizeLinear per-channel), got {opset}")
    model = model.eval()
    graph, input_name, output_name = part_module(model, part)
    # The full graph of a hyperprior also runs h_a, which halves the sides twice more (the model's forward_multiple).
    multiple = getattr(model, "forward_multiple", DOWNSAMPLING) if part == "full" else DOWNSAMPLING
    if input_size <= 0 or input_size % multiple:
        raise UserError(f"--input_size must be a positive multiple of {multiple} for --part {part} of "
                        f"{type(model).__name__}, got {input_size}")
    side = input_size // DOWNSAMPLING if part == "decoder" else input_size
    example = example_input(model, part, input_size, input_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter announces its own deprecation on every call.
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning))
        torch.onnx.export(graph, (example,), str(out), dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: axes, output_name: axes} if dynamic else None)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    checks = [example]
    if dynamic:
        checks.append(example_input(model, part, input_size + multiple, input_size + 2 * multiple, seed=1))
    max_diff, tolerance = 0.0, 0.0
    quant_slack = 2.0 * output_quant_step(graph)
    for inputs in checks:
        with torch.no_grad():
            reference = graph(inputs).numpy()
        produced = run_onnxruntime(out, inputs)
        if produced.shape != reference.shape:
            raise UserError(f"onnxruntime output shape {produced.shape} differs from PyTorch {reference.shape}")
        max_diff = max(max_diff, float(np.abs(produced - reference).max()))
        tolerance = max(tolerance, atol * max(1.0, float(np.abs(reference).max())) + quant_slack)
    return ExportReport(out, part, (1, example.shape[1], side, side), dynamic, opset, max_diff, tolerance,
                        operator_types(out))


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m common.export.onnx",
                                description="Export full/encoder/decoder of a checkpoint to ONNX and check it "
                                            "against PyTorch in onnxruntime.")
    parser.add_argument("--ckpt", required=True, help="training checkpoint (last.pt, ...) or raw/zoo state dict")
    parser.add_argument("--part", required=True, choices=PARTS, help="graph to export")
    parser.add_argument("--out", required=True, help="output .onnx file")
    parser.add_argument("--input_size", type=number(int, minimum=16, maximum=MAX_INPUT_SIZE), default=256,
                        help=f"image side used for export and the parity check (multiple of 16, of 64 for "
                             f"--part full of mbt2018-mean; at most {MAX_INPUT_SIZE}; the decoder gets "
                             "input_size/16 latents) (default: %(default)s)")
    parser.add_argument("--dynamic", action="store_true", help="symbolic batch/height/width axes")
    parser.add_argument("--opset", type=number(int, minimum=ONNX_MIN_OPSET, maximum=ONNX_MAX_OPSET), default=13,
                        help=f"ONNX opset, {ONNX_MIN_OPSET}-{ONNX_MAX_OPSET} (default: %(default)s)")
    parser.add_argument("--atol", type=number(float, above=0), default=DEFAULT_ATOL,
                        help="parity tolerance relative to max(1, max|output|) (default: %(default)s)")
    parser.add_argument("--model", default=None, help="model name for raw state dicts (default: bmshj2018-factorized)")
    parser.add_argument("--quality", type=number(int, minimum=1), default=1, help="quality for raw state dicts when it cannot be "
                                                                "inferred (default: %(default)s)")
    bool_flag(parser, "--trust_checkpoint", False, "allow pickled objects in --ckpt (only for files you trust)")
    add_replace_arguments(parser, trainable_scopes=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from common.assembly import load_model

    args = build_parser().parse_args(argv)
    output_file(args.out, "--out")
    model = load_model(args.model, quality=args.quality, checkpoint=args.ckpt, trust=args.trust_checkpoint,
                       replace=replace.config_from_args(args))
    report = export_onnx(model, args.part, args.out, args.input_size, args.dynamic, args.opset, args.atol)
    print(report.summary())
    return 0 if report.ok else 1


def cli() -> None:
    """The ``lic-export-onnx`` command (installed by ``make setup``): ``main`` with one-line errors."""
    run_main(main)


if __name__ == "__main__":
    cli()
