"""common.export.onnx and common.assembly: parity with PyTorch and compressai, CLI errors."""
import copy
import subprocess
import sys

import pytest
import torch
from compressai.models import FactorizedPrior, MeanScaleHyperprior

from common import qat
from common.checkpoint import atomic_save
from common.export import onnx as onnx_export
from common.errors import UserError
from common.export.onnx import NPU_FRIENDLY_OPS, export_onnx, latent_channels, main, run_onnxruntime
from common.assembly import load_model
from common.models import available_models, build
from common.replace import apply_config, make_config

ARCHS = {
    "gdn": None,
    "relu": make_config("all", "relu"),
    "gdnish": make_config("all", "gdnish", enc={"init_identity": False}, dec={"init_identity": False}),
    "gdnish+upsample": make_config("all", "gdnish", decoder_upsample=True),
}



def q1_model(replace=None):
    torch.manual_seed(0)
    model = apply_config(FactorizedPrior(128, 192), replace)
    with torch.no_grad():  # a brighter decoder than the random init, so that [0, 1] clamping is exercised
        last = model.g_s[-1].conv if hasattr(model.g_s[-1], "conv") else model.g_s[-1]
        last.bias.fill_(0.5)
        last.weight.mul_(20)
    model.update(force=True)
    return model.eval()


def save_training_checkpoint(path, model, replace, qat_config=None):
    atomic_save({"format": "lic-toolkit/1", "model": {"name": "bmshj2018-factorized", "kwargs": {"quality": 1}},
                 "replace": replace, "qat": qat_config, "state_dict": model.state_dict(), "step": 0, "epoch": 0},
                path)
    return str(path)


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("part", ["full", "encoder", "decoder"])
def test_onnx_parity(tmp_path, arch, part):
    model = q1_model(ARCHS[arch])
    report = export_onnx(model, part, tmp_path / f"{part}.onnx", input_size=64, dynamic=(arch == "gdnish"))
    assert report.ok, report.summary()
    assert report.max_abs_diff < 1e-4
    ops = set(report.op_types)
    if arch == "gdn":
        assert {"Pow", "Sqrt"} & ops or part == "full" and "Div" in ops
    else:
        assert not {"Pow", "Sqrt", "Div"} & ops
    if part == "encoder" and arch != "gdn":
        assert ops <= NPU_FRIENDLY_OPS
    if arch.endswith("upsample") and part != "encoder":
        assert "Resize" in ops and "ConvTranspose" not in ops


def test_full_graph_is_the_bitstream_reconstruction(tmp_path):
    """The 'full' ONNX graph reproduces compressai's compress -> decompress reconstruction."""
    model = q1_model(ARCHS["relu"])
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        coded = model.compress(x)
        reference = model.decompress(coded["strings"], coded["shape"])["x_hat"]
    export_onnx(model, "full", tmp_path / "full.onnx", input_size=64)
    produced = run_onnxruntime(tmp_path / "full.onnx", x)
    assert 0.0 < reference.mean() < 1.0
    assert abs(produced - reference.numpy()).max() < 1e-4


# The smallest size of each registered model that has one; the others are exported as registered.
SMALL_KWARGS = {"elic2022-official": {"n": 16}}
CONTEXT_MODELS = ("elic2022-official", "hpcm-base", "hpcm-large", "hpcm-tiny")


@pytest.mark.parametrize("name", available_models())
def test_every_registered_model_exports_or_says_why(tmp_path, name):
    torch.manual_seed(0)
    model = build(name, **SMALL_KWARGS.get(name, {})).eval()
    model.update(force=True)
    for part in ("encoder", "decoder"):
        report = export_onnx(model, part, tmp_path / f"{part}.onnx", input_size=64)
        assert report.ok, report.summary()
    if name in CONTEXT_MODELS:
        with pytest.raises(UserError, match=f"{type(model).__name__} decodes y step by step with a context model"):
            export_onnx(model, "full", tmp_path / "full.onnx", input_size=64)
        return
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        coded = model.compress(x)
        reference = model.decompress(coded["strings"], coded["shape"])["x_hat"]
    assert export_onnx(model, "full", tmp_path / "full.onnx", input_size=64).ok
    assert abs(run_onnxruntime(tmp_path / "full.onnx", x) - reference.numpy()).max() < 1e-4


def test_full_graph_of_a_hyperprior_needs_its_forward_multiple(tmp_path):
    with pytest.raises(UserError, match="multiple of 64 for --part full of MeanScaleHyperprior, got 48"):
        export_onnx(build("mbt2018-mean"), "full", tmp_path / "full.onnx", input_size=48)


def test_dynamic_axes_accept_other_sizes(tmp_path):
    model = q1_model(ARCHS["gdnish+upsample"])
    export_onnx(model, "decoder", tmp_path / "dec.onnx", input_size=64, dynamic=True)
    y_hat = torch.round(torch.randn(2, latent_channels(model), 3, 5) * 3)
    produced = run_onnxruntime(tmp_path / "dec.onnx", y_hat)
    with torch.no_grad():
        reference = model.g_s(y_hat).clamp(0, 1).numpy()
    assert produced.shape == (2, 3, 48, 80) and abs(produced - reference).max() < 1e-4


def calibrated_qat_model(replace):
    config = qat.make_config(calib_steps=1, freeze_after=1)
    model = qat.prepare(q1_model(replace), config)
    model.train()(torch.rand(1, 3, 64, 64))  # calibration step
    return qat.finalize(model).eval(), config


def test_qat_model_exports_quantize_dequantize(tmp_path):
    replace = make_config("all", "gdnish")
    model, config = calibrated_qat_model(replace)
    path = save_training_checkpoint(tmp_path / "qat.pt", model, replace, config)
    report = export_onnx(load_model(checkpoint=path), "encoder", tmp_path / "enc.onnx", input_size=64)
    assert report.ok and {"QuantizeLinear", "DequantizeLinear"} <= set(report.op_types)
    assert set(report.op_types) <= NPU_FRIENDLY_OPS
    # Judged layer by layer: every fake-quantized layer of g_a, each within one step of its output quantizer.
    assert report.quantized.layers == len(qat.fake_quant_layers(model.g_a))
    assert report.quantized.worst_steps <= 1.0 + 1e-3 and report.quantized.float_max_abs_diff < 1e-4


def test_the_layer_by_layer_check_of_a_qat_graph_fails_when_a_layer_computes_something_else(tmp_path):
    model, _ = calibrated_qat_model(make_config("all", "gdnish"))
    with torch.no_grad():
        y_hat = torch.round(model.g_a(torch.rand(1, 3, 64, 64)))
    export_onnx(model, "decoder", tmp_path / "dec.onnx", input_size=64)
    layers = qat.fake_quant_layers(model.g_s)
    assert onnx_export.quantized_layer_steps(tmp_path / "dec.onnx", layers, y_hat) <= 1.0 + 1e-3
    last = layers[-1]
    with torch.no_grad():  # the PyTorch layer now differs from the exported one by 3 steps of its output
        last.layer.bias += 3 * last.output_fake_quant.scale
    assert onnx_export.quantized_layer_steps(tmp_path / "dec.onnx", layers, y_hat) >= 2.0


def test_full_graph_of_a_quantized_hyperprior_checks_its_layers_in_the_order_they_run(tmp_path):
    """g_s is registered before h_a and h_s but runs after them: the layer check pairs by call order."""
    torch.manual_seed(0)
    model = qat.prepare(MeanScaleHyperprior(32, 48), qat.make_config(calib_steps=1, freeze_after=1,
                                                                      exclude_entropy=False))
    model.train()(torch.rand(1, 3, 64, 64))
    qat.finalize(model).eval().update(force=True)
    report = export_onnx(model, "full", tmp_path / "full.onnx", input_size=64)
    assert report.ok, report.summary()
    assert report.quantized.layers == len(qat.fake_quant_layers(model)) > len(qat.fake_quant_layers(model.g_s))


def half_step_weight(scale: float) -> float:
    """A float32 weight w with round(w * (1 / scale)) != round(w / scale): what PyTorch's fake quantizer and a
    runtime's QuantizeLinear compute."""
    import numpy as np
    scale32, inverse = np.float32(scale), np.float32(1.0) / np.float32(scale)
    for code in range(1, 127):
        w = np.float32((code + 0.5) * scale32)
        for _ in range(8):
            if np.round(w * inverse) != np.round(w / scale32):
                return float(w)
            w = np.nextafter(w, np.float32(np.inf))
    raise AssertionError("no half-step weight for this scale")


def test_exported_qat_weights_are_on_their_grid(tmp_path):
    """A weight at a half step gets another int8 code from a runtime that divides by the scale than from PyTorch's
    fake quantizer, which multiplies by its inverse; the exporter stores the quantized weights, so both agree."""
    model, _ = calibrated_qat_model(None)
    layer = qat.fake_quant_layers(model.g_s)[-1]
    scale = float(layer.weight_fake_quant.scale[0])
    weight = half_step_weight(scale)
    with torch.no_grad():
        layer.layer.weight[0, 0, 0, 0] = weight
    raw = layer.layer.weight.detach().clone()
    divided = torch.round(raw / layer.weight_fake_quant.scale.reshape(1, -1, 1, 1))
    with torch.no_grad():
        fake = layer.weight_fake_quant(raw) / layer.weight_fake_quant.scale.reshape(1, -1, 1, 1)
    assert (divided != torch.round(fake)).any()  # the case exists in float32 as the runtimes compute it
    snapped = qat.snap_weights(copy.deepcopy(model))
    grid = qat.fake_quant_layers(snapped.g_s)[-1]
    codes = grid.layer.weight / grid.weight_fake_quant.scale.reshape(1, -1, 1, 1)
    # q * scale / scale is q to a float32 ulp, far from any half step: division and multiplication agree.
    assert (codes - torch.round(codes)).abs().max() < 1e-3 and torch.equal(torch.round(codes), torch.round(fake))
    with torch.no_grad():
        y_hat = torch.round(model.g_a(torch.rand(1, 3, 64, 64)))
        assert torch.equal(snapped.g_s(y_hat), model.g_s(y_hat))  # PyTorch's quantized model is unchanged
    report = export_onnx(model, "decoder", tmp_path / "dec.onnx", input_size=64)
    assert report.ok, report.summary()
    assert torch.equal(layer.layer.weight, raw)  # the caller's model keeps its float weights


def test_restore_training_checkpoint_and_raw_state_dict(tmp_path):
    replace = ARCHS["gdnish+upsample"]
    model = q1_model(replace)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)["x_hat"]
    path = save_training_checkpoint(tmp_path / "last.pt", model, replace)
    with torch.no_grad():
        assert torch.equal(load_model(checkpoint=path)(x)["x_hat"], expected)
    raw = tmp_path / "raw.pth"
    torch.save(model.state_dict(), raw)
    with torch.no_grad():
        assert torch.equal(load_model(checkpoint=str(raw), replace=replace)(x)["x_hat"], expected)
    with pytest.raises(UserError, match="pass the --replace_parts/--act/--decoder_upsample flags"):
        load_model(checkpoint=str(raw))  # replaced weights need the replace flags
    with pytest.raises(UserError, match="does not match the rebuilt architecture"):
        load_model(checkpoint=str(raw), replace=make_config("all", "relu"))
    with pytest.raises(UserError, match="already records"):
        load_model(checkpoint=path, replace=make_config("all", "relu"))
    with pytest.raises(UserError, match="not hpcm"):
        load_model("hpcm-tiny", checkpoint=path)


def test_cli_exports_with_replace_flags_on_a_zoo_state_dict(tmp_path, capsys):
    raw = tmp_path / "zoo.pth"
    torch.save(q1_model().state_dict(), raw)
    code = main(["--ckpt", str(raw), "--part", "encoder", "--out", str(tmp_path / "e.onnx"), "--input_size", "64",
                 "--replace_parts", "encoder", "--act", "gdnish"])
    out = capsys.readouterr().out
    assert code == 0 and "max abs diff" in out and "outside the NPU-friendly set: none" in out


@pytest.mark.parametrize("argv,message", [
    (["--ckpt", "/nonexistent/last.pt", "--part", "full", "--out", "x.onnx"], "checkpoint file not found"),
    (["--ckpt", "x.pt", "--part", "middle", "--out", "x.onnx"], "--part: invalid choice"),
])
def test_cli_errors_are_one_line(argv, message):
    result = subprocess.run([sys.executable, "-m", "common.export.onnx", *argv], capture_output=True, text=True,
                            timeout=120)
    lines = [line for line in result.stderr.splitlines() if "Warning" not in line and "warnings.warn" not in line]
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_bad_input_size_is_user_error(tmp_path):
    path = save_training_checkpoint(tmp_path / "last.pt", q1_model(), None)
    with pytest.raises(UserError, match="multiple of 16"):
        main(["--ckpt", path, "--part", "full", "--out", str(tmp_path / "f.onnx"), "--input_size", "70"])


def test_benchmark_mac_count_matches_hand_count():
    from benchmarks.npu_blocks import hand_count_gdn_macs_per_pixel, macs_per_pixel
    from common.export.onnx import FullCodec
    model = q1_model()
    assert macs_per_pixel(FullCodec(model), torch.rand(1, 3, 64, 64)) == pytest.approx(
        hand_count_gdn_macs_per_pixel(128, 192), rel=1e-9)
    relu = q1_model(ARCHS["relu"])  # ReLU drops exactly the six N x N 1x1 GDN convolutions
    assert macs_per_pixel(FullCodec(relu), torch.rand(1, 3, 64, 64)) == pytest.approx(
        hand_count_gdn_macs_per_pixel(128, 192) - 2 * 128 * 128 * (1 / 4 + 1 / 16 + 1 / 64), rel=1e-9)
