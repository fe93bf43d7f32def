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
reordering differences between the two runtimes are around 1e-6).

Graphs of QAT models hold QuantizeLinear/DequantizeLinear pairs, and onnxruntime runs some of them as integer
QLinearConv. A float difference of 1e-7 can then put a value on the other side of a rounding boundary: one step
of that quantizer, which every later layer carries on and can turn into more flips (in a GDNishLite decoder
with 13 quantizers, about 4 % of the output values of a photo differ, by up to 0.11, while its PSNR moves by
0.001 dB). The whole graph's difference is therefore reported but not judged for these graphs; the check is
instead that (1) the same graph with fake quantization off meets the float tolerance above, and (2) every
fake-quantized layer, given onnxruntime's own input to it, gives PyTorch's output within one step of its
output quantizer (the most a rounding flip can move it).

Usage::

    python -m common.export.onnx --ckpt checkpoints/last.pt --part full --out onnx/full.onnx --input_size 224
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from compressai.models import FactorizedPrior, MeanScaleHyperprior
from torch import Tensor, nn

from common import qat, replace
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
# A quantized layer's outputs on the two runtimes may differ by one step of its output quantizer (a rounding flip);
# the dequantized values are (q - zero_point) * scale on both, so beyond that only float32 rounding of the product.
FLIP_STEPS = 1.0 + 1e-3
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


def active_fake_quant_layers(graph: nn.Module) -> list:
    """The fake-quantized layers of ``graph`` that quantize in eval mode (none for a float model)."""
    return [layer for layer in qat.fake_quant_layers(graph) if layer.eval_fakequant]


def layer_calls(graph: nn.Module, layers: list, example: Tensor) -> list:
    """``layers`` in the order ``graph`` calls them on ``example`` (once per call): the order of their quantizers in
    the traced graph, which the order of registration need not be (a hyperprior's full graph runs h_a before g_s)."""
    calls = []
    handles = [layer.register_forward_hook(lambda module, *_: calls.append(module)) for layer in layers]
    try:
        with torch.no_grad():
            graph(example)
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _write_graph(graph: nn.Module, example: Tensor, out: Path, opset: int, input_name: str, output_name: str,
                 dynamic: bool) -> None:
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter announces its own deprecation on every call.
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning, torch.jit.TracerWarning))
        torch.onnx.export(graph, (example,), str(out), dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: axes, output_name: axes} if dynamic else None)


def _difference(graph: nn.Module, onnx_path: Path, checks: list[Tensor], atol: float) -> tuple[float, float]:
    """(largest |onnxruntime - PyTorch| over ``checks``, the tolerance atol * max(1, max|PyTorch|))."""
    max_diff, tolerance = 0.0, 0.0
    for inputs in checks:
        with torch.no_grad():
            reference = graph(inputs).numpy()
        produced = run_onnxruntime(onnx_path, inputs)
        if produced.shape != reference.shape:
            raise UserError(f"onnxruntime output shape {produced.shape} differs from PyTorch {reference.shape}")
        max_diff = max(max_diff, float(np.abs(produced - reference).max()))
        tolerance = max(tolerance, atol * max(1.0, float(np.abs(reference).max())))
    return max_diff, tolerance


def quantized_layer_steps(onnx_path: Path, layers: list, inputs: Tensor) -> float:
    """Run the graph in onnxruntime with the input and output of every fake-quantized layer exposed, apply the
    PyTorch layer to onnxruntime's input and return the largest difference in steps of the layer's output quantizer.

    A layer's output quantizer is the QuantizeLinear fed by its Conv/ConvTranspose/Gemm node; they occur in the
    graph in the order the layers run (``layers``, one entry per call: :func:`layer_calls`).
    """
    import onnx
    import onnxruntime as ort

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    nodes = model.graph.node
    producer = {name: node for node in nodes for name in node.output}
    pairs = []
    for node in nodes:
        source = producer.get(node.input[0]) if node.op_type == "QuantizeLinear" else None
        if source is not None and source.op_type in ("Conv", "ConvTranspose", "Gemm"):
            dequantize = next(n for n in nodes if n.op_type == "DequantizeLinear" and n.input[0] == node.output[0])
            pairs.append((source.input[0], dequantize.output[0]))
    if len(pairs) != len(layers):
        raise UserError(f"the exported graph has {len(pairs)} quantized layer outputs where the model runs "
                        f"{len(layers)} fake-quantized layers; cannot check them one by one")
    known = {info.name: info for info in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    exposed = [name for pair in pairs for name in pair if name not in {o.name for o in model.graph.output}]
    model.graph.output.extend(known[name] for name in dict.fromkeys(exposed))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, {session.get_inputs()[0].name: inputs.numpy()})))
    worst = 0.0
    for layer, (layer_input, layer_output) in zip(layers, pairs):
        with torch.no_grad():
            expected = layer(torch.from_numpy(values[layer_input])).numpy()
        step = float(layer.output_fake_quant.scale.max())
        worst = max(worst, float(np.abs(values[layer_output] - expected).max()) / step)
    return worst


def quantized_check(graph: nn.Module, layers: list, example: Tensor, onnx_path: Path, checks: list[Tensor],
                    opset: int, names: tuple[str, str], dynamic: bool, atol: float) -> QuantizedCheck:
    """Check a graph with fake-quantized ``layers``: layer by layer, and as a float graph (fake quantization off)."""
    calls = layer_calls(graph, layers, example)
    worst = max(quantized_layer_steps(onnx_path, calls, inputs) for inputs in checks)
    for layer in layers:
        layer.eval_fakequant = False
    try:
        with tempfile.TemporaryDirectory() as folder:
            float_path = Path(folder) / "float.onnx"
            _write_graph(graph, example, float_path, opset, *names, dynamic)
            float_diff, float_tolerance = _difference(graph, float_path, checks, atol)
    finally:
        for layer in layers:
            layer.eval_fakequant = True
    return QuantizedCheck(len(layers), worst, float_diff, float_tolerance)


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
class QuantizedCheck:
    """The parity check of a graph with fake-quantized layers (see the module docstring)."""

    layers: int  # fake-quantized layers compared one by one
    worst_steps: float  # their largest onnxruntime vs PyTorch difference, in steps of the layer's output quantizer
    float_max_abs_diff: float  # the same graph exported with fake quantization off
    float_tolerance: float

    @property
    def ok(self) -> bool:
        return self.worst_steps <= FLIP_STEPS and self.float_max_abs_diff <= self.float_tolerance


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
    quantized: QuantizedCheck | None = None

    @property
    def ok(self) -> bool:
        return self.quantized.ok if self.quantized else self.max_abs_diff <= self.tolerance

    def unfriendly_ops(self) -> list[str]:
        return sorted(set(self.op_types) - NPU_FRIENDLY_OPS)

    def summary(self) -> str:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.op_types.items()))
        verdict = "ok" if self.ok else "FAILED"
        if self.quantized:
            check = self.quantized
            parity = (f"onnxruntime vs PyTorch max abs diff {self.max_abs_diff:.3g} over the quantized graph (reported, "
                      f"not judged: rounding flips carry on); with fake quantization off {check.float_max_abs_diff:.3g} "
                      f"(tolerance {check.float_tolerance:.3g}); each of {check.layers} quantized layers on "
                      f"onnxruntime's input to it: at most {check.worst_steps:.3g} steps of its output quantizer "
                      f"(allowed 1): {verdict}")
        else:
            parity = (f"onnxruntime vs PyTorch max abs diff {self.max_abs_diff:.3g} (tolerance {self.tolerance:.3g}): "
                      f"{verdict}")
        return (f"exported {self.part} {'x'.join(map(str, self.input_shape))} ({'dynamic' if self.dynamic else 'static'}"
                f" H/W, opset {self.opset}) to {self.path}\n"
                f"onnx.checker: ok; {parity}\n"
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
    layers = active_fake_quant_layers(graph)
    if layers:  # the graph stores the weights' int8 values, on a copy: the caller's model may train on
        graph = qat.snap_weights(copy.deepcopy(graph))
        layers = active_fake_quant_layers(graph)
    # The full graph of a hyperprior also runs h_a, which halves the sides twice more (the model's forward_multiple).
    multiple = getattr(model, "forward_multiple", DOWNSAMPLING) if part == "full" else DOWNSAMPLING
    if input_size <= 0 or input_size % multiple:
        raise UserError(f"--input_size must be a positive multiple of {multiple} for --part {part} of "
                        f"{type(model).__name__}, got {input_size}")
    side = input_size // DOWNSAMPLING if part == "decoder" else input_size
    example = example_input(model, part, input_size, input_size)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _write_graph(graph, example, out, opset, input_name, output_name, dynamic)
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    checks = [example]
    if dynamic:
        checks.append(example_input(model, part, input_size + multiple, input_size + 2 * multiple, seed=1))
    max_diff, tolerance = _difference(graph, out, checks, atol)
    quantized = quantized_check(graph, layers, example, out, checks, opset, (input_name, output_name), dynamic,
                                atol) if layers else None
    return ExportReport(out, part, (1, example.shape[1], side, side), dynamic, opset, max_diff, tolerance,
                        operator_types(out), quantized)


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
