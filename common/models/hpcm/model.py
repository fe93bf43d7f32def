"""HPCM (Li et al., ICCV 2025): hierarchical progressive context mining with a GGM entropy model.

Re-implemented from the description in ``shared/spec/hpcm_architecture.md``. Parameter and buffer names
equal the official ones, so official checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from compressai.ans import BufferedRansEncoder, RansDecoder
from torch import nn

from common.errors import UserError
from common.models.hpcm import schedule
from common.models.hpcm.ggm import GGMEntropyModel, ggm_scale_table
from common.models.hpcm.layers import (CrossAttentionCell, PConvRB, Sequential, SpatialPrior, conv1x1,
                                       conv2x2_down, conv4x4_down, deconv2x2_up, deconv4x4_up)
from common.models.hpcm.schedule import S1_PHASE, S2_PHASE, SCALE_STEPS, pack, unpack

# Buffers that stay empty until update(); official checkpoints store them with shape 0.
TABLE_BUFFERS = ("scale_table", "quantized_cdf_z", "cdf_length_z", "offset_z",
                 "quantized_cdf_y", "cdf_length_y", "offset_y")

# A step's coder: (step 1..11, scales, means, mask) on the step's grid -> integer residuals (0 off-mask).
# Latent sizes whose step maps are kept (evaluation sees a few image sizes over and over).
SCHEDULE_CACHE_SIZE = 4

StepCoder = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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
    """

    def __init__(self, config: HPCMConfig = BASE, official_s2_hyper_quirk: bool = True):
        super().__init__()
        cfg = self.config = config
        m, n = cfg.latent_channels, cfg.hyper_channels
        if m % schedule.NUM_GROUPS or (2 * m) % cfg.num_heads:
            raise ValueError("latent channels must divide into 8 groups and 2M into the attention heads")
        self.official_s2_hyper_quirk = official_s2_hyper_quirk
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
        self._schedules: dict = {}

    # ------------------------------------------------------------------ schedule helpers
    def _schedule(self, height: int, width: int, device: torch.device) -> dict:
        """Step maps of the three grids and the scale-2 hyper-merge index, cached per latent size."""
        key = (height, width, str(device))
        if key not in self._schedules:
            m = self.config.latent_channels
            full = schedule.step_map(m, height, width, device)
            s2 = pack(full, m, S2_PHASE)
            entry = {"full": full, "s2": s2, "s1": pack(s2, m, S1_PHASE)}
            if self.official_s2_hyper_quirk:
                index, mask = schedule.quirk_s2_hyper_index(m, height // 2, width // 2, device)
                entry["quirk_index"], entry["quirk_mask"] = index.repeat(2, 1), mask.repeat(2, 1)
            if len(self._schedules) >= SCHEDULE_CACHE_SIZE:
                self._schedules.pop(next(iter(self._schedules)))
            self._schedules[key] = entry
        return self._schedules[key]

    def _hyper_at_s2(self, hyper_s2: torch.Tensor, sched: dict) -> torch.Tensor:
        """Hyper params on the scale-2 positions that scale 1 did not code (zeros on scale-1 slots)."""
        if not self.official_s2_hyper_quirk:
            return hyper_s2 * (sched["s2"] > 2).repeat(1, 2, 1, 1).to(hyper_s2.dtype)
        b, c, h, w = hyper_s2.shape
        index = sched["quirk_index"].expand(b, -1, -1)
        moved = hyper_s2.reshape(b, c, h * w).gather(2, index) * sched["quirk_mask"].to(hyper_s2.dtype)
        return moved.view(b, c, h, w)

    # ------------------------------------------------------------------ hierarchical coding of y
    def _code_latent(self, hyper: torch.Tensor, code_step: StepCoder) -> dict[str, torch.Tensor]:
        """Run the 11 coding steps; ``code_step`` quantises (or decodes) each step's residuals.

        Returns full-resolution ``y_hat``, integer residuals ``q`` and the ``means``/``scales`` that coded
        every element.
        """
        m = self.config.latent_channels
        sched = self._schedule(hyper.shape[2], hyper.shape[3], hyper.device)
        hyper_s2 = pack(hyper, m, S2_PHASE)
        hyper_s1 = pack(hyper_s2, m, S1_PHASE)
        grids = {1: sched["s1"], 2: sched["s2"], 3: sched["full"]}
        acc = dict.fromkeys(("y_hat", "q", "means", "scales"), hyper_s1.new_zeros(
            hyper_s1.shape[0], m, *hyper_s1.shape[2:]))

        def run(step: int, scale: int, psi: torch.Tensor) -> None:
            scales, means = psi.chunk(2, dim=1)
            mask = (grids[scale] == step).to(psi.dtype)
            q = code_step(step, scales, means, mask)
            acc["y_hat"] = acc["y_hat"] + q + means * mask
            acc["q"] = acc["q"] + q
            acc["means"] = acc["means"] + means * mask
            acc["scales"] = acc["scales"] + scales * mask

        def psi_of(prior, adaptor, gain, context):
            return prior(adaptor(torch.cat([context, acc["y_hat"]], dim=1)), gain)

        gains = self.adaptive_params_list
        # Scale 1: step 1 from the hyperprior alone, step 2 from the first context.
        context = hyper_s1
        run(1, 1, hyper_s1)
        psi = psi_of(self.y_spatial_prior_s1_s2, self.y_spatial_prior_adaptor_list_s1[0], gains[0], context)
        context = self.attn_s1(psi, context)
        run(2, 1, psi)
        # Lift to scale 2; official adaptor order within a scale is rotated by one (quirk A).
        acc = {k: unpack(v, m, S1_PHASE) for k, v in acc.items()}
        context = unpack(context, m, S1_PHASE) + self._hyper_at_s2(hyper_s2, sched)
        context = self.context_net[0](context)
        for t, step in enumerate(SCALE_STEPS[1]):
            psi = psi_of(self.y_spatial_prior_s1_s2, self.y_spatial_prior_adaptor_list_s2[(t - 1) % 3],
                         gains[1 + t], context)
            context = self.attn_s2(psi, context)
            run(step, 2, psi)
        # Lift to scale 3 (full resolution).
        acc = {k: unpack(v, m, S2_PHASE) for k, v in acc.items()}
        context = unpack(context, m, S2_PHASE) + hyper * (sched["full"] >= 6).repeat(1, 2, 1, 1).to(hyper.dtype)
        context = self.context_net[1](context)
        for t, step in enumerate(SCALE_STEPS[2]):
            psi = psi_of(self.y_spatial_prior_s3, self.y_spatial_prior_adaptor_list_s3[(t - 1) % 6],
                         gains[4 + t], context)
            if step != schedule.NUM_STEPS:  # the last step's context is never used
                context = self.attn_s3(psi, context)
            run(step, 3, psi)
        return acc

    def _latent_grids(self, y: torch.Tensor) -> dict[int, torch.Tensor]:
        m = self.config.latent_channels
        y_s2 = pack(y, m, S2_PHASE)
        return {1: pack(y_s2, m, S1_PHASE), 2: y_s2, 3: y}

    @staticmethod
    def _scale_of(step: int) -> int:
        return next(i + 1 for i, steps in enumerate(SCALE_STEPS) if step in steps)

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
        ggm = self.entropy_estimation
        y = self.g_a(x)
        z = self.h_a(y)

        z_res = z - self.means_hyper
        z_q = ggm.quantize(z_res, self.training)
        z_likelihoods = ggm.likelihood(self._noisy(z_res) if self.training else z_q, self.scales_hyper)
        hyper = self.h_s(z_q + self.means_hyper)

        y_grids = self._latent_grids(y)

        def quantize_step(step, scales, means, mask):
            residual = (y_grids[self._scale_of(step)] - means * mask) * mask
            return ggm.quantize(residual, self.training)

        coded = self._code_latent(hyper, quantize_step)
        y_values = self._noisy(y - coded["means"]) if self.training else coded["q"]
        y_likelihoods = ggm.likelihood(y_values, coded["scales"])

        step_bits = self._step_bits(y_likelihoods)
        rate_bits = {"z": -torch.log2(z_likelihoods).sum()}
        for i, steps in enumerate(SCALE_STEPS):
            rate_bits[f"y_s{i + 1}"] = step_bits[steps[0] - 1:steps[-1]].sum()
        return {"x_hat": self.g_s(coded["y_hat"]),
                "likelihoods": {"y": y_likelihoods, "z": z_likelihoods},
                "rate_bits": rate_bits,
                "rate_bits_steps": step_bits}

    @staticmethod
    def _noisy(values: torch.Tensor) -> torch.Tensor:
        return values + torch.empty_like(values).uniform_(-0.5, 0.5)

    def _step_bits(self, y_likelihoods: torch.Tensor) -> torch.Tensor:
        """Bits of y per coding step (tensor of 11), summed over the batch."""
        sched = self._schedule(y_likelihoods.shape[2], y_likelihoods.shape[3], y_likelihoods.device)
        bits = -torch.log2(y_likelihoods).sum(dim=0)
        return bits.new_zeros(schedule.NUM_STEPS).index_add(0, sched["full"][0].flatten().long() - 1, bits.flatten())

    # ------------------------------------------------------------------ entropy coding
    def update(self, force: bool = False) -> bool:
        """Build the rANS CDF tables (60 y scales from 0.12 to 64; one z table per channel).

        Returns False (and does nothing) when tables exist and ``force`` is not set.
        """
        if self.quantized_cdf_y.numel() and not force:
            return False
        ggm, device = self.entropy_estimation, self.scales_hyper.device
        table = ggm_scale_table()
        cdf_y, length_y, offset_y = ggm.build_tables(table)
        cdf_z, length_z, offset_z = ggm.build_tables(self.scales_hyper.detach().flatten())
        self.scale_table = table.to(device, self.scales_hyper.dtype)
        for name, value in (("quantized_cdf_y", cdf_y), ("cdf_length_y", length_y), ("offset_y", offset_y),
                            ("quantized_cdf_z", cdf_z), ("cdf_length_z", length_z), ("offset_z", offset_z)):
            setattr(self, name, value.to(device))
        return True

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        # CDF tables change size with update(); resize ours to the incoming ones (CompressAI does the same).
        for name in TABLE_BUFFERS:
            if name in state_dict:
                incoming = state_dict[name]
                setattr(self, name, torch.empty(incoming.shape, dtype=incoming.dtype,
                                                device=self.scales_hyper.device))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _tables(self, kind: str) -> tuple[list, list, list]:
        if not self.quantized_cdf_y.numel() or not self.quantized_cdf_z.numel():
            raise UserError("HPCM has no CDF tables: call model.update() after loading weights and before "
                            "compress/decompress")
        cdf = getattr(self, f"quantized_cdf_{kind}").int().tolist()
        return cdf, getattr(self, f"cdf_length_{kind}").int().tolist(), getattr(self, f"offset_{kind}").int().tolist()

    def _y_indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """CDF table of each scale: the number of table levels (but the last) strictly below it."""
        levels = self.scale_table[:-1].to(scales.dtype).contiguous()
        return torch.searchsorted(levels, scales.contiguous())

    def _z_indexes(self, z_shape: tuple[int, ...]) -> list[int]:
        n, h, w = z_shape
        return torch.arange(n).repeat_interleave(h * w).tolist()

    @torch.no_grad()
    def compress(self, x: torch.Tensor) -> dict:
        """Encode a batch: ``{"strings": [z_strings, y_strings], "shape": z (h, w)}``, one bytes per image.

        The y string of an image holds the 11 steps in coding order in one rANS stream. (The official code
        returns ``[y_string, z_string]`` for batch 1; streams are valid but not byte-identical to its.)
        """
        self._check_input(x)
        z_tables, y_tables = self._tables("z"), self._tables("y")
        ggm = self.entropy_estimation
        y = self.g_a(x)
        z = self.h_a(y)
        z_q = torch.round(z - self.means_hyper)
        z_indexes = self._z_indexes(z.shape[1:])
        z_strings = []
        for image in z_q:
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(image.flatten().int().tolist(), z_indexes, *z_tables)
            z_strings.append(encoder.flush())

        y_grids = self._latent_grids(y)
        encoders = [BufferedRansEncoder() for _ in range(x.shape[0])]

        def encode_step(step, scales, means, mask):
            q = ggm.quantize((y_grids[self._scale_of(step)] - means * mask) * mask, training=False)
            where = mask[0].bool()
            symbols, indexes = q[:, where].int(), self._y_indexes(scales[:, where]).int()
            for encoder, sym, idx in zip(encoders, symbols, indexes):
                encoder.encode_with_indexes(sym.tolist(), idx.tolist(), *y_tables)
            return q

        self._code_latent(self.h_s(z_q + self.means_hyper), encode_step)
        return {"strings": [z_strings, [encoder.flush() for encoder in encoders]], "shape": tuple(z.shape[2:])}

    @torch.no_grad()
    def decompress(self, strings: list, shape) -> dict:
        """Decode what :meth:`compress` wrote; ``x_hat`` equals the eval forward output clamped to [0, 1]."""
        if len(strings) != 2 or len(strings[0]) != len(strings[1]):
            raise UserError("HPCM decompress expects strings = [z_strings, y_strings] with one entry per image")
        z_tables, y_tables = self._tables("z"), self._tables("y")
        n = self.config.hyper_channels
        z_shape = (n, int(shape[0]), int(shape[1]))
        z_indexes = self._z_indexes(z_shape)
        param = self.scales_hyper
        z_q = []
        for string in strings[0]:
            decoder = RansDecoder()
            decoder.set_stream(string)
            z_q.append(torch.tensor(decoder.decode_stream(z_indexes, *z_tables), dtype=param.dtype))
        z_q = torch.stack(z_q).view(-1, *z_shape).to(param.device)

        decoders = []
        for string in strings[1]:
            decoders.append(RansDecoder())
            decoders[-1].set_stream(string)

        def decode_step(step, scales, means, mask):
            where = mask[0].bool()
            indexes = self._y_indexes(scales[:, where]).int()
            q = torch.zeros_like(scales)
            for b, (decoder, idx) in enumerate(zip(decoders, indexes)):
                values = decoder.decode_stream(idx.tolist(), *y_tables)
                q[b, where] = torch.tensor(values, dtype=q.dtype, device=q.device)
            return q

        coded = self._code_latent(self.h_s(z_q + self.means_hyper), decode_step)
        return {"x_hat": self.g_s(coded["y_hat"]).clamp_(0, 1)}
