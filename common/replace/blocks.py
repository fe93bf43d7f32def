"""NPU-friendly replacements for GDN/IGDN: ``GDNishLiteEnc`` and ``GDNishLiteDec``.

Both blocks use only Conv (1x1, depthwise), ReLU6/HardSwish, HardSigmoid, Mul and Add, so they export
to ONNX operators that INT8 NPUs run natively (no Pow, Sqrt or Div as in GDN).

``init_identity=True`` makes a freshly built block compute the identity map, so swapping it for a GDN
layer changes the network only as much as removing that GDN would. With the residual path (default)
this is exact for every input; without it, exact for |x| <= 6 with ReLU6 (expansion t >= 2) and for
x >= -3 with HardSwish. The residual variants start with a zero last layer (as zero-initialised
residual networks do), so the layers before it receive gradient from the second training step on.
With BatchNorm enabled the identity holds in eval mode (training mode normalises by batch statistics).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

ACT_TYPES = ("relu6", "hardswish")


def _activation(act_type: str) -> nn.Module:
    if act_type == "relu6":
        return nn.ReLU6(inplace=False)
    if act_type == "hardswish":
        return nn.Hardswish(inplace=False)
    raise ValueError(f"act_type must be one of {ACT_TYPES}, got {act_type!r}")


class ECA(nn.Module):
    """Efficient Channel Attention with a HardSigmoid gate.

    The channel descriptor (global mean) is filtered across channels by a 1-D kernel, implemented as a
    ``(k, 1)`` Conv2d on the descriptor transposed to ``(N, 1, C, 1)``: ONNX sees Transpose + Conv only,
    no shape-dependent Reshape.
    """

    def __init__(self, kernel_size: int = 3):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"eca_kernel must be a positive odd integer, got {kernel_size}")
        self.conv = nn.Conv2d(1, 1, (kernel_size, 1), padding=(kernel_size // 2, 0), bias=False)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        descriptor = x.mean(dim=(2, 3), keepdim=True).transpose(1, 2)  # (N, 1, C, 1)
        weights = self.gate(self.conv(descriptor)).transpose(1, 2)  # (N, C, 1, 1)
        return x * weights


def _plus_minus_identity(expand: nn.Conv2d, reduce: nn.Conv2d, channels: int, out_gain: float) -> None:
    """Set ``expand``/``reduce`` so that reduce(relu6(relu6(expand(x)))) = x for |x| <= 6: hidden
    channel c carries +x_c, hidden channel C+c carries -x_c, and relu6(x) - relu6(-x) = x there.
    ``out_gain`` compensates a constant gain applied after ``reduce``. Hidden channels beyond 2C (t > 2)
    start at zero; with t < 2 only the first ``hidden - C`` channels get their negative half.
    """
    hidden = expand.out_channels
    with torch.no_grad():
        for conv in (expand, reduce):
            conv.weight.zero_()
            conv.bias.zero_()
        positive = min(channels, hidden)
        negative = min(channels, max(hidden - channels, 0))
        idx = torch.arange(positive)
        expand.weight[idx, idx, 0, 0] = 1.0
        reduce.weight[idx, idx, 0, 0] = out_gain
        idx = torch.arange(negative)
        expand.weight[channels + idx, idx, 0, 0] = -1.0
        reduce.weight[idx, channels + idx, 0, 0] = -out_gain


def _offset_identity(expand: nn.Conv2d, reduce: nn.Conv2d, channels: int, out_gain: float,
                     offset: float = 6.0) -> None:
    """Set ``expand``/``reduce`` so that reduce(hardswish(hardswish(expand(x)))) = x for x >= 3 - offset:
    hidden channel c carries x_c + offset, where HardSwish is the identity (u >= 3), and ``reduce``
    removes the offset again. (HardSwish applied twice rules out the +/- construction of ReLU6.)
    """
    with torch.no_grad():
        for conv in (expand, reduce):
            conv.weight.zero_()
            conv.bias.zero_()
        idx = torch.arange(min(channels, expand.out_channels))
        expand.weight[idx, idx, 0, 0] = 1.0
        expand.bias[idx] = offset
        reduce.weight[idx, idx, 0, 0] = out_gain
        reduce.bias[idx] = -offset * out_gain


def _dirac_depthwise(conv: nn.Conv2d, value: float | Tensor = 1.0) -> None:
    """Depthwise kernel that passes each channel through, scaled by ``value``; bias zero."""
    k = conv.kernel_size[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[:, 0, k // 2, k // 2] = value
        if conv.bias is not None:
            conv.bias.zero_()


class GDNishLiteEnc(nn.Module):
    """GDN replacement for the encoder.

    ``1x1 (C -> tC) -> act -> depthwise k_dw x k_dw -> act -> 1x1 (tC -> C) -> [ECA] -> [+ x]``,
    with optional BatchNorm after the first two convolutions (off by default: INT8-unfriendly).
    """

    def __init__(self, channels: int, t: float = 2.0, k_dw: int = 3, use_eca: bool = True, residual: bool = True,
                 eca_kernel: int = 3, init_identity: bool = True, act_type: str = "relu6", bn: bool = False):
        super().__init__()
        if t <= 0:
            raise ValueError(f"t (expansion ratio) must be > 0, got {t}")
        if k_dw < 1 or k_dw % 2 == 0:
            raise ValueError(f"k_dw must be a positive odd integer, got {k_dw}")
        hidden = max(1, round(t * channels))
        self.residual = residual
        self.expand = nn.Conv2d(channels, hidden, 1)
        self.norm1 = nn.BatchNorm2d(hidden) if bn else nn.Identity()
        self.act1 = _activation(act_type)
        self.depthwise = nn.Conv2d(hidden, hidden, k_dw, padding=k_dw // 2, groups=hidden)
        self.norm2 = nn.BatchNorm2d(hidden) if bn else nn.Identity()
        self.act2 = _activation(act_type)
        self.reduce = nn.Conv2d(hidden, channels, 1)
        self.eca = ECA(eca_kernel) if use_eca else nn.Identity()
        if init_identity:
            self._init_identity(channels, use_eca, act_type)

    def _init_identity(self, channels: int, use_eca: bool, act_type: str) -> None:
        if self.residual:
            # Zero the last conv: the branch outputs 0 and the block is x + 0 (the ECA gate is irrelevant).
            with torch.no_grad():
                self.reduce.weight.zero_()
                self.reduce.bias.zero_()
            return
        # No skip path: the branch itself must pass x through. A zero ECA kernel gives a constant gate
        # of HardSigmoid(0) = 0.5 (unsaturated, so it still learns), compensated by a gain of 2.
        if use_eca:
            nn.init.zeros_(self.eca.conv.weight)
        pass_through = _offset_identity if act_type == "hardswish" else _plus_minus_identity
        pass_through(self.expand, self.reduce, channels, out_gain=2.0 if use_eca else 1.0)
        _dirac_depthwise(self.depthwise)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act1(self.norm1(self.expand(x)))
        h = self.act2(self.norm2(self.depthwise(h)))
        h = self.eca(self.reduce(h))
        return x + h if self.residual else h


class GDNishLiteDec(nn.Module):
    """IGDN replacement for the decoder.

    ``h = act(1x1(x))``; per-channel gain ``g = g_min + (g_max - g_min) * HardSigmoid(dw1x1(h))`` in
    ``[g_min, g_max]`` (values above 1 amplify, as IGDN does); ``out = dw_k(x * g) [+ x]``.
    """

    def __init__(self, channels: int, k: int = 3, g_min: float = 0.5, g_max: float = 2.0, residual: bool = True,
                 act_type: str = "relu6", use_bn: bool = False, init_identity: bool = True):
        super().__init__()
        if not 0.0 <= g_min < g_max:
            raise ValueError(f"need 0 <= g_min < g_max, got g_min={g_min}, g_max={g_max}")
        if k < 1 or k % 2 == 0:
            raise ValueError(f"k must be a positive odd integer, got {k}")
        self.g_min = float(g_min)
        self.g_max = float(g_max)
        self.residual = residual
        self.mix = nn.Conv2d(channels, channels, 1)
        self.norm = nn.BatchNorm2d(channels) if use_bn else nn.Identity()
        self.act = _activation(act_type)
        self.scale = nn.Conv2d(channels, channels, 1, groups=channels)
        self.gate = nn.Hardsigmoid()
        self.depthwise = nn.Conv2d(channels, channels, k, padding=k // 2, groups=channels)
        if init_identity:
            self._init_identity()

    def _init_identity(self) -> None:
        # Gain centred on g0 = 1 when 1 lies inside (g_min, g_max), else on the middle of the range; the
        # HardSigmoid then sits in its linear part, so it keeps learning.
        p = (1.0 - self.g_min) / (self.g_max - self.g_min)
        if not 0.0 < p < 1.0:
            p = 0.5
        gain0 = self.g_min + (self.g_max - self.g_min) * p
        with torch.no_grad():
            self.scale.bias.fill_(6.0 * p - 3.0)  # HardSigmoid(z) = z / 6 + 1/2 on [-3, 3]
            if not self.residual:
                self.scale.weight.zero_()  # constant gain g0, undone by the depthwise conv below
        # With the skip path the gated branch starts at zero (out = x, whatever the gain, which keeps its
        # random kernel so that gradients reach it); without it out = x * g0 / g0.
        _dirac_depthwise(self.depthwise, 0.0 if self.residual else 1.0 / gain0)

    def gain(self, x: Tensor) -> Tensor:
        h = self.act(self.norm(self.mix(x)))
        return self.g_min + (self.g_max - self.g_min) * self.gate(self.scale(h))

    def forward(self, x: Tensor) -> Tensor:
        out = self.depthwise(x * self.gain(x))
        return x + out if self.residual else out
