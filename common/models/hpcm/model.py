"""HPCM (Li et al., ICCV 2025): hierarchical progressive context mining with a GGM entropy model.

Re-implemented from the description in ``shared/spec/hpcm_architecture.md``. Parameter and buffer names
equal the official ones, so official checkpoints load with ``strict=True``. This file holds the transforms
and the parameters; coding z and y is the job of the latent codecs (:mod:`common.models.hpcm.latent_codecs`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from common.errors import UserError
from common.models.hpcm import schedule
from common.models.hpcm.ggm import GGMEntropyModel
from common.models.hpcm.latent_codecs import HyperpriorCodec, ProgressiveContextCodec
from common.models.hpcm.layers import (CrossAttentionCell, PConvRB, Sequential, SpatialPrior, conv1x1,
                                       conv2x2_down, conv4x4_down, deconv2x2_up, deconv4x4_up)
from common.models.hpcm.schedule import SCALE_STEPS

# What compress() writes: the toolkit's tables and order, or the official code's byte layout.
BITSTREAM_FORMATS = ("toolkit", "official")
# Buffers that stay empty until update(); official checkpoints store them with shape 0.
TABLE_BUFFERS = ("scale_table", "quantized_cdf_z", "cdf_length_z", "offset_z",
                 "quantized_cdf_y", "cdf_length_y", "offset_y")


@dataclass(frozen=True)
class HPCMConfig:
    """Sizes of one HPCM variant (defaults: HPCM-Base)."""

    analysis_channels: tuple[int, ...] = (96, 192, 384)
    analysis_blocks: tuple[int, ...] = (2, 2, 4)
    latent_channels: int = 320          # M
    hyper_channels: int = 256           # N
    mlp_ratio: int = 4                  # PConvRB expansion in g_a, g_s, h_a, h_s
    hyper_blocks: int = 3               # PConvRB(N) blocks in h_a and h_s
    sp12_blocks: tuple[int, int] = (2, 1)
    sp3_blocks: tuple[int, int] = (3, 2)
    num_heads: int = 32
    window_sizes: tuple[int, int, int] = (4, 8, 8)

    @property
    def latent_stride(self) -> int:
        return 2 ** (len(self.analysis_channels) + 1)

    @property
    def size_multiple(self) -> int:
        """H, W multiple that keeps the 8-periodic step tiles and every attention window whole."""
        s, (w1, w2, w3) = self.latent_stride, self.window_sizes
        return math.lcm(8 * s, 4 * w1 * s, 2 * w2 * s, w3 * s)


BASE = HPCMConfig()
LARGE = HPCMConfig(analysis_blocks=(2, 2, 8), sp12_blocks=(2, 2), sp3_blocks=(4, 3))
TINY = HPCMConfig(analysis_channels=(16, 24), analysis_blocks=(1, 1), latent_channels=32, hyper_channels=32,
                  mlp_ratio=2, hyper_blocks=1, sp12_blocks=(1, 1), sp3_blocks=(1, 1), num_heads=8,
                  window_sizes=(2, 4, 4))


def _analysis(cfg: HPCMConfig) -> Sequential:
    chans, layers = cfg.analysis_channels, [conv4x4_down(3, cfg.analysis_channels[0])]
    for i, (ch, blocks) in enumerate(zip(chans, cfg.analysis_blocks)):
        if i:
            layers.append(conv2x2_down(chans[i - 1], ch))
        layers += [PConvRB(ch, cfg.mlp_ratio) for _ in range(blocks)]
    layers.append(conv2x2_down(chans[-1], cfg.latent_channels))
    return Sequential(*layers)


def _synthesis(cfg: HPCMConfig) -> Sequential:
    chans, layers = cfg.analysis_channels[::-1], []
    for i, (ch, blocks) in enumerate(zip(chans, cfg.analysis_blocks[::-1])):
        layers.append(deconv2x2_up(chans[i - 1] if i else cfg.latent_channels, ch))
        layers += [PConvRB(ch, cfg.mlp_ratio) for _ in range(blocks)]
    layers.append(deconv4x4_up(chans[-1], 3))
    return Sequential(*layers)


class HPCM(nn.Module):
    """HPCM image codec. ``forward`` returns x_hat, likelihoods of y and z, and differentiable rates in bits
    per scale (``rate_bits``) and per coding step (``rate_bits_steps``, 11 entries), summed over the batch.

    ``official_s2_hyper_quirk`` reproduces the official (misaligned) scale-2 hyper merge that the released
    weights were trained with; ``False`` uses the aligned merge.

    ``bitstream`` (an attribute too) chooses what :meth:`compress` writes and :meth:`decompress` reads:
    ``"toolkit"`` (CDF tables in float64, each step's symbols in raster order) or ``"official"``, the byte
    layout of the official code (its float32 tables and folded symbol order), so that streams of either
    code decode with the other when both run in float64 (in float32 the two context models differ in the
    last bits, which can move an entropy parameter across a table boundary). The two formats differ in size
    by a few bytes at most.
    """

    def __init__(self, config: HPCMConfig = BASE, official_s2_hyper_quirk: bool = True,
                 bitstream: str = "toolkit"):
        super().__init__()
        cfg = self.config = config
        m, n = cfg.latent_channels, cfg.hyper_channels
        if m % schedule.NUM_GROUPS or (2 * m) % cfg.num_heads:
            raise ValueError("latent channels must divide into 8 groups and 2M into the attention heads")
        self.official_s2_hyper_quirk = official_s2_hyper_quirk
        self.bitstream = bitstream
        self.forward_multiple = self.eval_pad_multiple = cfg.size_multiple

        self.g_a = _analysis(cfg)
        self.g_s = _synthesis(cfg)
        self.h_a = Sequential(PConvRB(m, cfg.mlp_ratio), conv2x2_down(m, n),
                              *[PConvRB(n, cfg.mlp_ratio) for _ in range(cfg.hyper_blocks)], conv2x2_down(n, n))
        self.h_s = Sequential(deconv2x2_up(n, n), *[PConvRB(n, cfg.mlp_ratio) for _ in range(cfg.hyper_blocks)],
                              deconv2x2_up(n, 2 * m), PConvRB(2 * m, cfg.mlp_ratio))

        self.means_hyper = nn.Parameter(torch.zeros(1, n, 1, 1))
        self.scales_hyper = nn.Parameter(torch.ones(1, n, 1, 1))
        self.entropy_estimation = GGMEntropyModel()

        # One adaptor (1x1, 3M -> 3M) and one channel gain per context step (steps 2..11).
        self.y_spatial_prior_adaptor_list_s1 = nn.ModuleList([conv1x1(3 * m, 3 * m)])
        self.y_spatial_prior_adaptor_list_s2 = nn.ModuleList([conv1x1(3 * m, 3 * m) for _ in range(3)])
        self.y_spatial_prior_adaptor_list_s3 = nn.ModuleList([conv1x1(3 * m, 3 * m) for _ in range(6)])
        self.adaptive_params_list = nn.ParameterList([nn.Parameter(torch.ones(1, 3 * m, 1, 1))
                                                      for _ in range(10)])
        self.y_spatial_prior_s1_s2 = SpatialPrior(3 * m, 2 * m, *cfg.sp12_blocks)
        self.y_spatial_prior_s3 = SpatialPrior(3 * m, 2 * m, *cfg.sp3_blocks)
        self.attn_s1, self.attn_s2, self.attn_s3 = (CrossAttentionCell(2 * m, cfg.num_heads, ws)
                                                    for ws in cfg.window_sizes)
        self.context_net = nn.ModuleList([conv1x1(2 * m, 2 * m) for _ in range(2)])

        for name in TABLE_BUFFERS:
            self.register_buffer(name, torch.Tensor())
        # The codecs work on this module's parameters and buffers; they are not submodules (no state-dict keys).
        self.hyper_codec = HyperpriorCodec(self)
        self.y_codec = ProgressiveContextCodec(self)

    @property
    def bitstream(self) -> str:
        return self._bitstream

    @bitstream.setter
    def bitstream(self, value: str) -> None:
        if value not in BITSTREAM_FORMATS:
            raise UserError(f"unknown HPCM bitstream format {value!r}: use one of {', '.join(BITSTREAM_FORMATS)}")
        self._bitstream = value

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != 3:
            raise UserError(f"HPCM expects images of shape (B, 3, H, W), got {tuple(x.shape)}")
        h, w = x.shape[2:]
        if h % self.forward_multiple or w % self.forward_multiple:
            raise UserError(f"HPCM needs H and W to be multiples of {self.forward_multiple}, got {h}x{w}: "
                            f"crop training patches or pad images to a multiple of {self.forward_multiple}")

    def forward(self, x: torch.Tensor) -> dict:
        self._check_input(x)
        y = self.g_a(x)
        hyper = self.hyper_codec.forward(y)
        coded = self.y_codec.forward(y, hyper["params"])
        step_bits = coded["step_bits"]
        rate_bits = {"z": -torch.log2(hyper["likelihoods"]).sum()}
        for i, steps in enumerate(SCALE_STEPS):
            rate_bits[f"y_s{i + 1}"] = step_bits[steps[0] - 1:steps[-1]].sum()
        return {"x_hat": self.g_s(coded["y_hat"]),
                "likelihoods": {"y": coded["likelihoods"], "z": hyper["likelihoods"]},
                "rate_bits": rate_bits,
                "rate_bits_steps": step_bits}

    # ------------------------------------------------------------------ entropy coding
    def update(self, force: bool = False) -> bool:
        """Build the rANS CDF tables (60 y scales from 0.12 to 64; one z table per channel).

        Returns False (and does nothing) when tables exist and ``force`` is not set.
        """
        if self.quantized_cdf_y.numel() and not force:
            return False
        self.y_codec.update()
        self.hyper_codec.update()
        return True

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # CDF tables change size with update(); resize ours to the incoming ones (CompressAI does the same).
        for name in TABLE_BUFFERS:
            if name in state_dict:
                incoming = state_dict[name]
                setattr(self, name, torch.empty(incoming.shape, dtype=incoming.dtype,
                                                device=self.scales_hyper.device))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> dict:
        """Encode a batch: ``{"strings": [z_strings, y_strings], "shape": z (h, w)}``, one bytes per image.

        The y string of an image holds the 11 steps in coding order in one rANS stream. The official code
        returns ``{"strings": [y_string, z_string]}`` for a batch of 1: with ``bitstream = "official"`` our
        ``[[z], [y]]`` holds the same bytes (it codes a larger batch as one stream; we code each image apart).
        """
        self._check_input(x)
        y = self.g_a(x)
        hyper = self.hyper_codec.compress(y)
        coded = self.y_codec.compress(y, hyper["params"])
        return {"strings": [hyper["strings"], coded["strings"]], "shape": hyper["shape"]}

    @torch.no_grad()
    def decompress(self, strings: list, shape) -> dict:
        """Decode what :meth:`compress` wrote; ``x_hat`` equals the eval forward output clamped to [0, 1]."""
        if len(strings) != 2 or len(strings[0]) != len(strings[1]):
            raise UserError("HPCM decompress expects strings = [z_strings, y_strings] with one entry per image")
        params = self.hyper_codec.decompress(strings[0], shape)["params"]
        y_hat = self.y_codec.decompress(strings[1], params)["y_hat"]
        return {"x_hat": self.g_s(y_hat).clamp_(0, 1)}
