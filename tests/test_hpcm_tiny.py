"""HPCM: schedule, GGM entropy model, tiny-model training/eval/bitstreams, checkpoints, user errors."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from scipy.stats import gennorm

from common.checkpoint import CHECKPOINT_FORMAT
from common.errors import UserError
from common.assembly import build_with_weights
from common.models import available_models, build
from common.models.hpcm import schedule
from common.models.hpcm.ggm import GGMEntropyModel, ggm_cdf, ggm_scale_table
from common.models.hpcm.schedule import S1_PHASE, S2_PHASE, pack, unpack
from common.models.hpcm.weights import fill_parity_weights

M = 320



# ----------------------------------------------------------------------------- schedule
def _steps_from_rules(g: int, size: int = 16) -> torch.Tensor:
    """Step map of group g built from the verbal rules of the spec (§2.3), independent of the tiles."""
    a, b = S2_PHASE[g]
    c, d = S1_PHASE[g]
    out = torch.zeros(size, size, dtype=torch.long)
    order = {0: [(1, 1), (1, 1), (0, 1), (0, 1), (1, 0), (1, 0)],
             1: [(1, 0), (1, 0), (0, 1), (0, 1), (1, 1), (1, 1)]}[g % 2]
    for r in range(size):
        for col in range(size):
            pr, pc = r % 2 ^ a, col % 2 ^ b  # phase relative to the s2 lattice
            if (pr, pc) == (0, 0):  # on the s2 grid
                i, j = r // 2, col // 2
                qr, qc = i % 2 ^ c, j % 2 ^ d
                if (qr, qc) == (0, 0):  # on the s1 grid
                    k, l = i // 2, j // 2
                    out[r, col] = 1 if (k + l) % 2 == (0 if g < 4 else 1) else 2
                else:
                    out[r, col] = {(1, 1): 3, (1, 0): 4, (0, 1): 5}[(qr, qc)]
            else:
                parity = (r // 2 + col // 2) % 2 ^ (1 if g >= 4 else 0)
                for t, phase in enumerate(order):
                    if phase == (pr, pc) and t % 2 == parity:
                        out[r, col] = 6 + t
    return out


def test_step_tiles_match_the_verbal_rules():
    full = schedule.step_map(M, 16, 16)[0]
    for g in range(8):
        assert torch.equal(full[g * 40].long(), _steps_from_rules(g)), f"group {g}"
        assert torch.equal(full[g * 40 + 39], full[g * 40])


def test_schedule_fractions_complementarity_and_grids():
    full = schedule.step_map(M, 16, 24)
    counts = torch.bincount(full.flatten(), minlength=12)[1:].double() / full.numel()
    expected = [1 / 32] * 2 + [1 / 16] * 3 + [1 / 8] * 6
    assert torch.allclose(counts, torch.tensor(expected, dtype=torch.float64))
    groups = full[0, ::40]  # (8, H, W), one channel per group
    # Every pixel: the 8 groups use each of steps 6..11 exactly once.
    late = torch.sort(groups.masked_fill(groups < 6, 0), dim=0).values[2:]
    assert torch.equal(late, torch.arange(6, 12).view(6, 1, 1).expand_as(late))
    s2 = pack(full, M, S2_PHASE)
    s1 = pack(s2, M, S1_PHASE)
    assert set(s2.unique().tolist()) == {1, 2, 3, 4, 5} and set(s1.unique().tolist()) == {1, 2}
    quarters = s2[0, ::80]  # one channel per quarter: steps 3..5 once each per s2 pixel
    assert torch.equal(torch.sort(quarters.masked_fill(quarters < 3, 0), dim=0).values[1:],
                       torch.arange(3, 6).view(3, 1, 1).expand(3, 8, 12))
    halves = s1[0, ::160]
    assert torch.equal(torch.sort(halves, dim=0).values, torch.tensor([1, 2]).view(2, 1, 1).expand(2, 4, 6))


def test_pack_unpack_round_trip():
    x = torch.randn(2, 2 * M, 8, 16, dtype=torch.float64)
    packed = pack(x, M, S2_PHASE)
    assert packed.shape == (2, 2 * M, 4, 8)
    g = 3  # group 3 has s2 phase (1, 0); its scale/mean halves use the same phase
    assert torch.equal(packed[:, g * 40 + M], x[:, g * 40 + M, 1::2, 0::2])
    back = unpack(packed, M, S2_PHASE)
    assert torch.equal(pack(back, M, S2_PHASE), packed)
    assert torch.count_nonzero(back) == packed.numel()


def test_quirk_b_mapping():
    """Groups 0-1 are aligned; others copy values from the wrong s2 positions (spec §2.6)."""
    index, mask = schedule.quirk_s2_hyper_index(M, 4, 4)
    s1_slots = (pack(schedule.step_map(M, 8, 8), M, S2_PHASE)[0] <= 2).flatten(1)
    assert torch.equal(mask.bool(), ~s1_slots)
    positions = torch.arange(16)
    for g in range(8):
        aligned = torch.equal(index[g * 40][mask[g * 40].bool()], positions[~s1_slots[g * 40]])
        assert aligned == (g < 2), f"group {g}"
    # Group 2: true s1 phase (0, 1) but the official code assumes (0, 0). On a 4x4 grid the sources are
    # all positions except {0, 2, 8, 10}, written in raster order to all except {1, 3, 9, 11}.
    assert index[80][mask[80].bool()].tolist() == [1, 3, 4, 5, 6, 7, 9, 11, 12, 13, 14, 15]
    assert mask[80].nonzero().flatten().tolist() == [0, 2, 4, 5, 6, 7, 8, 10, 12, 13, 14, 15]


# ----------------------------------------------------------------------------- GGM
def test_ggm_cdf_matches_scipy_and_backward_is_the_pdf():
    beta = torch.tensor([1.5], dtype=torch.float64)
    t = torch.tensor([-7.0, -2.5, -0.3, -1e-30, 0.0, 1e-30, 0.4, 3.0, 9.0], dtype=torch.float64)
    assert np.allclose(ggm_cdf(t, beta).numpy(), gennorm.cdf(t.numpy(), 1.5), rtol=1e-12, atol=1e-300)
    t.requires_grad_(True)
    ggm_cdf(t, beta).sum().backward()
    assert torch.isfinite(t.grad).all()
    assert np.allclose(t.grad.numpy(), gennorm.pdf(t.detach().numpy(), 1.5), rtol=1e-12)
    assert abs(float(t.grad[4]) - 1.5 / (2 * math.gamma(1 / 1.5))) < 1e-12  # 0.5539 at 0, no NaN
    points = torch.tensor([-1.3, -0.01, 0.0, 0.02, 0.7, 2.2], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: ggm_cdf(v, beta), (points,))


def test_ggm_likelihood_bounds_and_gradients():
    ggm = GGMEntropyModel().double()
    values = torch.tensor([0.0, 1.0, -2.0, 40.0, 0.3, 0.0], dtype=torch.float64, requires_grad=True)
    scales = torch.tensor([1.0, 0.05, 2.0, 0.5, 3.0, 0.05], dtype=torch.float64, requires_grad=True)
    lik = ggm.likelihood(values, scales)
    s = scales.detach().clamp_min(0.12).numpy()
    v = values.detach().numpy()
    expected = np.maximum(gennorm.cdf((v + 0.5) / s, 1.5) - gennorm.cdf((v - 0.5) / s, 1.5), 1e-9)
    assert np.allclose(lik.detach().numpy(), expected, rtol=1e-10)
    # The far tail hits the likelihood bound (a float32 buffer, as in the official state dict).
    assert float(lik[3].detach()) == float(torch.tensor(1e-9, dtype=torch.float32))
    (-torch.log2(lik)).sum().backward()
    assert torch.isfinite(values.grad).all() and torch.isfinite(scales.grad).all()
    # Below the 0.12 scale bound the gradient passes only where descent would raise the scale.
    assert float(scales.grad[1]) < 0 and float(scales.grad[5]) == 0.0
    inner = torch.tensor([0.3, -0.7], dtype=torch.float64, requires_grad=True)
    sc = torch.tensor([0.8, 1.7], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ggm.likelihood(a, b), (inner, sc))


def test_ggm_cdf_tables():
    ggm = GGMEntropyModel()
    assert abs(ggm.tail_multiplier() - 5.4269) < 1e-4
    table = ggm_scale_table()
    assert table.shape == (60,) and abs(float(table[0]) - 0.12) < 1e-12 and abs(float(table[-1]) - 64) < 1e-9
    cdf, lengths, offsets = ggm.build_tables(table)
    assert cdf.shape == (60, 699) and lengths[0] == 5 and lengths[-1] == 699
    assert offsets[0] == -1 and offsets[-1] == -348
    for row, length in zip(cdf, lengths):
        assert row[0] == 0 and row[length - 1] == 1 << 16 and torch.all(row[1:length] > row[:length - 1])


# ----------------------------------------------------------------------------- tiny model
def test_registry_and_sizes():
    assert {"hpcm-base", "hpcm-large", "hpcm-tiny"} <= set(available_models())
    tiny = build("hpcm-tiny")
    assert tiny.forward_multiple == tiny.eval_pad_multiple == 64
    assert build("hpcm-base").forward_multiple == 256
    with torch.no_grad():
        out = tiny.eval()(torch.rand(1, 3, 64, 128))
    assert out["likelihoods"]["y"].shape == (1, 32, 8, 16) and out["likelihoods"]["z"].shape == (1, 32, 2, 4)


def test_wrong_input_raises_user_error():
    tiny = build("hpcm-tiny")
    with pytest.raises(UserError, match="multiples of 64"):
        tiny(torch.rand(1, 3, 64, 96))
    with pytest.raises(UserError, match=r"\(B, 3, H, W\)"):
        tiny(torch.rand(1, 1, 64, 64))
    with pytest.raises(UserError, match="update"):
        tiny.compress(torch.rand(1, 3, 64, 64))


def test_training_forward_backward_and_rate_split():
    torch.manual_seed(0)
    model = fill_parity_weights(build("hpcm-tiny"), salt=1).train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    rates = out["rate_bits"]
    assert set(rates) == {"z", "y_s1", "y_s2", "y_s3"}
    total = sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values())
    assert torch.allclose(sum(rates.values()), total, rtol=1e-5)
    assert torch.allclose(out["rate_bits_steps"].sum(), -torch.log2(out["likelihoods"]["y"]).sum(), rtol=1e-5)
    # The rate of each scale reaches its own context path (and z's rate its learned scales).
    for key, name in (("y_s3", "y_spatial_prior_s3.branch_2.1.weight"), ("y_s2", "attn_s2.conv_q.weight"),
                      ("y_s1", "y_spatial_prior_adaptor_list_s1.0.weight"), ("z", "scales_hyper")):
        grad, = torch.autograd.grad(rates[key], model.get_parameter(name), retain_graph=True)
        assert grad.abs().sum() > 0, key
    # Scale 1 is coded before the scale-3 prior exists: its rate cannot depend on it.
    grad, = torch.autograd.grad(rates["y_s1"], model.get_parameter("y_spatial_prior_s3.branch_2.1.weight"),
                                retain_graph=True, allow_unused=True)
    assert grad is None or not grad.any()
    loss = sum(rates.values()) / (2 * 64 * 64) + 100 * torch.mean((out["x_hat"] - x) ** 2)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.g_a.branch[0].weight.grad.abs().sum() > 0  # straight-through rounding passes gradients


@pytest.mark.parametrize("quirk", [False, True])
def test_a_model_evaluated_under_inference_mode_still_trains(quirk):
    # The schedule cache must not hand tensors made under inference_mode to a later training forward.
    model = build("hpcm-tiny", official_s2_hyper_quirk=quirk)
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        model.eval()(x)
    out = model.train()(x)
    sum(-torch.log2(lik).sum() for lik in out["likelihoods"].values()).backward()
    assert model.g_a.branch[0].weight.grad.abs().sum() > 0


def test_rate_split_float64_exact_and_scale_fractions():
    model = fill_parity_weights(build("hpcm-tiny"), salt=1).double().eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 128, 128, dtype=torch.float64))
    bits = -torch.log2(out["likelihoods"]["y"])
    steps = schedule.step_map(32, 16, 16)
    for i, key in enumerate(("y_s1", "y_s2", "y_s3")):
        chosen = torch.isin(steps, torch.tensor(schedule.SCALE_STEPS[i]))
        assert torch.allclose(out["rate_bits"][key], bits[chosen].sum(), rtol=1e-12)
    total = bits.sum() + (-torch.log2(out["likelihoods"]["z"])).sum()
    assert torch.allclose(sum(out["rate_bits"].values()), total, rtol=1e-12)
    assert out["x_hat"].dtype == torch.float64


@pytest.mark.parametrize("quirk", [False, True])
def test_bitstream_round_trip_is_bit_exact(quirk):
    model = fill_parity_weights(build("hpcm-tiny", official_s2_hyper_quirk=quirk), salt=1).eval()
    assert model.update() is True and model.update() is False
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(x)
    coded = model.compress(x)
    assert coded["shape"] == (4, 4) and len(coded["strings"][0]) == len(coded["strings"][1]) == 2
    decoded = model.decompress(coded["strings"], coded["shape"])["x_hat"]
    assert torch.equal(decoded, out["x_hat"].clamp(0, 1))
    # Single images decode the same as the batch, and the streams carry about the estimated bits.
    single = model.compress(x[1:])
    assert single["strings"][1][0] == coded["strings"][1][1]
    est_y = float(out["rate_bits"]["y_s1"] + out["rate_bits"]["y_s2"] + out["rate_bits"]["y_s3"])
    real_y = 8 * sum(len(s) for s in coded["strings"][1])
    real_z = 8 * sum(len(s) for s in coded["strings"][0])
    assert abs(real_y - est_y) < 0.01 * est_y + 64, (real_y, est_y)
    assert abs(real_z - float(out["rate_bits"]["z"])) < 0.02 * real_z + 2 * 64


def test_quirk_flag_changes_the_model():
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    outs = []
    for quirk in (False, True):
        model = fill_parity_weights(build("hpcm-tiny", official_s2_hyper_quirk=quirk), salt=1).eval()
        with torch.no_grad():
            outs.append(model(x)["likelihoods"]["y"])
    assert not torch.equal(*outs)


def test_checkpoint_loading(tmp_path):
    model = fill_parity_weights(build("hpcm-tiny"), salt=2).eval()
    model.update()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    state = model.state_dict()
    torch.save(state, tmp_path / "raw.pth")
    torch.save({"format": CHECKPOINT_FORMAT, "model": {"name": "hpcm-tiny", "kwargs": {}}, "state_dict": state,
                "step": 3, "epoch": 0}, tmp_path / "last.pt")
    coded = model.compress(x)
    for name in ("raw.pth", "last.pt"):
        loaded = build_with_weights("hpcm-tiny", checkpoint=str(tmp_path / name)).eval()
        assert loaded.update() is False  # the tables came with the checkpoint
        assert torch.equal(loaded.decompress(coded["strings"], coded["shape"])["x_hat"],
                           model.decompress(coded["strings"], coded["shape"])["x_hat"])
    with pytest.raises(UserError, match="does not fit hpcm-base"):
        build_with_weights("hpcm-base", checkpoint=str(tmp_path / "raw.pth"))
    with pytest.raises(UserError, match="not found"):
        build_with_weights("hpcm-tiny", checkpoint=str(tmp_path / "missing.pth"))


def test_speed_benchmark_runs_and_checks_decoding(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "hpcm_speed.py"
    spec = importlib.util.spec_from_file_location("hpcm_speed", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--model", "hpcm-tiny", "--sizes", "128x64", "--repeats", "1", "--devices", "cpu"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1].split("|")
    assert row[1].strip() == "cpu" and row[2].strip() == "128x64" and row[-2].strip() == "yes"
    with pytest.raises(UserError, match="multiples of 64"):
        bench.main(["--model", "hpcm-tiny", "--sizes", "100x64", "--devices", "cpu"])
    assert bench.main(["--model", "hpcm-tiny", "--sizes", "128x64", "--repeats", "1", "--devices", "cpu",
                       "--profile"]) == 0
    share = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"convolutions' share of one compress at 128x64 on cpu: \d+ %", share.strip()), share
    # The share counts convolutions only: a call made of one large convolution is mostly convolution, a call
    # with none is 0 (the profiler's own overhead is far below half of a 64-channel 3x3 convolution at 96x96).
    x, weight = torch.rand(1, 64, 96, 96), torch.rand(64, 64, 3, 3)
    assert bench.convolution_share(lambda: torch.nn.functional.conv2d(x, weight, padding=1)) > 0.5
    assert bench.convolution_share(lambda: torch.relu(x) * 2) == 0
