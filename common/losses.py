"""Training losses and image-quality metrics.

Conventions: images are N×3×H×W (or 3×H×W for the metrics) with values in [0, 1]; a model output is
``{"x_hat", "likelihoods": {name: tensor}}`` (CompressAI), HPCM models add ``"rate_bits"``.
Every loss and metric runs in FP32 with autocast disabled, whatever the dtype of its inputs.

* bpp = Σ over all latents of −log₂(likelihood) / (N·H·W), as CompressAI computes it.
* ``mse``   (CompressAI's RateDistortionLoss): loss = λ·255²·MSE + bpp, ``--lambda`` λ.
* ``recon`` (seeds 000–003): loss = α·L1 + (1 − α)·(1 − MS-SSIM), ``--alpha_l1`` α.
* ``rd``    (seeds 002/003): loss = recon + λ_bpp·bpp, ``--lambda_bpp`` λ_bpp.
* distillation (seed 001): λ1·L1 + λ2·(1 − MS-SSIM) against the teacher's reconstruction.

A criterion returns a dict of named scalar terms plus ``"loss"`` and ``"tasks"`` (the list of task
losses for the Balanced R-D optimizer, summing to ``"loss"``); ``criterion.task_names`` names them.
Two tasks: [distortion, rate] = [λ·255²·MSE, bpp] (mse) or [recon, λ_bpp·bpp] (rd). With
``--hierarchical_tasks`` and an HPCM model, the rate is split into its four coded parts, giving five
tasks [distortion, rate·bpp_z, rate·bpp_y_s1, rate·bpp_y_s2, rate·bpp_y_s3]. ``output["rate_bits"]``
must then hold the bits (Σ −log₂ likelihood over the batch) of z and of the three y scales; they
partition the y and z likelihoods, so the five tasks sum to the two-task loss.

MS-SSIM follows pytorch-msssim (data_range given explicitly, Gaussian window 11, σ 1.5, the five
weights of Wang et al.). Its five scales need min(H, W) > 160; see :func:`ms_ssim` for smaller images.
MS-SSIM inputs are clamped to [0, 1] (seed 003); L1 and MSE use the raw reconstruction.
"""
from __future__ import annotations

import inspect
import math
from contextlib import contextmanager
from typing import Mapping

import pytorch_msssim
import torch
import torch.nn.functional as F
from pytorch_msssim.ssim import _fspecial_gauss_1d, _ssim
from torch import Tensor, nn

from common.errors import UserError
from common.train.config import LossConfig

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_WINDOW = 11
MS_SSIM_SIGMA = 1.5
HPCM_RATE_PARTS = ("z", "y_s1", "y_s2", "y_s3")


@contextmanager
def fp32_region(device: torch.device):
    """Run the enclosed ops in FP32 even inside an autocast region."""
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def _batched(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    if x.shape != y.shape:
        raise ValueError(f"images differ in shape: {tuple(x.shape)} vs {tuple(y.shape)}")
    if x.dim() == 3:
        x, y = x.unsqueeze(0), y.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"expected N×C×H×W or C×H×W images, got shape {tuple(x.shape)}")
    return x.float(), y.float()


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


# ---------------------------------------------------------------------------------- metrics
def ms_ssim_scales(min_side: int) -> tuple[int, int]:
    """(number of scales, window size) that MS-SSIM uses for images whose shorter side is ``min_side``."""
    for levels in range(len(MS_SSIM_WEIGHTS), 0, -1):
        if min_side > (MS_SSIM_WINDOW - 1) * 2 ** (levels - 1):
            return levels, MS_SSIM_WINDOW
    return 1, min_side if min_side % 2 else min_side - 1


def _ms_ssim_levels(x: Tensor, y: Tensor, data_range: float, levels: int, window: int) -> Tensor:
    """Per-image MS-SSIM over the first ``levels`` scales, weights renormalised to sum to 1.

    The same computation as ``pytorch_msssim.ms_ssim`` (contrast-structure terms at the finer scales,
    full SSIM at the coarsest, 2×2 average pooling between scales), truncated.
    """
    weights = x.new_tensor(MS_SSIM_WEIGHTS[:levels])
    weights = weights / weights.sum()
    win = _fspecial_gauss_1d(window, MS_SSIM_SIGMA).repeat([x.shape[1], 1, 1, 1])
    factors = []
    for level in range(levels):
        ssim_per_channel, cs = _ssim(x, y, data_range=data_range, win=win, size_average=False)
        if level < levels - 1:
            factors.append(torch.relu(cs))
            padding = [side % 2 for side in x.shape[2:]]
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    factors.append(torch.relu(ssim_per_channel))
    per_channel = torch.prod(torch.stack(factors) ** weights.view(-1, 1, 1), dim=0)
    return per_channel.mean(1)


def ms_ssim(x: Tensor, y: Tensor, data_range: float = 1.0, reduction: str = "mean") -> Tensor:
    """MS-SSIM of two image batches (``reduction="none"``: one value per image).

    For min(H, W) > 160 this is ``pytorch_msssim.ms_ssim`` itself (five scales). Smaller images, where
    pytorch-msssim asserts (or, under ``python -O``, returns a wrong number), use **fewer scales**:
    the largest L ≤ 5 whose coarsest scale still holds a whole 11-px window (min side > 10·2^(L−1)),
    with the first L standard weights renormalised to sum to 1 — MS-SSIM truncated at the coarsest
    scale the image has, which keeps 1.0 for identical images and [0, 1] as the range. 11–20 px gives
    single-scale SSIM; below 11 px, SSIM with the largest odd window that fits.
    """
    x, y = _batched(x, y)
    with fp32_region(x.device):
        levels, window = ms_ssim_scales(min(x.shape[-2:]))
        if levels == len(MS_SSIM_WEIGHTS):
            values = pytorch_msssim.ms_ssim(x, y, data_range=data_range, size_average=False)
        else:
            values = _ms_ssim_levels(x, y, data_range, levels, window)
    return _reduce(values, reduction)


def psnr(x: Tensor, y: Tensor, data_range: float = 1.0, reduction: str = "mean") -> Tensor:
    """PSNR in dB per image (mean over pixels and channels), averaged over the batch unless ``"none"``."""
    x, y = _batched(x, y)
    with fp32_region(x.device):
        mse = (x - y).pow(2).flatten(1).mean(1)
        values = 20.0 * math.log10(data_range) - 10.0 * torch.log10(mse)
    return _reduce(values, reduction)


def quantize_8bit(x: Tensor) -> Tensor:
    """[0, 1] images -> the 8-bit values 0..255 (as floats), as CompressAI's evaluation does."""
    return (x.float() * 255.0).clamp(0.0, 255.0).round()


def psnr_8bit(x: Tensor, y: Tensor, reduction: str = "mean") -> Tensor:
    """PSNR of both images quantised to 8 bit first (CompressAI ``eval_model``): 20·log10(255) − 10·log10(MSE)."""
    return psnr(quantize_8bit(x), quantize_8bit(y), data_range=255.0, reduction=reduction)


def bpp_from_likelihoods(likelihoods: Mapping[str, Tensor] | Tensor, num_pixels: int) -> Tensor:
    """Σ −log₂(likelihoods) / ``num_pixels`` over one tensor or a dict of them (N·H·W pixels)."""
    tensors = likelihoods.values() if isinstance(likelihoods, Mapping) else [likelihoods]
    return sum(torch.log(t.float()).sum() / (-math.log(2) * num_pixels) for t in tensors)


def hierarchical_bpp(output: Mapping, num_pixels: int) -> dict[str, Tensor]:
    """``{"bpp_z", "bpp_y_s1", "bpp_y_s2", "bpp_y_s3"}`` from an HPCM output's ``"rate_bits"``."""
    rate_bits = output.get("rate_bits")
    if rate_bits is None:
        raise UserError("--hierarchical_tasks needs a model whose forward returns per-scale rates "
                        "(rate_bits), i.e. an HPCM model; drop the flag for this model")
    missing = [part for part in HPCM_RATE_PARTS if part not in rate_bits]
    if missing:
        raise UserError(f"the model's rate_bits lack {', '.join(missing)}; expected {', '.join(HPCM_RATE_PARTS)}")
    return {f"bpp_{part}": rate_bits[part].float().sum() / num_pixels for part in HPCM_RATE_PARTS}


def l1_and_ms_ssim(x_hat: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """L1 on the raw reconstruction and MS-SSIM on it clamped to [0, 1] (data_range 1)."""
    return F.l1_loss(x_hat, target), ms_ssim(x_hat.clamp(0.0, 1.0), target, data_range=1.0)


# ---------------------------------------------------------------------------------- criteria
class _TaskCriterion(nn.Module):
    """Shared ``forward``: FP32 inputs, named terms, ``"tasks"`` and ``"loss" = sum(tasks)``."""

    task_names: tuple[str, ...] = ()

    def forward(self, output: Mapping, target: Tensor) -> dict:
        with fp32_region(target.device):
            terms = self.terms(output, output["x_hat"].float(), target.float())
        terms["loss"] = sum(terms["tasks"])
        return terms

    def terms(self, output: Mapping, x_hat: Tensor, target: Tensor) -> dict:
        raise NotImplementedError

    @staticmethod
    def rate_tasks(output: Mapping, target: Tensor, weight: float, hierarchical: bool) -> tuple[dict, list]:
        """Named rate terms and the weighted rate task(s): [weight·bpp] or the four HPCM parts."""
        n, _, h, w = target.shape
        named = {"bpp_loss": bpp_from_likelihoods(output["likelihoods"], n * h * w)}
        if not hierarchical:
            return named, [weight * named["bpp_loss"]]
        parts = hierarchical_bpp(output, n * h * w)
        named.update(parts)
        return named, [weight * parts[f"bpp_{part}"] for part in HPCM_RATE_PARTS]

    def _names(self, hierarchical: bool) -> tuple[str, ...]:
        rates = tuple(f"rate_{part}" for part in HPCM_RATE_PARTS) if hierarchical else ("rate",)
        return ("distortion",) + rates


class RateDistortionLoss(_TaskCriterion):
    """λ·255²·MSE + bpp (CompressAI's convention; same ``mse_loss``/``bpp_loss``/``loss`` values)."""

    def __init__(self, lmbda: float = 0.013, hierarchical: bool = False):
        super().__init__()
        self.lmbda, self.hierarchical = lmbda, hierarchical
        self.task_names = self._names(hierarchical)

    def terms(self, output, x_hat, target):
        mse = F.mse_loss(x_hat, target)
        distortion = self.lmbda * 255.0**2 * mse
        named, rates = self.rate_tasks(output, target, 1.0, self.hierarchical)
        return {"mse_loss": mse, "distortion": distortion, **named, "tasks": [distortion, *rates]}


class MSSSIMRateDistortionLoss(_TaskCriterion):
    """λ·(1 − MS-SSIM) + bpp: CompressAI's and HPCM's ``--metric ms-ssim`` objective (λ ladder 2.4 … 60.5).

    MS-SSIM is taken on the unclamped reconstruction, as CompressAI's loss does, so that pixels outside
    [0, 1] still get a gradient.
    """

    def __init__(self, lmbda: float = 8.73, hierarchical: bool = False):
        super().__init__()
        self.lmbda, self.hierarchical = lmbda, hierarchical
        self.task_names = self._names(hierarchical)

    def terms(self, output, x_hat, target):
        similarity = ms_ssim(x_hat, target, data_range=1.0)
        distortion = self.lmbda * (1.0 - similarity)
        named, rates = self.rate_tasks(output, target, 1.0, self.hierarchical)
        return {"ms_ssim_loss": similarity, "distortion": distortion, **named, "tasks": [distortion, *rates]}


class ReconstructionLoss(_TaskCriterion):
    """α·L1 + (1 − α)·(1 − MS-SSIM); one task. ``bpp_loss`` is reported (detached) when available."""

    task_names = ("distortion",)

    def __init__(self, alpha: float = 0.4):
        super().__init__()
        self.alpha = alpha

    def recon_terms(self, x_hat: Tensor, target: Tensor) -> dict:
        l1, similarity = l1_and_ms_ssim(x_hat, target)
        recon = self.alpha * l1 + (1.0 - self.alpha) * (1.0 - similarity)
        return {"l1_loss": l1, "ms_ssim": similarity, "recon_loss": recon}

    def terms(self, output, x_hat, target):
        named = self.recon_terms(x_hat, target)
        if output.get("likelihoods"):
            n, _, h, w = target.shape
            named["bpp_loss"] = bpp_from_likelihoods(output["likelihoods"], n * h * w).detach()
        return {**named, "tasks": [named["recon_loss"]]}


class ReconRateLoss(ReconstructionLoss):
    """The seeds' ``rd`` loss: α·L1 + (1 − α)·(1 − MS-SSIM) + λ_bpp·bpp."""

    def __init__(self, alpha: float = 0.4, lambda_bpp: float = 0.01, hierarchical: bool = False):
        super().__init__(alpha)
        self.lambda_bpp, self.hierarchical = lambda_bpp, hierarchical
        self.task_names = self._names(hierarchical)

    def terms(self, output, x_hat, target):
        named = self.recon_terms(x_hat, target)
        rate_named, rates = self.rate_tasks(output, target, self.lambda_bpp, self.hierarchical)
        return {**named, **rate_named, "tasks": [named["recon_loss"], *rates]}


class DistillationLoss(_TaskCriterion):
    """λ1·L1 + λ2·(1 − MS-SSIM) between the student's and the (detached, clamped) teacher's reconstruction.

    ``forward(student_output, teacher)`` takes the teacher's output dict or its ``x_hat`` tensor.
    Defaults λ1 = 1.0, λ2 = 0.2 are seed 001's.
    """

    task_names = ("distortion",)

    def __init__(self, l1_weight: float = 1.0, msssim_weight: float = 0.2):
        super().__init__()
        self.l1_weight, self.msssim_weight = l1_weight, msssim_weight

    def forward(self, output: Mapping, teacher: Mapping | Tensor) -> dict:
        target = teacher["x_hat"] if isinstance(teacher, Mapping) else teacher
        return super().forward(output, target.detach().clamp(0.0, 1.0))

    def terms(self, output, x_hat, target):
        l1, similarity = l1_and_ms_ssim(x_hat, target)
        loss = self.l1_weight * l1 + self.msssim_weight * (1.0 - similarity)
        # Named apart from the image metrics that validation adds: how close the student is to its teacher.
        return {"teacher_l1": l1, "teacher_ms_ssim": similarity, "tasks": [loss]}


# ---------------------------------------------------------------------------------- CLI


def _mse(lmbda: float, hierarchical_tasks: bool) -> _TaskCriterion:
    return RateDistortionLoss(lmbda, hierarchical_tasks)


def _ms_ssim_rd(lmbda: float, hierarchical_tasks: bool) -> _TaskCriterion:
    return MSSSIMRateDistortionLoss(lmbda, hierarchical_tasks)


def _recon(alpha_l1: float, hierarchical_tasks: bool) -> _TaskCriterion:
    if hierarchical_tasks:
        raise UserError("--hierarchical_tasks splits the rate, but --loss_type recon has no rate term: "
                        "use --loss_type mse or rd")
    return ReconstructionLoss(alpha_l1)


def _recon_rate(alpha_l1: float, lambda_bpp: float, hierarchical_tasks: bool) -> _TaskCriterion:
    return ReconRateLoss(alpha_l1, lambda_bpp, hierarchical_tasks)


# The registry of --loss_type: each criterion's builder; its keyword arguments are the LossConfig fields it
# reads (every criterion gets hierarchical_tasks, which decides how the rate is split into tasks).
CRITERIA = {"mse": _mse, "ms-ssim": _ms_ssim_rd, "recon": _recon, "rd": _recon_rate}
LOSS_OPTIONS = {name: tuple(p for p in inspect.signature(builder).parameters if p != "hierarchical_tasks")
                for name, builder in CRITERIA.items()}


def check_flags(config: LossConfig, distill: bool = False) -> None:
    """Refuse loss options that the chosen ``loss_type`` of ``config`` (a LossConfig) would ignore.

    Distillation replaces the criterion by its own loss (``--distill_l1``/``--distill_msssim``), so with
    ``distill`` no ``--loss_type`` option is read and none may differ from its default.
    """
    defaults = LossConfig()
    used = () if distill else LOSS_OPTIONS[config.loss_type]
    chosen = "--distill" if distill else f"--loss_type {config.loss_type}"
    for dest in sorted({dest for options in LOSS_OPTIONS.values() for dest in options} - set(used)):
        if getattr(config, dest) != getattr(defaults, dest):
            flag = "--lambda" if dest == "lmbda" else f"--{dest}"
            owners = [name for name, options in LOSS_OPTIONS.items() if dest in options]
            raise UserError(f"{flag} is not used with {chosen} (it belongs to --loss_type {' or '.join(owners)}); "
                            "drop it")


def criterion_from_args(args: LossConfig) -> _TaskCriterion:
    """The criterion of ``args.loss_type`` (a :data:`CRITERIA` entry) with the options it reads."""
    if args.lmbda < 0 or args.lambda_bpp < 0:
        raise UserError("--lambda and --lambda_bpp must be >= 0")
    if not 0.0 <= args.alpha_l1 <= 1.0:
        raise UserError(f"--alpha_l1 must be in [0, 1], got {args.alpha_l1}")
    if args.loss_type not in CRITERIA:
        raise UserError(f"unknown --loss_type {args.loss_type!r}; choose one of: {', '.join(CRITERIA)}")
    builder = CRITERIA[args.loss_type]
    return builder(**{name: getattr(args, name) for name in inspect.signature(builder).parameters})
