"""common.losses against independent references: pytorch_msssim, compressai, numpy hand computation."""
import argparse
import math

import numpy as np
import pytest
import pytorch_msssim
import torch
from compressai.losses import RateDistortionLoss as CompressAIRateDistortionLoss

from common import losses
from common.errors import UserError
from common.flags import add_loss_arguments
from common.train.config import LossConfig


def noisy_pair(shape, noise=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=generator)
    y = (x + noise * torch.randn(shape, generator=generator)).clamp(0, 1)
    return x, y


def fake_output(x_hat, seed=1, hpcm=False):
    """A CompressAI-style output; with ``hpcm`` also rate_bits partitioning y into 3 scales (+ z)."""
    generator = torch.Generator().manual_seed(seed)
    n = x_hat.shape[0]
    y = torch.rand((n, 8, 4, 4), generator=generator).clamp_min(1e-3)
    z = torch.rand((n, 4, 2, 2), generator=generator).clamp_min(1e-3)
    out = {"x_hat": x_hat, "likelihoods": {"y": y, "z": z}}
    if hpcm:
        scale = torch.randint(0, 3, y.shape, generator=generator)
        bits = -torch.log2(y)
        out["rate_bits"] = {"z": -torch.log2(z).sum(), **{f"y_s{s + 1}": bits[scale == s].sum() for s in range(3)}}
    return out


def loss_args(**overrides) -> LossConfig:
    return LossConfig(**overrides)


# ---------------------------------------------------------------------------------- MS-SSIM
@pytest.mark.parametrize("shape", [(2, 3, 161, 170), (1, 3, 256, 256)])
def test_ms_ssim_is_pytorch_msssim_at_161_px_and_above(shape):
    x, y = noisy_pair(shape)
    ours = losses.ms_ssim(x, y, reduction="none")
    reference = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False)
    assert torch.equal(ours, reference)
    assert torch.equal(losses.ms_ssim(x, y), reference.mean())


@pytest.mark.parametrize("levels", [1, 2, 3, 4, 5])
def test_truncated_ms_ssim_matches_pytorch_msssim_with_the_same_weights(levels):
    # On an image large enough for pytorch_msssim, our truncated loop must equal its L-scale result
    # when given the same renormalised weights: this validates the loop used for small images.
    x, y = noisy_pair((2, 3, 176, 180), seed=3)
    weights = torch.tensor(losses.MS_SSIM_WEIGHTS[:levels])
    weights = (weights / weights.sum()).tolist()
    reference = pytorch_msssim.ms_ssim(x, y, data_range=1.0, size_average=False, weights=weights)
    ours = losses._ms_ssim_levels(x, y, 1.0, levels, 11)
    assert torch.allclose(ours, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("side,expected", [(161, (5, 11)), (160, (4, 11)), (81, (4, 11)), (80, (3, 11)),
                                           (41, (3, 11)), (40, (2, 11)), (21, (2, 11)), (20, (1, 11)),
                                           (11, (1, 11)), (10, (1, 9)), (4, (1, 3)), (1, (1, 1))])
def test_ms_ssim_scale_policy(side, expected):
    assert losses.ms_ssim_scales(side) == expected


def test_single_scale_case_is_nonnegative_ssim():
    x, y = noisy_pair((2, 3, 15, 19), seed=4)
    reference = pytorch_msssim.ssim(x, y, data_range=1.0, size_average=False, nonnegative_ssim=True)
    assert torch.allclose(losses.ms_ssim(x, y, reduction="none"), reference, atol=1e-6)


@pytest.mark.parametrize("side", [160, 128, 64, 40, 24, 16, 10, 3, 1])
def test_ms_ssim_small_images_never_crash_and_behave(side):
    x, small_noise = noisy_pair((2, 3, side, side + 5), noise=0.02, seed=side)
    _, big_noise = noisy_pair((2, 3, side, side + 5), noise=0.3, seed=side)  # same x, more noise
    assert torch.allclose(losses.ms_ssim(x, x), torch.tensor(1.0), atol=1e-5)
    good, bad = float(losses.ms_ssim(x, small_noise)), float(losses.ms_ssim(x, big_noise))
    assert 0.0 <= bad < good <= 1.0 + 1e-6


def test_ms_ssim_small_image_gradient_is_finite():
    x, y = noisy_pair((1, 3, 64, 64))
    y.requires_grad_(True)
    (1 - losses.ms_ssim(x, y)).backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_ms_ssim_db():
    from common.rd import ms_ssim_to_db

    assert ms_ssim_to_db(0.99) == pytest.approx(20.0)
    assert [ms_ssim_to_db(v) for v in (0.9, 0.999)] == pytest.approx([10.0, 30.0])
    assert ms_ssim_to_db(1.0) == math.inf


# ---------------------------------------------------------------------------------- PSNR, bpp
def test_psnr_by_hand():
    x, y = noisy_pair((2, 3, 8, 8), noise=0.1)
    a, b = x.double().numpy(), y.double().numpy()
    expected = [10 * np.log10(1.0 / np.mean((a[i] - b[i]) ** 2)) for i in range(2)]
    assert np.allclose(losses.psnr(x, y, reduction="none").numpy(), expected, atol=1e-4)
    assert float(losses.psnr(x, y)) == pytest.approx(np.mean(expected), abs=1e-4)
    assert float(losses.psnr(x[0], y[0])) == pytest.approx(expected[0], abs=1e-4)


def test_psnr_8bit_quantises_both_images_first():
    # 0.2/255 and 0.3/255 away from integer levels: float PSNR sees the offsets, 8-bit PSNR does not.
    levels = torch.arange(48, dtype=torch.float32).reshape(1, 3, 4, 4) * 5
    x = (levels + 0.2) / 255
    y = (levels + torch.tensor([0.3, 1.4, -0.3]).repeat(16)[:48].reshape(1, 3, 4, 4)) / 255
    qx = np.clip(np.round(x.double().numpy() * 255), 0, 255)
    qy = np.clip(np.round(y.double().numpy() * 255), 0, 255)
    expected = 20 * math.log10(255) - 10 * math.log10(np.mean((qx - qy) ** 2))
    assert float(losses.psnr_8bit(x, y)) == pytest.approx(expected, abs=1e-4)
    assert float(losses.psnr_8bit(x, y)) != pytest.approx(float(losses.psnr(x, y)), abs=0.1)


def test_bpp_by_hand():
    likelihoods = {"y": torch.full((2, 4, 3, 3), 0.5), "z": torch.full((2, 2, 1, 1), 0.25)}
    # y: 72 symbols at 1 bit, z: 4 symbols at 2 bits -> 80 bits over 2 images of 16x16 pixels.
    assert float(losses.bpp_from_likelihoods(likelihoods, 2 * 16 * 16)) == pytest.approx(80 / 512)
    assert float(losses.bpp_from_likelihoods(likelihoods["y"], 512)) == pytest.approx(72 / 512)


# ---------------------------------------------------------------------------------- criteria
def test_mse_rd_loss_matches_compressai():
    x, x_hat = noisy_pair((2, 3, 32, 48))
    out = fake_output(x_hat)
    reference = CompressAIRateDistortionLoss(lmbda=0.0483)(out, x)
    ours = losses.RateDistortionLoss(lmbda=0.0483)(out, x)
    for key in ("mse_loss", "bpp_loss", "loss"):
        assert torch.allclose(ours[key], reference[key], rtol=1e-6), key
    distortion, rate = ours["tasks"]
    assert torch.allclose(distortion, 0.0483 * 255**2 * reference["mse_loss"])
    assert torch.allclose(rate, reference["bpp_loss"])
    assert losses.RateDistortionLoss().task_names == ("distortion", "rate")


def test_recon_and_rd_losses_by_hand():
    x, x_hat = noisy_pair((2, 3, 176, 176), noise=0.1)
    x_hat = x_hat + 0.02  # some values above 1: L1 sees them, MS-SSIM sees the clamped image
    out = fake_output(x_hat)
    l1 = np.mean(np.abs(x_hat.double().numpy() - x.double().numpy()))
    similarity = float(pytorch_msssim.ms_ssim(x_hat.clamp(0, 1), x, data_range=1.0))
    bpp = float(CompressAIRateDistortionLoss()(out, x)["bpp_loss"])
    recon = 0.3 * l1 + 0.7 * (1 - similarity)

    terms = losses.ReconstructionLoss(alpha=0.3)(out, x)
    assert float(terms["l1_loss"]) == pytest.approx(l1, rel=1e-5)
    assert float(terms["ms_ssim"]) == pytest.approx(similarity, rel=1e-6)
    assert float(terms["loss"]) == pytest.approx(recon, rel=1e-5)
    assert float(terms["bpp_loss"]) == pytest.approx(bpp, rel=1e-5) and not terms["bpp_loss"].requires_grad
    assert len(terms["tasks"]) == 1

    terms = losses.ReconRateLoss(alpha=0.3, lambda_bpp=0.05)(out, x)
    assert float(terms["loss"]) == pytest.approx(recon + 0.05 * bpp, rel=1e-5)
    assert [float(t) for t in terms["tasks"]] == pytest.approx([recon, 0.05 * bpp], rel=1e-5)


@pytest.mark.parametrize("loss_type", ["mse", "rd"])
def test_hierarchical_tasks_split_the_rate_exactly(loss_type):
    x, x_hat = noisy_pair((2, 3, 64, 64))
    out = fake_output(x_hat, hpcm=True)
    two = losses.criterion_from_args(loss_args(loss_type=loss_type))(out, x)
    criterion = losses.criterion_from_args(loss_args(loss_type=loss_type, hierarchical_tasks=True))
    five = criterion(out, x)
    assert criterion.task_names == ("distortion", "rate_z", "rate_y_s1", "rate_y_s2", "rate_y_s3")
    assert len(five["tasks"]) == 5
    assert torch.allclose(five["tasks"][0], two["tasks"][0])
    assert torch.allclose(sum(five["tasks"][1:]), two["tasks"][1], rtol=1e-5)
    assert torch.allclose(five["loss"], two["loss"], rtol=1e-5)
    z_bits = float(-torch.log2(out["likelihoods"]["z"]).sum())
    assert float(five["bpp_z"]) == pytest.approx(z_bits / (2 * 64 * 64), rel=1e-6)


def test_hierarchical_tasks_errors():
    x, x_hat = noisy_pair((1, 3, 16, 16))
    criterion = losses.criterion_from_args(loss_args(hierarchical_tasks=True))
    with pytest.raises(UserError, match="HPCM"):
        criterion(fake_output(x_hat), x)
    out = fake_output(x_hat, hpcm=True)
    del out["rate_bits"]["y_s2"]
    with pytest.raises(UserError, match="y_s2"):
        criterion(out, x)
    with pytest.raises(UserError, match="recon"):
        losses.criterion_from_args(loss_args(loss_type="recon", hierarchical_tasks=True))


def test_losses_run_in_fp32_under_autocast():
    x, x_hat = noisy_pair((1, 3, 48, 48))
    out = fake_output(x_hat.bfloat16())
    out["likelihoods"] = {k: v.bfloat16() for k, v in out["likelihoods"].items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = losses.ReconRateLoss()(out, x)
    exact = losses.ReconRateLoss()({"x_hat": out["x_hat"].float(),
                                     "likelihoods": {k: v.float() for k, v in out["likelihoods"].items()}}, x)
    assert terms["loss"].dtype == torch.float32
    assert torch.equal(terms["loss"], exact["loss"])


def test_distillation_loss():
    teacher, student = noisy_pair((1, 3, 48, 48), noise=0.05)
    student.requires_grad_(True)
    teacher_out = {"x_hat": (teacher + 0.01).requires_grad_(True)}
    terms = losses.DistillationLoss(l1_weight=1.0, msssim_weight=0.2)({"x_hat": student}, teacher_out)
    target = (teacher + 0.01).clamp(0, 1)
    detached = student.detach()
    expected = float((detached - target).abs().mean()) + 0.2 * (1 - float(losses.ms_ssim(detached, target)))
    assert float(terms["loss"].detach()) == pytest.approx(expected, rel=1e-5)
    terms["loss"].backward()
    assert student.grad is not None and teacher_out["x_hat"].grad is None


def test_cli_flags_and_validation():
    args = loss_args()
    assert (args.loss_type, args.lmbda, args.alpha_l1, args.lambda_bpp, args.hierarchical_tasks) == \
        ("mse", 0.013, 0.4, 0.01, False)
    parser = argparse.ArgumentParser()
    add_loss_arguments(parser)
    parsed = parser.parse_args(["--loss_type", "rd", "--lambda", "0.0483", "--hierarchical_tasks", "true"])
    assert parsed.lmbda == 0.0483 and parsed.hierarchical_tasks
    assert isinstance(losses.criterion_from_args(loss_args(loss_type="recon")), losses.ReconstructionLoss)
    criterion = losses.criterion_from_args(loss_args(loss_type="rd", lambda_bpp=0.02, alpha_l1=0.5))
    assert isinstance(criterion, losses.ReconRateLoss) and criterion.lambda_bpp == 0.02
    with pytest.raises(UserError, match="alpha_l1"):
        losses.criterion_from_args(loss_args(alpha_l1=1.5))
    with pytest.raises(UserError, match="lambda"):
        losses.criterion_from_args(loss_args(lmbda=-1.0))
