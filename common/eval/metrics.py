"""Image-quality metrics on 8-bit rounded images, as CompressAI's ``eval_model`` computes them."""
from __future__ import annotations

import math
import warnings

import torch
from pytorch_msssim import ms_ssim

# pytorch-msssim's 5-scale MS-SSIM with an 11-px window needs min(H, W) > (11 - 1) * 2**4.
MS_SSIM_MIN_SIDE = 161


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float image -> float image of integers in [0, 255] (CompressAI's rounding)."""
    return (x * 255).clamp(0, 255).round()


def psnr_8bit(original: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """PSNR in dB (peak 255) over all RGB values of the 8-bit rounded images; inf if they are equal."""
    mse = (to_8bit(original).double() - to_8bit(reconstruction).double()).pow(2).mean().item()
    return math.inf if mse == 0 else 20 * math.log10(255.0) - 10 * math.log10(mse)


def ms_ssim_8bit(original: torch.Tensor, reconstruction: torch.Tensor) -> float:
    """MS-SSIM of the 8-bit rounded images with ``data_range=255`` (as eval_model).

    Images with a side below 161 px have no 5-scale MS-SSIM; they get NaN (left out of the means) and a
    warning instead of pytorch-msssim's assertion.
    """
    if min(original.shape[-2:]) < MS_SSIM_MIN_SIDE:
        warnings.warn(f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIDE} px per side, got "
                      f"{tuple(original.shape[-2:])}; recorded as NaN", stacklevel=2)
        return math.nan
    return ms_ssim(to_8bit(original), to_8bit(reconstruction), data_range=255).item()
