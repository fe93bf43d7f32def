"""common.replace: GDN/IGDN replacement, GDNishLite blocks, Upsample+Conv decoder, trainable scopes, flags."""
import copy
import math
import textwrap

import pytest
import torch
import torch.nn.functional as F
from compressai.layers import GDN
from compressai.models import FactorizedPrior
from torch import nn

from common.cli import OneLineErrorParser
from common.errors import UserError
from common.flags import add_replace_arguments
from common.replace import (ECA, GDNishLiteDec, GDNishLiteEnc, UpsampleConv, apply_config,
                            aux_parameters, build_student_from_teacher, config_from_args, make_config, replace_gdn,
                            set_trainable, upconv_from_deconv)

N, M = 128, 192  # bmshj2018-factorized quality 1



def q1_model(seed=0):
    torch.manual_seed(seed)
    return FactorizedPrior(N, M).eval()


def parse(*argv):
    parser = OneLineErrorParser()
    add_replace_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


def gdn_like_model(seed=0):
    """q1 model whose GDN layers are far from identity (large gamma), so replacements are distinguishable."""
    model = q1_model(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, GDN):
                module.gamma.copy_(module.gamma_reparam.init(0.5 * torch.eye(N) + 0.05 * torch.rand(N, N)))
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                module.weight.mul_(3.0)
    return model


# ---------------------------------------------------------------- replacement counts and types
@pytest.mark.parametrize("parts,enc,dec", [("encoder", 3, 0), ("decoder", 0, 3), ("all", 3, 3), ("none", 0, 0)])
@pytest.mark.parametrize("act", ["relu", "gdnish"])
def test_replacement_counts_per_part(parts, enc, dec, act):
    model = q1_model()
    enc_options, dec_options = (make_config()["enc"], make_config()["dec"]) if act == "gdnish" else ({}, {})
    counts = replace_gdn(model, parts, act, enc_options, dec_options)
    assert counts == {k: v for k, v in (("g_a", enc), ("g_s", dec)) if k in {"encoder": ["g_a"], "decoder": ["g_s"],
                                                                             "all": ["g_a", "g_s"], "none": []}[parts]}
    enc_type, dec_type = (nn.ReLU, nn.ReLU) if act == "relu" else (GDNishLiteEnc, GDNishLiteDec)
    assert sum(isinstance(m, enc_type) for m in model.g_a) == enc
    assert sum(isinstance(m, dec_type) for m in model.g_s) == dec
    assert sum(isinstance(m, GDN) for m in model.modules()) == 6 - enc - dec
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            assert module.inplace is False
    x = torch.rand(1, 3, 64, 64)
    assert model(x)["x_hat"].shape == x.shape


def test_gdnish_options_reach_the_blocks():
    model = apply_config(q1_model(), parse("--act", "gdnish", "--enc_t", "1.5", "--enc_kdw", "5", "--enc_eca", "false",
                                           "--enc_residual", "false", "--enc_act", "hardswish", "--enc_bn",
                                           "--dec_k", "5", "--dec_gmin", "0.7", "--dec_gmax", "1.3",
                                           "--dec_residual", "false", "--dec_act", "hardswish"))
    enc, dec = model.g_a[1], model.g_s[1]
    assert enc.expand.out_channels == 192 and enc.depthwise.kernel_size == (5, 5)
    assert isinstance(enc.eca, nn.Identity) and not enc.residual and isinstance(enc.act1, nn.Hardswish)
    assert isinstance(enc.norm1, nn.BatchNorm2d)
    assert dec.depthwise.kernel_size == (5, 5) and (dec.g_min, dec.g_max) == (0.7, 1.3) and not dec.residual
    assert isinstance(dec.act, nn.Hardswish) and isinstance(dec.norm, nn.Identity)


# ---------------------------------------------------------------- identity initialisation
@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("act_type,low,high", [("relu6", -6.0, 6.0), ("hardswish", -3.0, 50.0)])
@pytest.mark.parametrize("t,use_eca", [(2.0, True), (2.5, False)])
def test_enc_identity_init_is_identity(residual, act_type, low, high, t, use_eca):
    torch.manual_seed(0)
    block = GDNishLiteEnc(16, t=t, use_eca=use_eca, residual=residual, act_type=act_type).eval()
    x = low + torch.rand(2, 16, 9, 9) * (high - low)
    torch.testing.assert_close(block(x), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("g_min,g_max", [(0.5, 2.0), (1.2, 2.5)])
def test_dec_identity_init_is_identity(residual, g_min, g_max):
    torch.manual_seed(0)
    block = GDNishLiteDec(16, g_min=g_min, g_max=g_max, residual=residual).eval()
    x = torch.randn(2, 16, 9, 9) * 4
    torch.testing.assert_close(block(x), x, atol=1e-5, rtol=1e-6)
    if not residual and g_min < 1 < g_max:
        torch.testing.assert_close(block.gain(x), torch.ones_like(x))


def test_random_init_is_not_identity():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 9, 9)
    assert (GDNishLiteEnc(16, init_identity=False)(x) - x).abs().max() > 0.1
    assert (GDNishLiteDec(16, init_identity=False)(x) - x).abs().max() > 0.1


def test_dec_gain_stays_in_range_and_matches_formula():
    torch.manual_seed(0)
    block = GDNishLiteDec(8, g_min=0.5, g_max=2.0, init_identity=False)
    x = torch.randn(4, 8, 6, 6) * 10
    gain = block.gain(x)
    assert gain.min() >= 0.5 and gain.max() <= 2.0 and gain.min() < 0.6 and gain.max() > 1.9
    h = F.relu6(block.mix(x))
    z = block.scale.weight.view(1, 8, 1, 1) * h + block.scale.bias.view(1, 8, 1, 1)
    expected = 0.5 + 1.5 * torch.clamp(z / 6 + 0.5, 0, 1)
    torch.testing.assert_close(gain, expected)
    torch.testing.assert_close(block(x), x + block.depthwise(x * expected))


def test_eca_matches_channel_conv1d():
    torch.manual_seed(0)
    eca = ECA(5)
    nn.init.normal_(eca.conv.weight)
    x = torch.randn(3, 12, 7, 7)
    descriptor = x.mean(dim=(2, 3)).unsqueeze(1)  # (N, 1, C)
    gate = torch.clamp(F.conv1d(descriptor, eca.conv.weight.view(1, 1, 5), padding=2) / 6 + 0.5, 0, 1)
    torch.testing.assert_close(eca(x), x * gate.view(3, 12, 1, 1))


def _relative_error(model, reference_model, x):
    with torch.no_grad():
        reference = reference_model(x)["x_hat"]
        return ((model(x)["x_hat"] - reference).norm() / reference.norm()).item()


def test_identity_init_equals_gdn_removed():
    """Whatever the GDN weights, the identity-initialised GDNishLite model is the model without GDN/IGDN."""
    original = gdn_like_model()
    removed = copy.deepcopy(original)
    for seq in (removed.g_a, removed.g_s):
        for i, m in enumerate(seq):
            if isinstance(m, GDN):
                seq[i] = nn.Identity()
    x = torch.rand(2, 3, 64, 64)
    identity = apply_config(copy.deepcopy(original), make_config("all", "gdnish"))
    assert _relative_error(identity, removed, x) < 1e-5
    assert _relative_error(identity, original, x) > 0.5  # this GDN is far from identity


def test_identity_init_starts_close_to_original():
    """Measured on a q1 model with compressai's GDN initialisation (beta=1, gamma=0.1 I): identity init
    changes x_hat by ~1e-5 (relative L2), ReLU by ~0.3, GDNishLite with PyTorch's default init by ~10."""
    original = q1_model()
    x = torch.rand(2, 3, 64, 64)
    identity = _relative_error(apply_config(copy.deepcopy(original), make_config("all", "gdnish")), original, x)
    relu = _relative_error(apply_config(copy.deepcopy(original), make_config("all", "relu")), original, x)
    random = _relative_error(apply_config(copy.deepcopy(original), make_config(
        "all", "gdnish", enc={"init_identity": False}, dec={"init_identity": False})), original, x)
    assert identity < 1e-4 and relu > 0.1 and random > 1.0


# ---------------------------------------------------------------- Upsample + Conv decoder
def test_decoder_upsample_replaces_all_four_deconvs():
    model = apply_config(q1_model(), make_config(decoder_upsample=True))
    assert sum(isinstance(m, UpsampleConv) for m in model.g_s) == 4
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in model.modules())
    assert sum(isinstance(m, GDN) for m in model.g_s) == 3  # IGDN kept
    x = torch.rand(1, 3, 64, 64)
    assert model(x)["x_hat"].shape == x.shape


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upconv_fit_is_least_squares_optimal(mode):
    """The closed-form fit is at least as close to the deconv as Upsample+Conv trained by gradient descent."""
    torch.manual_seed(0)
    deconv = nn.ConvTranspose2d(2, 1, 5, 2, 2, 1).requires_grad_(False)
    fitted = upconv_from_deconv(deconv, mode)
    torch.testing.assert_close(fitted.conv.bias, deconv.bias)
    trained = UpsampleConv(2, 1, 5, mode)
    opt = torch.optim.Adam(trained.parameters(), 5e-2)
    for _ in range(150):
        x = torch.randn(4, 2, 12, 12)
        loss = F.mse_loss(trained(x)[..., 4:-4, 4:-4], deconv(x)[..., 4:-4, 4:-4])
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(64, 2, 12, 12)
    with torch.no_grad():
        target = deconv(x)[..., 4:-4, 4:-4]
        err_fit = F.mse_loss(fitted(x)[..., 4:-4, 4:-4], target).item()
        err_gd = F.mse_loss(trained(x)[..., 4:-4, 4:-4], target).item()
        err_zero = F.mse_loss(deconv.bias.view(1, -1, 1, 1).expand_as(target), target).item()
    assert err_fit <= err_gd * 1.02
    assert err_fit < 0.6 * err_zero


def _representable_deconv_kernels(count):
    """Deconv kernels (k5, s2, p2, op1) whose layer equals *some* nearest-Upsample+Conv(k5, p2) layer:
    the null space of [A, -B], with A, B the impulse responses of the two layers' unit kernels."""
    impulse = torch.zeros(1, 1, 11, 11, dtype=torch.float64)
    impulse[0, 0, 5, 5] = 1.0
    basis = torch.eye(25, dtype=torch.float64).reshape(25, 1, 5, 5)
    a = F.conv2d(F.interpolate(impulse, scale_factor=2, mode="nearest"), basis, padding=2)[0].reshape(25, -1).T
    b = F.conv_transpose2d(impulse, basis.transpose(0, 1), stride=2, padding=2, output_padding=1)[0]
    _, s, vh = torch.linalg.svd(torch.cat([a, -b.reshape(25, -1).T], 1))
    null = vh[(s < 1e-9).nonzero().squeeze(1)]
    assert null.shape[0] == 16  # 4 free taps per axis
    mix = null.T @ torch.randn(null.shape[0], count, dtype=torch.float64)
    return mix[:25].T.float().reshape(count, 5, 5), mix[25:].T.float().reshape(count, 5, 5)


def test_upconv_fit_is_exact_when_representable():
    torch.manual_seed(0)
    conv_kernels, deconv_kernels = _representable_deconv_kernels(2 * 3)
    deconv = nn.ConvTranspose2d(2, 3, 5, 2, 2, 1)
    with torch.no_grad():
        deconv.weight.copy_(deconv_kernels.reshape(2, 3, 5, 5))
    fitted = upconv_from_deconv(deconv, "nearest")
    torch.testing.assert_close(fitted.conv.weight, conv_kernels.reshape(2, 3, 5, 5).transpose(0, 1),
                               atol=1e-5, rtol=1e-4)
    x = torch.randn(1, 2, 12, 12)
    torch.testing.assert_close(fitted(x)[..., 4:-4, 4:-4], deconv(x)[..., 4:-4, 4:-4], atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- trainable scopes
def _rd_steps(model, params, steps=2):
    """Two steps: identity-initialised residual blocks have a zero last layer, so the layers before it
    receive gradient from the second step on (as in zero-initialised residual networks)."""
    opt = torch.optim.Adam(params, lr=1e-2)
    model.train()
    for _ in range(steps):
        x = torch.rand(2, 3, 64, 64)
        out = model(x)
        bpp = sum(torch.log(l).sum() for l in out["likelihoods"].values()) / (-math.log(2) * 2 * 64 * 64)
        loss = F.mse_loss(out["x_hat"], x) + 0.01 * bpp
        opt.zero_grad()
        loss.backward()
        opt.step()


SCOPE_CASES = {
    "encoder relu replaced": (dict(replace_parts="encoder", act="relu"), lambda n: n.startswith("g_a.")),
    "decoder gdnish replaced+hyper": (dict(replace_parts="decoder", act="gdnish", train_scope="replaced+hyper"),
                                      lambda n: n.startswith(("g_s.", "entropy_bottleneck."))),
    "upsample default": (dict(decoder_upsample=True),
                         lambda n: n.startswith("g_s.") and n.split(".")[1] in "0246"),
    "upsample + train_igdn": (dict(decoder_upsample=True, train_igdn=True), lambda n: n.startswith("g_s.")),
    "all, freeze_igdn": (dict(replace_parts="all", train_scope="all", freeze_igdn=True),
                         lambda n: not (n.split(".")[0] in ("g_a", "g_s") and n.split(".")[1] in "135")),
    "unfreeze_all": (dict(decoder_upsample=True, unfreeze_all=True), lambda n: True),
}


@pytest.mark.parametrize("case", list(SCOPE_CASES))
def test_scope_exactly_intended_params_train(case):
    kwargs, expected = SCOPE_CASES[case]
    config = make_config(**kwargs)
    model = apply_config(q1_model(), config)
    params = set_trainable(model, config)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names == {n for n, _ in model.named_parameters() if expected(n)}
    assert {id(p) for p in params} == {id(p) for n, p in model.named_parameters() if n in names
                                       and not n.endswith("quantiles")}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _rd_steps(model, params)
    for name, param in model.named_parameters():
        if name.endswith("quantiles"):  # aux parameter: never in the main optimizer
            assert torch.equal(param, before[name]), name
        elif name in names:
            assert param.grad is not None and param.grad.abs().sum() > 0, name
            assert not torch.equal(param, before[name]), name
        else:
            assert param.grad is None and torch.equal(param, before[name]), name


def test_aux_parameters_follow_entropy_scope():
    config = make_config("encoder", "relu")
    model = apply_config(q1_model(), config)
    set_trainable(model, config)
    assert aux_parameters(model) == []
    config = make_config("encoder", "relu", train_scope="replaced+hyper")
    set_trainable(model, config)
    assert [p.shape for p in aux_parameters(model)] == [model.entropy_bottleneck.quantiles.shape]


def test_build_student_from_teacher():
    teacher = q1_model()
    reference = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = build_student_from_teacher(teacher)
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training
    assert sum(isinstance(m, UpsampleConv) for m in student.g_s) == 4
    assert any(isinstance(m, nn.ConvTranspose2d) for m in teacher.g_s)
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable == {f"g_s.{i}.conv.{w}" for i in (0, 2, 4, 6) for w in ("weight", "bias")}
    assert all(torch.equal(v, reference[k]) for k, v in teacher.state_dict().items())
    torch.testing.assert_close(student.g_a[0].weight, teacher.g_a[0].weight)


# ---------------------------------------------------------------- flags and config
def test_config_defaults_follow_the_seeds():
    assert parse() is None
    relu = parse("--replace_parts", "encoder")
    assert (relu["act"], relu["replace_parts"], relu["train_scope"]) == ("relu", "encoder", "replaced")
    gdnish = parse("--act", "gdnish")
    assert (gdnish["replace_parts"], gdnish["enc"]["t"], gdnish["dec"]["g_max"]) == ("all", 2.0, 2.0)
    up = parse("--decoder_upsample", "--train_igdn")
    assert (up["replace_parts"], up["decoder_upsample"], up["train_igdn"]) == ("none", True, True)
    # plain types only: the config goes into weights_only checkpoints
    for config in (relu, gdnish, up):
        assert torch.load(_roundtrip(config), weights_only=True) == config


def _roundtrip(obj):
    import io
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("argv,message", [
    (["--act", "nope"], "unknown --act 'nope'"),
    (["--act", "gdnish", "--dec_gmin", "2.5"], "--dec_gmin < --dec_gmax"),
    (["--act", "gdnish", "--enc_kdw", "4"], "--enc_kdw must be a positive odd integer"),
    (["--decoder_upsample", "--train_igdn", "--freeze_igdn"], "contradict"),
    (["--train_scope", "replaced"], "needs something replaced"),
    (["--act", "relu", "--replace_parts", "none"], "no effect"),
    (["--act", "x", "--act_module", "no_such_module_xyz"], "cannot import --act_module"),
])
def test_config_errors_are_user_errors(argv, message):
    with pytest.raises(UserError, match=message):
        parse(*argv)


def test_bad_choice_is_one_line_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        parse("--replace_parts", "middle")
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "--replace_parts" in err and len(err.splitlines()) == 1


def test_custom_block_via_act_module(tmp_path, monkeypatch):
    (tmp_path / "my_npu_blocks.py").write_text(textwrap.dedent("""
        from torch import nn
        from common.replace import register_block

        class Scaled(nn.Module):
            def __init__(self, channels, gain=1.0):
                super().__init__()
                self.gain = nn.Parameter(gain * nn.init.ones_(nn.Parameter(__import__('torch').empty(channels))))
            def forward(self, x):
                return x * self.gain.view(1, -1, 1, 1)

        register_block("scaled", Scaled, Scaled)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    config = parse("--act", "scaled", "--act_module", "my_npu_blocks", "--act_opt", "gain=0.5")
    assert config["act_options"] == {"gain": 0.5} and config["act_modules"] == ["my_npu_blocks"]
    model = apply_config(q1_model(), config)
    assert [type(m).__name__ for m in model.g_a[1::2]] == ["Scaled"] * 3
    assert torch.equal(model.g_s[1].gain, torch.full((N,), 0.5))
    params = set_trainable(model, config)
    assert {id(p) for p in params} == {id(p) for n, p in model.named_parameters() if n.startswith(("g_a", "g_s"))}


@pytest.mark.parametrize("package", ["balanced_rd", "common.data", "common.eval", "common.models.bmshj2018",
                                     "common.models.hpcm", "common.replace"])
def test_star_import_of_every_package_finds_what_it_promises(package):
    import importlib

    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert not missing, f"{package}.__all__ names {missing}"
