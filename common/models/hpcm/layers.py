"""Building blocks of HPCM: (de)convolutions, partial-conv / depthwise residual blocks, spatial prior,
window cross-attention. Module and attribute names follow the official state dict."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def conv1x1(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1)


def conv4x4_down(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)


def conv2x2_down(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=2, stride=2)


def deconv4x4_up(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=4, stride=2, padding=1)


def deconv2x2_up(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, kernel_size=2, stride=2)


class PartialConv(nn.Module):
    """3x3 conv on the first ``channels // partial_ratio`` channels; the others pass through unchanged."""

    def __init__(self, channels: int, partial_ratio: int = 4):
        super().__init__()
        self.conv_channels = channels // partial_ratio
        self.pconv = nn.Conv2d(self.conv_channels, self.conv_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head, tail = x.split([self.conv_channels, x.shape[1] - self.conv_channels], dim=1)
        return torch.cat([self.pconv(head), tail], dim=1)


class PConvRB(nn.Module):
    """Residual block: partial 3x3 conv -> 1x1 (C -> mlp_ratio*C) -> LeakyReLU(0.01) -> 1x1 back to C."""

    def __init__(self, channels: int, mlp_ratio: int = 4, partial_ratio: int = 4):
        super().__init__()
        hidden = channels * mlp_ratio
        self.branch = nn.Sequential(PartialConv(channels, partial_ratio), conv1x1(channels, hidden),
                                    nn.LeakyReLU(0.01, inplace=True), conv1x1(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class DWConvRB(nn.Module):
    """Residual block: depthwise 3x3 -> 1x1 (C -> mlp_ratio*C) -> LeakyReLU(0.01) -> 1x1 back to C."""

    def __init__(self, channels: int, mlp_ratio: int = 2):
        super().__init__()
        hidden = channels * mlp_ratio
        self.branch = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=3, padding=1, groups=channels),
                                    conv1x1(channels, hidden), nn.LeakyReLU(0.01, inplace=True), conv1x1(hidden, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


class Sequential(nn.Module):
    """A transform whose layers live in ``self.branch`` (the official key prefix ``g_a.branch.{i}``)."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.branch = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.branch(x)


class SpatialPrior(nn.Module):
    """Entropy-parameter net: DWConvRB stack, per-channel gain ``q`` (one per step), DWConvRB stack, 1x1.

    Maps 3M channels to 2M: the first M are scales, the last M are means.
    """

    def __init__(self, in_ch: int, out_ch: int, blocks_1: int, blocks_2: int):
        super().__init__()
        self.branch_1 = nn.Sequential(*[DWConvRB(in_ch) for _ in range(blocks_1)])
        self.branch_2 = nn.Sequential(*[DWConvRB(in_ch) for _ in range(blocks_2)], conv1x1(in_ch, out_ch))

    def forward(self, x: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:
        return self.branch_2(self.branch_1(x) * gain)


class CrossAttentionCell(nn.Module):
    """Progressive context fusion: windowed multi-head attention with queries from the new entropy
    parameters ``psi`` and keys/values from the running context, plus a 1x1 projection of ``psi``."""

    def __init__(self, channels: int, num_heads: int, window_size: int):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels {channels} not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.window_size = window_size
        self.conv_q = conv1x1(channels, channels)
        self.conv_k = conv1x1(channels, channels)
        self.conv_v = conv1x1(channels, channels)
        self.conv_out = conv1x1(channels, channels)

    def _to_windows(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C, H, W) -> (B * nH * nW, heads, ws*ws, head_dim); windows in (b, row, col) order,
        # tokens in raster order inside a window, heads = contiguous channel blocks.
        b, c, h, w = x.shape
        ws, nh = self.window_size, self.num_heads
        x = x.view(b, nh, c // nh, h // ws, ws, w // ws, ws)
        return x.permute(0, 3, 5, 1, 4, 6, 2).reshape(b * (h // ws) * (w // ws), nh, ws * ws, c // nh)

    def _from_windows(self, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        b, c, h, w = shape
        ws, nh = self.window_size, self.num_heads
        x = x.view(b, h // ws, w // ws, nh, ws, ws, c // nh)
        return x.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, h, w)

    def forward(self, psi: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        q = self._to_windows(self.conv_q(psi))
        k = self._to_windows(self.conv_k(context))
        v = self._to_windows(self.conv_v(context))
        attended = F.scaled_dot_product_attention(q, k, v)
        return self._from_windows(attended, psi.shape) + self.conv_out(psi)
