"""Generalized Gaussian (GGM) entropy model of HPCM: likelihoods, quantisation and rANS CDF tables."""
from __future__ import annotations

import math

import torch
from compressai._CXX import pmf_to_quantized_cdf
from compressai.ops import LowerBound
from scipy.stats import gennorm
from torch import nn

CDF_PRECISION = 16


def ggm_scale_table(low: float = 0.12, high: float = 64.0, levels: int = 60,
                    dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Log-spaced scale levels of the y CDF tables (official: 60 levels from 0.12 to 64, computed in float32)."""
    return torch.exp(torch.linspace(math.log(low), math.log(high), levels, dtype=dtype))


class _GGMCDF(torch.autograd.Function):
    """Unit-scale GGM CDF F(t) = 1/2 (1 + sign(t) P(1/beta, |t|^beta)) with the closed-form pdf as backward.

    Autograd through ``gammainc`` is NaN at t = 0 and inaccurate near it; the pdf
    beta / (2 Gamma(1/beta)) exp(-|t|^beta) is finite everywhere. The forward evaluates each side through
    the upper incomplete gamma Q = 1 - P, which keeps the tails accurate (1 - F is never formed by
    cancellation for t < 0).
    """

    @staticmethod
    def forward(ctx, t: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        inv_beta = (1.0 / beta).to(t.dtype)
        power = t.abs().pow(beta.to(t.dtype))
        half_tail = 0.5 * torch.special.gammaincc(inv_beta, power)
        ctx.save_for_backward(power, beta)
        return torch.where(t < 0, half_tail, 1.0 - half_tail)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        power, beta = ctx.saved_tensors
        beta = beta.to(power.dtype)
        density = beta / (2.0 * torch.exp(torch.lgamma(1.0 / beta))) * torch.exp(-power)
        return grad * density, None


def ggm_cdf(t: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    return _GGMCDF.apply(t, beta)


def _official_ggm_cdf(t: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The official code's evaluation of the unit GGM CDF, (1 + sign(t) P(1/beta, |t|^beta)) / 2, op for op
    in ``t``'s dtype; for t > 0 it forms 1 - F by cancellation, so it is only used to reproduce its tables."""
    return (1 + torch.sign(t) * torch.special.gammainc(1 / beta, torch.pow(torch.abs(t), beta))) / 2


def _pad_rows(cdfs: list[list[int]]) -> torch.Tensor:
    table = torch.zeros(len(cdfs), max(len(c) for c in cdfs), dtype=torch.int32)
    for row, cdf in enumerate(cdfs):
        table[row, :len(cdf)] = torch.tensor(cdf, dtype=torch.int32)
    return table


class GGMEntropyModel(nn.Module):
    """Likelihood of integer-spaced values under a zero-mean GGM with per-element scale.

    ``likelihood(v, s) = max(F((v + 1/2) / s') - F((v - 1/2) / s'), 1e-9)`` with ``s' = max(s, 0.12)``;
    both bounds are CompressAI's :class:`LowerBound` (gradient passes where it can raise the value).
    Buffers are named as in the official ``entropy_estimation`` module.
    """

    def __init__(self, beta: float = 1.5, scale_bound: float = 0.12, likelihood_bound: float = 1e-9,
                 tail_mass: float = 1e-6):
        super().__init__()
        self.register_buffer("beta", torch.tensor([beta]))
        self.scale_lower_bound = LowerBound(scale_bound)
        self.likelihood_lower_bound = LowerBound(likelihood_bound)
        self.tail_mass = tail_mass

    def likelihood(self, values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        """Likelihoods in at least float32 (half-precision inputs from autocast are upcast)."""
        dtype = torch.promote_types(torch.promote_types(values.dtype, scales.dtype), torch.float32)
        scales = self.scale_lower_bound(scales.to(dtype))
        # Symmetric form: L(v) = L(-v), so evaluate at -|v| where both CDF values are small.
        values = values.to(dtype).abs()
        upper = ggm_cdf((0.5 - values) / scales, self.beta)
        lower = ggm_cdf((-0.5 - values) / scales, self.beta)
        return self.likelihood_lower_bound(upper - lower)

    @staticmethod
    def quantize(values: torch.Tensor, training: bool) -> torch.Tensor:
        """round() in eval; straight-through round (identity gradient) in training."""
        rounded = torch.round(values)
        return values + (rounded - values).detach() if training else rounded

    def tail_multiplier(self) -> float:
        """Half-width of the coded support per unit scale: F^-1(tail_mass / 2) of the unit GGM, negated."""
        return float(-gennorm.ppf(self.tail_mass / 2, float(self.beta)))

    def build_tables(self, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Quantised CDFs (int32, rows padded with 0), their lengths and offsets for 1-D ``scales``.

        The pmf covers -c..c with c = ceil(s' * multiplier); the leftover tail mass is the last symbol
        (the rANS escape symbol for out-of-range values).
        """
        scales = self.scale_lower_bound(scales.detach().double().cpu())
        centers = torch.ceil(scales * self.tail_multiplier()).long()
        pmf_lengths = 2 * centers + 1
        beta = self.beta.detach().double().cpu()
        cdfs = []
        for scale, center in zip(scales.tolist(), centers.tolist()):
            samples = torch.arange(-center, center + 1, dtype=torch.float64)
            upper = ggm_cdf((samples + 0.5) / scale, beta)
            lower = ggm_cdf((samples - 0.5) / scale, beta)
            pmf = upper - lower
            tail = float(lower[0] + (1.0 - upper[-1]))
            cdfs.append(pmf_to_quantized_cdf(pmf.tolist() + [tail], CDF_PRECISION))
        return _pad_rows(cdfs), (pmf_lengths + 2).to(torch.int32), (-centers).to(torch.int32)

    def build_official_tables(self, scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The tables of the official code, count for count: what ``build_tables`` computes, but in float32
        with the official CDF formula, and with the official escape mass ``lower[0] + 1 - upper[-1]`` taken
        at the last column of the grid padded to the longest row, so every row but the longest loses (most
        of) its right tail. Only for reading and writing the official bitstreams: a handful of counts in
        2^16 differ from ``build_tables`` (9 of the 60 y rows, for instance).
        """
        # float() after the bound too: in a float64 model the bound's buffer would promote the result.
        scales = self.scale_lower_bound(scales.detach().float().cpu()).float()
        beta = self.beta.detach().float().cpu()
        centers = torch.ceil(scales * self.tail_multiplier()).int()
        pmf_lengths = 2 * centers + 1
        samples = (torch.arange(int(pmf_lengths.max()), dtype=torch.int32) - centers[:, None]).float()
        upper = _official_ggm_cdf((samples + 0.5) / scales[:, None], beta)
        lower = _official_ggm_cdf((samples - 0.5) / scales[:, None], beta)
        pmf, tails = upper - lower, lower[:, 0] + (1 - upper[:, -1])
        cdfs = [pmf_to_quantized_cdf(row[:length].tolist() + [tail], CDF_PRECISION)
                for row, length, tail in zip(pmf, pmf_lengths.tolist(), tails.tolist())]
        return _pad_rows(cdfs), (pmf_lengths + 2).to(torch.int32), (-centers).to(torch.int32)
