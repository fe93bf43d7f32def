"""HPCM's two latent codecs, in the manner of ``compressai.latent_codecs``.

- :class:`HyperpriorCodec` codes z = h_a(y) with a per-channel GGM around ``means_hyper`` and returns the
  hyper parameters h_s(z_hat);
- :class:`ProgressiveContextCodec` codes y in 11 steps over three scales (hierarchical progressive context
  mining), each step's GGM means and scales coming from the hyper parameters and the steps coded before.

Each has ``forward`` (likelihoods for training and evaluation), ``compress``, ``decompress`` and ``update``
(the rANS tables). They are views over the :class:`~common.models.hpcm.model.HPCM` module that owns the
parameters and buffers under the official state-dict names; the codecs are not submodules, so they add
no keys and official checkpoints load unchanged.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from compressai.ans import BufferedRansEncoder, RansDecoder

from common.errors import UserError
from common.models.hpcm import schedule
from common.models.hpcm.ggm import ggm_scale_table
from common.models.hpcm.schedule import S1_PHASE, S2_PHASE, SCALE_STEPS, pack, unpack

# The codecs read the HPCM module that owns them (its layers, tables and ``bitstream`` choice); typed as
# ``nn.Module`` so that this module, which the model imports, does not import the model back.
# A step's coder: (step 1..11, scales, means, mask) on the step's grid -> integer residuals (0 off-mask).
StepCoder = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
# Latent sizes whose step maps are kept (evaluation sees a few image sizes over and over).
SCHEDULE_CACHE_SIZE = 4


def _noisy(values: torch.Tensor) -> torch.Tensor:
    # Drawn in logical (N, C, H, W) order whatever the layout of ``values``: a channels_last model then
    # trains on the same noise as an NCHW one from the same seed.
    noise = torch.empty(values.shape, dtype=values.dtype, device=values.device).uniform_(-0.5, 0.5)
    return values + noise


def _official_tables(model: nn.Module) -> dict:
    """The official code's y and z tables and y scale levels, rebuilt when ``scales_hyper`` changes.

    They are not buffers: the model's buffers keep the toolkit's (more accurate) tables, and official
    checkpoints load with ``strict=True`` unchanged.
    """
    key = (model.scales_hyper.data_ptr(), model.scales_hyper._version, model.scales_hyper.device)
    cached = model.__dict__.get("_official_tables_cache")
    if cached is None or cached[0] != key:
        ggm = model.entropy_estimation
        levels = ggm_scale_table(dtype=torch.float32)
        tables = {"y": ggm.build_official_tables(levels), "z": ggm.build_official_tables(model.scales_hyper.flatten()),
                  "levels": levels.to(model.scales_hyper.device)}
        cached = model.__dict__["_official_tables_cache"] = (key, tables)
    return cached[1]


def _tables(model: nn.Module, kind: str) -> tuple[list, list, list]:
    if model.bitstream == "official":
        return tuple(t.tolist() for t in _official_tables(model)[kind])
    if not model.quantized_cdf_y.numel() or not model.quantized_cdf_z.numel():
        raise UserError("HPCM has no CDF tables: call model.update() after loading weights and before "
                        "compress/decompress")
    cdf = getattr(model, f"quantized_cdf_{kind}").int().tolist()
    return cdf, getattr(model, f"cdf_length_{kind}").int().tolist(), getattr(model, f"offset_{kind}").int().tolist()


class HyperpriorCodec:
    """z = h_a(y), coded with one GGM per channel (mean ``means_hyper``, scale ``scales_hyper``)."""

    def __init__(self, model: nn.Module):
        self.model = model

    def forward(self, y: torch.Tensor) -> dict:
        """``{"params": h_s(z_hat), "likelihoods": z likelihoods}`` (uniform noise in training)."""
        model, ggm = self.model, self.model.entropy_estimation
        z_res = model.h_a(y) - model.means_hyper
        z_q = ggm.quantize(z_res, model.training)
        likelihoods = ggm.likelihood(_noisy(z_res) if model.training else z_q, model.scales_hyper)
        return {"params": model.h_s(z_q + model.means_hyper), "likelihoods": likelihoods}

    def _indexes(self, z_shape: tuple[int, ...]) -> list[int]:
        n, h, w = z_shape
        return torch.arange(n).repeat_interleave(h * w).tolist()

    def compress(self, y: torch.Tensor) -> dict:
        """``{"strings": one bytes per image, "shape": z (h, w), "params"}``."""
        model = self.model
        tables = _tables(model, "z")
        z = model.h_a(y)
        z_q = torch.round(z - model.means_hyper)
        indexes = self._indexes(z.shape[1:])
        strings = []
        for image in z_q:
            encoder = BufferedRansEncoder()
            encoder.encode_with_indexes(image.flatten().int().tolist(), indexes, *tables)
            strings.append(encoder.flush())
        return {"strings": strings, "shape": tuple(z.shape[2:]), "params": model.h_s(z_q + model.means_hyper)}

    def decompress(self, strings: list, shape) -> dict:
        model = self.model
        tables = _tables(model, "z")
        z_shape = (model.config.hyper_channels, int(shape[0]), int(shape[1]))
        indexes = self._indexes(z_shape)
        param = model.scales_hyper
        z_q = []
        for string in strings:
            decoder = RansDecoder()
            decoder.set_stream(string)
            z_q.append(torch.tensor(decoder.decode_stream(indexes, *tables), dtype=param.dtype))
        z_q = torch.stack(z_q).view(-1, *z_shape).to(param.device)
        return {"params": model.h_s(z_q + model.means_hyper)}

    def update(self) -> None:
        """One rANS table per channel, from ``scales_hyper``."""
        model = self.model
        cdf, length, offset = model.entropy_estimation.build_tables(model.scales_hyper.detach().flatten())
        device = model.scales_hyper.device
        model.quantized_cdf_z, model.cdf_length_z, model.offset_z = cdf.to(device), length.to(device), offset.to(device)


class ProgressiveContextCodec:
    """y coded in 11 steps over three scales; see ``shared/spec/hpcm_architecture.md`` for the schedule.

    ``official_s2_hyper_quirk`` (the model's flag) reproduces the official, misaligned scale-2 hyper merge.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self._schedules: dict = {}

    # ------------------------------------------------------------------ schedule helpers
    def _schedule(self, height: int, width: int, device: torch.device) -> dict:
        """Step maps of the three grids and the scale-2 hyper-merge index, cached per latent size.

        Tensors made under ``torch.inference_mode()`` cannot be saved for backward, so inference and
        ordinary mode keep separate entries (a model evaluated that way can then still be trained).
        """
        key = (height, width, str(device), torch.is_inference_mode_enabled())
        if key not in self._schedules:
            m = self.model.config.latent_channels
            full = schedule.step_map(m, height, width, device)
            s2 = pack(full, m, S2_PHASE)
            entry = {"full": full, "s2": s2, "s1": pack(s2, m, S1_PHASE)}
            if self.model.official_s2_hyper_quirk:
                index, mask = schedule.quirk_s2_hyper_index(m, height // 2, width // 2, device)
                entry["quirk_index"], entry["quirk_mask"] = index.repeat(2, 1), mask.repeat(2, 1)
            if len(self._schedules) >= SCHEDULE_CACHE_SIZE:
                self._schedules.pop(next(iter(self._schedules)))
            self._schedules[key] = entry
        return self._schedules[key]

    def _hyper_at_s2(self, hyper_s2: torch.Tensor, sched: dict) -> torch.Tensor:
        """Hyper params on the scale-2 positions that scale 1 did not code (zeros on scale-1 slots)."""
        if not self.model.official_s2_hyper_quirk:
            return hyper_s2 * (sched["s2"] > 2).repeat(1, 2, 1, 1).to(hyper_s2.dtype)
        b, c, h, w = hyper_s2.shape
        index = sched["quirk_index"].expand(b, -1, -1)
        moved = hyper_s2.reshape(b, c, h * w).gather(2, index) * sched["quirk_mask"].to(hyper_s2.dtype)
        return moved.view(b, c, h, w)

    def _grids(self, y: torch.Tensor) -> dict[int, torch.Tensor]:
        m = self.model.config.latent_channels
        y_s2 = pack(y, m, S2_PHASE)
        return {1: pack(y_s2, m, S1_PHASE), 2: y_s2, 3: y}

    @staticmethod
    def _scale_of(step: int) -> int:
        return next(i + 1 for i, steps in enumerate(SCALE_STEPS) if step in steps)

    # ------------------------------------------------------------------ the 11 steps
    def _code(self, hyper: torch.Tensor, code_step: StepCoder) -> dict[str, torch.Tensor]:
        """Run the 11 coding steps; ``code_step`` quantises (or decodes) each step's residuals.

        Returns full-resolution ``y_hat``, integer residuals ``q`` and the ``means``/``scales`` that coded
        every element.
        """
        model = self.model
        m = model.config.latent_channels
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

        gains = model.adaptive_params_list
        # Scale 1: step 1 from the hyperprior alone, step 2 from the first context.
        context = hyper_s1
        run(1, 1, hyper_s1)
        psi = psi_of(model.y_spatial_prior_s1_s2, model.y_spatial_prior_adaptor_list_s1[0], gains[0], context)
        context = model.attn_s1(psi, context)
        run(2, 1, psi)
        # Lift to scale 2; official adaptor order within a scale is rotated by one (quirk A).
        acc = {k: unpack(v, m, S1_PHASE) for k, v in acc.items()}
        context = unpack(context, m, S1_PHASE) + self._hyper_at_s2(hyper_s2, sched)
        context = model.context_net[0](context)
        for t, step in enumerate(SCALE_STEPS[1]):
            psi = psi_of(model.y_spatial_prior_s1_s2, model.y_spatial_prior_adaptor_list_s2[(t - 1) % 3],
                         gains[1 + t], context)
            context = model.attn_s2(psi, context)
            run(step, 2, psi)
        # Lift to scale 3 (full resolution).
        acc = {k: unpack(v, m, S2_PHASE) for k, v in acc.items()}
        context = unpack(context, m, S2_PHASE) + hyper * (sched["full"] >= 6).repeat(1, 2, 1, 1).to(hyper.dtype)
        context = model.context_net[1](context)
        for t, step in enumerate(SCALE_STEPS[2]):
            psi = psi_of(model.y_spatial_prior_s3, model.y_spatial_prior_adaptor_list_s3[(t - 1) % 6],
                         gains[4 + t], context)
            if step != schedule.NUM_STEPS:  # the last step's context is never used
                context = model.attn_s3(psi, context)
            run(step, 3, psi)
        return acc

    def _step_bits(self, y_likelihoods: torch.Tensor) -> torch.Tensor:
        """Bits of y per coding step (tensor of 11), summed over the batch."""
        sched = self._schedule(y_likelihoods.shape[2], y_likelihoods.shape[3], y_likelihoods.device)
        bits = -torch.log2(y_likelihoods).sum(dim=0)
        return bits.new_zeros(schedule.NUM_STEPS).index_add(0, sched["full"][0].flatten().long() - 1, bits.flatten())

    # ------------------------------------------------------------------ the codec interface
    def forward(self, y: torch.Tensor, params: torch.Tensor) -> dict:
        """``{"y_hat", "likelihoods", "step_bits"}``: quantised y, its likelihoods, and its bits per step."""
        model, ggm = self.model, self.model.entropy_estimation
        grids = self._grids(y)

        def quantize_step(step, scales, means, mask):
            residual = (grids[self._scale_of(step)] - means * mask) * mask
            return ggm.quantize(residual, model.training)

        coded = self._code(params, quantize_step)
        values = _noisy(y - coded["means"]) if model.training else coded["q"]
        likelihoods = ggm.likelihood(values, coded["scales"])
        return {"y_hat": coded["y_hat"], "likelihoods": likelihoods, "step_bits": self._step_bits(likelihoods)}

    def _indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """CDF table of each scale: the number of table levels (but the last) strictly below it."""
        model = self.model
        levels = _official_tables(model)["levels"] if model.bitstream == "official" else model.scale_table
        return torch.searchsorted(levels[:-1].to(scales.dtype).contiguous(), scales.contiguous())

    # The order of a step's symbols in the stream. Toolkit: raster order over (channel, row, column) of the
    # positions the step codes. Official: the scale's grid folded over its 2, 4 or 8 channel blocks (each
    # position is coded by exactly one block at each step), then raster order over the folded tensor.
    def _gather(self, values: torch.Tensor, step: int, mask: torch.Tensor) -> torch.Tensor:
        """(B, n) symbols of ``step`` in stream order from a grid tensor."""
        if self.model.bitstream == "official":
            b, c, h, w = values.shape
            blocks = 2 ** self._scale_of(step)
            return (values * mask).view(b, blocks, c // blocks, h, w).sum(1).flatten(1)
        return values[:, mask[0].bool()]

    def _scatter(self, symbols: torch.Tensor, step: int, mask: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_gather`: (B, n) symbols back on the grid, zeros where ``step`` codes nothing."""
        b, (c, h, w) = symbols.shape[0], mask.shape[1:]
        if self.model.bitstream == "official":
            blocks = 2 ** self._scale_of(step)
            return symbols.view(b, c // blocks, h, w).repeat(1, blocks, 1, 1) * mask
        grid = mask.new_zeros(b, c, h, w)
        grid[:, mask[0].bool()] = symbols
        return grid

    def compress(self, y: torch.Tensor, params: torch.Tensor) -> dict:
        """``{"strings": one bytes per image (the 11 steps in coding order, one rANS stream), "y_hat"}``."""
        tables, ggm = _tables(self.model, "y"), self.model.entropy_estimation
        grids = self._grids(y)
        encoders = [BufferedRansEncoder() for _ in range(y.shape[0])]

        def encode_step(step, scales, means, mask):
            q = ggm.quantize((grids[self._scale_of(step)] - means * mask) * mask, training=False)
            symbols = self._gather(q, step, mask).int()
            indexes = self._indexes(self._gather(scales, step, mask)).int()
            for encoder, sym, idx in zip(encoders, symbols, indexes):
                encoder.encode_with_indexes(sym.tolist(), idx.tolist(), *tables)
            return q

        y_hat = self._code(params, encode_step)["y_hat"]
        return {"strings": [encoder.flush() for encoder in encoders], "y_hat": y_hat}

    def decompress(self, strings: list, params: torch.Tensor) -> dict:
        tables = _tables(self.model, "y")
        decoders = []
        for string in strings:
            decoders.append(RansDecoder())
            decoders[-1].set_stream(string)

        def decode_step(step, scales, means, mask):
            indexes = self._indexes(self._gather(scales, step, mask)).int()
            symbols = [decoder.decode_stream(idx.tolist(), *tables) for decoder, idx in zip(decoders, indexes)]
            return self._scatter(torch.tensor(symbols, dtype=scales.dtype, device=scales.device), step, mask)

        return {"y_hat": self._code(params, decode_step)["y_hat"]}

    def update(self) -> None:
        """60 rANS tables for the y scales from 0.12 to 64."""
        model = self.model
        device = model.scales_hyper.device
        table = ggm_scale_table()
        cdf, length, offset = model.entropy_estimation.build_tables(table)
        model.scale_table = table.to(device, model.scales_hyper.dtype)
        model.quantized_cdf_y, model.cdf_length_y, model.offset_y = cdf.to(device), length.to(device), offset.to(device)
