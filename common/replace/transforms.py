"""In-place architecture surgery on CompressAI transforms.

- :func:`replace_gdn`: GDN (encoder ``g_a``) / IGDN (decoder ``g_s``) -> a registered block.
- :func:`replace_decoder_deconv`: every ``ConvTranspose2d`` in ``g_s`` -> :class:`UpsampleConv`
  (Upsample x2 + Conv2d k5 p2), initialised by a least-squares fit to the deconvolution it replaces.

Every inserted module is tagged (:data:`REPLACED_ATTR`) so trainable scopes can find it later.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from compressai.layers import GDN
from torch import Tensor, nn

from common.errors import UserError
from common.replace.registry import get_block

REPLACED_ATTR = "lic_replaced"
PARTS = {"encoder": ("g_a",), "decoder": ("g_s",), "all": ("g_a", "g_s"), "none": ()}
UPSAMPLE_MODES = ("nearest", "bilinear")


def _tag(module: nn.Module) -> nn.Module:
    setattr(module, REPLACED_ATTR, True)
    return module


def is_replaced(module: nn.Module) -> bool:
    return bool(getattr(module, REPLACED_ATTR, False))


def transform(model: nn.Module, attr: str) -> nn.Module:
    part = getattr(model, attr, None)
    if not isinstance(part, nn.Module):
        raise UserError(f"{type(model).__name__} has no {attr} transform; GDN replacement supports "
                        "bmshj2018-style models (g_a encoder, g_s decoder)")
    return part


def _swap_children(parent: nn.Module, select, make) -> int:
    """Replace (recursively) every child ``m`` with ``select(m)`` true by ``make(m)``; return the count."""
    count = 0
    for name, child in parent.named_children():
        if select(child):
            setattr(parent, name, _tag(make(child)))
            count += 1
        else:
            count += _swap_children(child, select, make)
    return count


def replace_gdn(model: nn.Module, parts: str, act: str, enc_options: dict | None = None,
                dec_options: dict | None = None) -> dict[str, int]:
    """Replace GDN in ``g_a`` and IGDN in ``g_s`` (as chosen by ``parts``) with block ``act``.

    Returns the number of replaced layers per transform, e.g. ``{"g_a": 3, "g_s": 3}``.
    """
    if parts not in PARTS:
        raise UserError(f"--replace_parts must be one of {', '.join(PARTS)}, got {parts!r}")
    block = get_block(act)
    counts = {}
    for attr in PARTS[parts]:
        part = transform(model, attr)
        options = dict((enc_options if attr == "g_a" else dec_options) or {})
        factory = block.enc_factory if attr == "g_a" else block.dec_factory

        def make(gdn: GDN, factory=factory, options=options) -> nn.Module:
            return factory(gdn.beta.numel(), **options).to(gdn.beta.device)

        counts[attr] = _swap_children(part, lambda m: isinstance(m, GDN), make)
    if PARTS[parts] and not any(counts.values()):
        raise UserError(f"--act {act} found no GDN/IGDN layer to replace in {' or '.join(PARTS[parts])} of "
                        f"{type(model).__name__}; layer replacement is for GDN models such as bmshj2018-factorized")
    return counts


class UpsampleConv(nn.Module):
    """``Upsample(scale_factor=2, mode) -> Conv2d(in, out, 5, padding=2)``: a deconvolution-free x2 layer."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 5, mode: str = "nearest"):
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ValueError(f"upsample mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
        self.upsample = nn.Upsample(scale_factor=2, mode=mode)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.upsample(x))


@functools.lru_cache(maxsize=None)
def _deconv_to_upconv_map(kernel_size: int, stride: int, padding: int, output_padding: int, mode: str) -> Tensor:
    """Matrix ``P`` (k*k x k*k) with ``vec(K) = P @ vec(W)``: the Upsample+Conv kernel ``K`` whose impulse
    response is closest, in least squares, to that of a ConvTranspose2d kernel ``W``.

    Both layers are linear in their kernels and act independently on each (in, out) channel pair, so one
    small geometry-only fit serves every channel pair. The responses are measured numerically on a
    single-channel impulse, which also covers both output phases of the stride-2 deconvolution.
    """
    k = kernel_size
    size = 2 * k + 1
    impulse = torch.zeros(1, 1, size, size, dtype=torch.float64)
    impulse[0, 0, size // 2, size // 2] = 1.0
    basis = torch.eye(k * k, dtype=torch.float64).reshape(k * k, 1, k, k)
    up = F.interpolate(impulse, scale_factor=2, mode=mode)
    # Columns: response to each unit kernel (all kernels at once as output channels).
    upconv = F.conv2d(up, basis, padding=k // 2)[0].reshape(k * k, -1).T
    deconv = F.conv_transpose2d(impulse, basis.transpose(0, 1), stride=stride, padding=padding,
                                output_padding=output_padding)[0].reshape(k * k, -1).T
    if upconv.shape != deconv.shape:
        raise ValueError("upsample+conv and deconvolution produce different output sizes")
    return (torch.linalg.pinv(upconv) @ deconv).float()


def upconv_from_deconv(deconv: nn.ConvTranspose2d, mode: str = "nearest") -> UpsampleConv:
    """Build an :class:`UpsampleConv` that approximates ``deconv`` (weights fitted, bias copied)."""
    if deconv.stride != (2, 2) or deconv.groups != 1 or deconv.dilation != (1, 1):
        raise ValueError("only stride-2, ungrouped, undilated ConvTranspose2d layers can be replaced")
    k = deconv.kernel_size[0]
    if deconv.kernel_size != (k, k) or k % 2 == 0:
        raise ValueError(f"expected a square odd kernel, got {deconv.kernel_size}")
    layer = UpsampleConv(deconv.in_channels, deconv.out_channels, k, mode).to(deconv.weight.device)
    fit = _deconv_to_upconv_map(k, 2, deconv.padding[0], deconv.output_padding[0], mode).to(deconv.weight.device)
    with torch.no_grad():
        w = deconv.weight.detach().transpose(0, 1).reshape(-1, k * k)  # (out*in, k*k)
        layer.conv.weight.copy_((w @ fit.T).reshape(deconv.out_channels, deconv.in_channels, k, k))
        if deconv.bias is not None:
            layer.conv.bias.copy_(deconv.bias.detach())
        else:
            layer.conv.bias.zero_()
    return layer


def replace_decoder_deconv(model: nn.Module, mode: str = "nearest") -> int:
    """Replace every ConvTranspose2d in ``g_s`` by a fitted :class:`UpsampleConv`; return the count."""
    if mode not in UPSAMPLE_MODES:
        raise UserError(f"--upsample_mode must be one of {', '.join(UPSAMPLE_MODES)}, got {mode!r}")
    return _swap_children(transform(model, "g_s"), lambda m: isinstance(m, nn.ConvTranspose2d),
                          functools.partial(upconv_from_deconv, mode=mode))
