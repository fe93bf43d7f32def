"""common.qat: fake-quant insertion, observer phases, INT8 arithmetic, AMP, checkpoint round trip."""
import pytest
import torch
import torch.nn.functional as F
from compressai.models import FactorizedPrior, ScaleHyperprior
from torch import nn

from common import qat
from common.checkpoint import atomic_save
from common.cli import OneLineErrorParser
from common.errors import UserError
from common.flags import add_qat_arguments
from common.assembly import load_model
from common.replace import apply_config, make_config



def q1_model(replace=None, seed=0):
    torch.manual_seed(seed)
    return apply_config(FactorizedPrior(128, 192), replace)


def parse(*argv):
    parser = OneLineErrorParser()
    add_qat_arguments(parser)
    return qat.config_from_args(parser.parse_args(list(argv)))


def test_flags_and_defaults():
    assert parse() is None
    config = parse("--qat", "true", "--qat_scope", "encoder", "--qat_calib_steps", "10", "--qat_freeze_after", "20",
                   "--qat_act_observer", "minmax", "--qat_w_per_channel", "false", "--qat_exclude_entropy", "false",
                   "--qat_disable_observer_step", "15", "--qat_eval_fakequant", "false")
    assert config == {"scope": "encoder", "exclude_entropy": False, "calib_steps": 10, "freeze_after": 20,
                      "act_observer": "minmax", "w_per_channel": False, "disable_observer_step": 15,
                      "eval_fakequant": False}
    assert parse("--qat") == qat.DEFAULTS


def test_bad_config_is_user_error():
    with pytest.raises(UserError, match="must be >= --qat_calib_steps"):
        parse("--qat", "--qat_calib_steps", "100", "--qat_freeze_after", "50")
    with pytest.raises(UserError, match="must be >= 1"):  # the flag's declaration refuses it on the command line
        qat.make_config(calib_steps=0)


def test_fake_quantized_model_runs_under_autocast():
    # The engine warns when QAT meets AMP (tests/test_run_assembly.py) but lets the run go ahead.
    config = parse("--qat")
    model = qat.prepare(q1_model(make_config("all", "gdnish")), config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.rand(2, 3, 64, 64))
    loss = out["x_hat"].float().square().mean()
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("scope,expected", [("encoder", (4, 0)), ("decoder", (0, 4)), ("all", (4, 4))])
def test_scope_wraps_the_right_layers(scope, expected):
    model = qat.prepare(q1_model(make_config("all", "relu")), qat.make_config(scope=scope))
    counts = tuple(sum(isinstance(m, qat.FakeQuantLayer) for m in part.modules()) for part in (model.g_a, model.g_s))
    assert counts == expected
    assert not any(isinstance(m, qat.FakeQuantLayer) for m in model.entropy_bottleneck.modules())
    gdnish = qat.prepare(q1_model(make_config("all", "gdnish")), qat.make_config(scope="encoder"))
    # 4 convs + 3 blocks x (expand, depthwise, reduce, ECA conv)
    assert sum(isinstance(m, qat.FakeQuantLayer) for m in gdnish.g_a.modules()) == 16


def test_exclude_entropy_keeps_hyperprior_float():
    def wrapped(exclude):
        torch.manual_seed(0)
        model = qat.prepare(ScaleHyperprior(32, 48), qat.make_config(exclude_entropy=exclude))
        return {name.split(".")[0] for name, m in model.named_modules() if isinstance(m, qat.FakeQuantLayer)}

    assert wrapped(True) == {"g_a", "g_s"}
    assert wrapped(False) == {"g_a", "g_s", "h_a", "h_s"}


def _manual_weight_int8(weight, axis):
    """Symmetric per-channel INT8, restricted range: scale = max|w| / 127, q = round(w / scale) in [-127, 127]."""
    dims = [d for d in range(weight.dim()) if d != axis]
    scale = weight.abs().amax(dim=dims, keepdim=True) / 127.0
    q = torch.round(weight / scale)
    assert q.abs().max() == 127
    return q * scale


def _manual_uint8(y):
    """Affine UINT8 from the tensor's own range (extended to include 0), float32 like the kernels."""
    low, high = torch.clamp(y.min(), max=0.0), torch.clamp(y.max(), min=0.0)
    scale = (high - low) / 255.0
    zero_point = torch.clamp(0 - torch.round(low / scale), 0, 255)
    return (torch.clamp(torch.round(y * (1.0 / scale)) + zero_point, 0, 255) - zero_point) * scale


@pytest.mark.parametrize("transposed", [False, True])
def test_fake_quant_equals_manual_int8_round_trip(transposed):
    torch.manual_seed(0)  # layers are built here so their weights do not depend on collection order
    layer = nn.ConvTranspose2d(4, 6, 5, 2, 2, 1) if transposed else nn.Conv2d(4, 6, 3, padding=1)
    wrapped = qat.FakeQuantLayer(layer, act_observer="minmax", w_per_channel=True).train()
    pre_quant = []
    wrapped.output_fake_quant.register_forward_pre_hook(lambda _m, args: pre_quant.append(args[0].detach()))
    x = torch.randn(2, 4, 8, 8)
    out = wrapped(x).detach()
    assert wrapped.weight_fake_quant.scale.shape == (6,)
    # Weight path: the layer ran with the symmetric INT8 weight (up to float summation order).
    w_hat = _manual_weight_int8(layer.weight.detach(), axis=1 if transposed else 0)
    float_out = (F.conv_transpose2d(x, w_hat, layer.bias, 2, 2, 1) if transposed else
                 F.conv2d(x, w_hat, layer.bias, padding=1))
    torch.testing.assert_close(pre_quant[0], float_out, atol=1e-5, rtol=0)
    # Output path: exact UINT8 round trip of what the layer produced. Comparing against float_out instead
    # would flip values that sit on a rounding boundary whenever the two sums differ by one ulp.
    torch.testing.assert_close(out, _manual_uint8(pre_quant[0]), atol=1e-6, rtol=0)
    assert len(torch.unique(out)) <= 256  # at most 256 levels: a real 8-bit tensor


def _phase_run(config, steps=6):
    model = qat.prepare(q1_model(make_config("encoder", "relu")), config)
    controller = qat.QATController(model, config)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    first = model.g_a[0]
    act_scales, weight_scales, phases = [], [], []
    model.train()
    for step in range(steps):
        phases.append(controller.on_step(step))
        x = torch.rand(1, 3, 32, 32) * (step + 1)  # growing range: an active observer must follow it
        loss = model(x)["x_hat"].square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        act_scales.append(first.output_fake_quant.scale.clone())
        weight_scales.append(first.weight_fake_quant.scale.clone())
    return phases, act_scales, weight_scales, model


def test_observer_phases():
    config = qat.make_config(calib_steps=2, freeze_after=4, act_observer="minmax")
    phases, act, weight, _ = _phase_run(config)
    assert phases == ["calibration"] * 2 + ["freeze"] * 2 + ["eval-ready"] * 2
    assert not torch.equal(act[0], act[1])  # calibrating: the range grows with the input
    assert all(torch.equal(act[1], a) for a in act[2:])  # frozen from step 2
    assert not torch.equal(weight[2], weight[3])  # freeze phase: weight scales still follow the weights
    assert torch.equal(weight[3], weight[4]) and torch.equal(weight[4], weight[5])  # eval-ready: final


def test_disable_observer_step_stops_everything():
    config = qat.make_config(calib_steps=4, freeze_after=6, disable_observer_step=1)
    _, act, weight, _ = _phase_run(config, steps=3)
    assert all(torch.equal(act[0], a) for a in act[1:]) and all(torch.equal(weight[0], w) for w in weight[1:])


def test_ema_observer_moves_slowly():
    config = qat.make_config(calib_steps=10, freeze_after=10, act_observer="ema")
    _, ema, _, _ = _phase_run(config, steps=3)
    config = qat.make_config(calib_steps=10, freeze_after=10, act_observer="minmax")
    _, minmax, _, _ = _phase_run(config, steps=3)
    assert torch.equal(ema[0], minmax[0])  # the first observation sets the range in both
    assert ema[0] < ema[2] < minmax[2]  # EMA (constant 0.01) lags behind the running max


def test_eval_mode_does_not_move_scales_and_can_run_float():
    config = qat.make_config(calib_steps=5, freeze_after=5)
    model = qat.prepare(q1_model(make_config("encoder", "relu")), config)
    controller = qat.QATController(model, config)
    controller.on_step(0)
    model.train()(torch.rand(1, 3, 32, 32))
    layer = model.g_a[0]
    scale = layer.output_fake_quant.scale.clone()
    model.eval()(torch.rand(1, 3, 32, 32) * 100)
    assert torch.equal(layer.output_fake_quant.scale, scale)
    model.train()
    assert layer.output_fake_quant.observer_enabled.item() == 1  # calibration phase restored
    x = torch.rand(1, 3, 32, 32)
    layer.eval_fakequant = False
    layer.eval()
    torch.testing.assert_close(layer(x), layer.layer(x))
    layer.eval_fakequant = True
    assert not torch.allclose(layer(x), layer.layer(x))


def test_finalize_bitstream_and_checkpoint_round_trip(tmp_path):
    replace = make_config("all", "gdnish")
    config = qat.make_config(calib_steps=1, freeze_after=2)
    model = qat.prepare(apply_config(q1_model(), replace), config)
    controller = qat.QATController(model, config)
    for step in range(3):
        controller.on_step(step)
        model.train()(torch.rand(1, 3, 32, 32))
    controller.finalize()
    assert all(m.weight_fake_quant.observer_enabled.item() == 0 and m.output_fake_quant.observer_enabled.item() == 0
               for m in qat.fake_quant_layers(model))
    model.update(force=True)
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        x_hat = model(x)["x_hat"]
        coded = model.compress(x)
        decoded = model.decompress(coded["strings"], coded["shape"])["x_hat"]
    torch.testing.assert_close(decoded, x_hat.clamp(0, 1), atol=1e-6, rtol=0)
    path = tmp_path / "last.pt"
    atomic_save({"format": "lic-toolkit/1", "model": {"name": "bmshj2018-factorized", "kwargs": {"quality": 1}},
                 "replace": replace, "qat": config, "state_dict": model.state_dict(), "step": 3, "epoch": 0}, path)
    restored = load_model(checkpoint=str(path))
    with torch.no_grad():
        assert torch.equal(restored(x)["x_hat"], x_hat)
