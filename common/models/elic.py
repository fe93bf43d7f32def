"""ELIC (He et al., CVPR 2022) as compressai's ``Elic2022Official``, with a bitstream that decodes to the eval forward.

compressai's own ``compress``/``decompress`` run the checkerboard entropy-parameter network on half-width
(unembedded) tensors, while its eval forward runs it on full-size ones. The 1x1 convolutions then round
differently, a mean can move by an ulp, a residual near .5 rounds the other way, and the decoded image differs
from the forward's (up to 0.53 on a trained model). Here both coding directions repeat the forward's exact
operations: for each channel group, the anchor parameters from zero spatial context, the anchors' y_hat, the
spatial context from them, the non-anchor parameters, every network on the full-size tensors. Only the symbol
coding itself works on the gathered anchor or non-anchor positions. So the decoded image equals the eval
forward output bit for bit, as for our HPCM. The bitstreams are therefore not those of compressai's
``Elic2022Official.compress`` (the symbols are the same up to those rounding flips; the layout per group,
anchors then non-anchors, is the same).
"""
from __future__ import annotations

import torch
from compressai.models import Elic2022Official
from torch import Tensor

from common.models import register_model

# ELIC's only published size; compressai has no ELIC weights in its zoo.
ELIC_N, ELIC_M = 192, 320


class ELIC(Elic2022Official):
    """compressai's ELIC whose compress/decompress decode to exactly the eval forward's reconstruction."""

    forward_multiple = 64
    eval_pad_multiple = 64

    def _groups(self):
        codec = self.latent_codec["y"]
        return codec, [codec.latent_codec[f"y{k}"] for k in range(len(codec.groups))]

    @staticmethod
    def _anchor_params(checkerboard, side_params: Tensor, y_like: Tensor) -> tuple[Tensor, Tensor]:
        zero_ctx = checkerboard._y_ctx_zero(y_like)
        params = checkerboard.entropy_parameters(checkerboard.merge(zero_ctx, side_params))
        return checkerboard.latent_codec["y"]._chunk(params)  # (scales, means), whatever the chunk order

    def _code_group(self, checkerboard, side_params: Tensor, y: Tensor | None, strings=None, shape=None):
        """Encode (``y`` given) or decode (``strings`` given) one channel group; returns (y_hat, strings)."""
        gaussian = checkerboard.latent_codec["y"].gaussian_conditional
        like = y if y is not None else side_params.new_zeros(shape)
        y_hat_steps, written = [], []
        y_hat_anchors = None
        for index, step in enumerate(("anchor", "non_anchor")):
            if step == "anchor":
                scales, means = self._anchor_params(checkerboard, side_params, like)
            else:
                ctx = checkerboard.context_prediction(y_hat_anchors)
                params = checkerboard.entropy_parameters(checkerboard.merge(ctx, side_params))
                scales, means = checkerboard.latent_codec["y"]._chunk(params)
            part = 0 if step == "anchor" else 1
            means_i, scales_i = checkerboard.unembed(means)[part], checkerboard.unembed(scales)[part]
            indexes = gaussian.build_indexes(scales_i)
            if y is not None:
                step_strings = gaussian.compress(checkerboard.unembed(y)[part], indexes, means_i)
                written.append(step_strings)
            else:
                step_strings = strings[index]
            decoded = gaussian.decompress(step_strings, indexes, means=means_i)
            halves = torch.zeros_like(checkerboard.unembed(means))
            halves[part] = decoded
            y_hat_steps.append(checkerboard.embed(halves))
            if step == "anchor":
                y_hat_anchors = y_hat_steps[0]
        return y_hat_steps[0] + y_hat_steps[1], written

    def _code_y(self, params: Tensor, y: Tensor | None, strings=None, shape=None):
        codec, checkerboards = self._groups()
        groups = codec.groups
        y_parts = torch.split(y, groups, dim=1) if y is not None else [None] * len(groups)
        y_hat_, all_strings = [], []
        for k, checkerboard in enumerate(checkerboards):
            side = codec._get_ctx_params(k, params, y_hat_)
            group_shape = None if shape is None else (shape[0], groups[k], *shape[2:])
            y_hat_k, written = self._code_group(checkerboard, side, y_parts[k],
                                                None if strings is None else strings[2 * k:2 * k + 2], group_shape)
            y_hat_.append(y_hat_k)
            all_strings.extend(written)
        return torch.cat(y_hat_, dim=1), all_strings

    @torch.no_grad()
    def compress(self, x: Tensor) -> dict:
        y = self.g_a(x)
        hyper = self.latent_codec["hyper"]
        z = hyper.h_a(y)
        z_strings = hyper.entropy_bottleneck.compress(z)
        z_hat = hyper.entropy_bottleneck.decompress(z_strings, z.shape[-2:])
        _, y_strings = self._code_y(hyper.h_s(z_hat), y)
        return {"strings": [*y_strings, z_strings], "shape": {"z": tuple(z.shape[-2:]), "y": tuple(y.shape)}}

    @torch.no_grad()
    def decompress(self, strings: list, shape: dict) -> dict:
        *y_strings, z_strings = strings
        hyper = self.latent_codec["hyper"]
        z_hat = hyper.entropy_bottleneck.decompress(z_strings, shape["z"])
        y_hat, _ = self._code_y(hyper.h_s(z_hat), None, y_strings, (len(z_strings), *shape["y"][1:]))
        return {"x_hat": self.g_s(y_hat).clamp_(0, 1)}


def _from_state_dict(state_dict: dict) -> ELIC:
    """The ELIC whose N is that of ``state_dict`` (M is always 320), with its weights."""
    return ELIC.from_state_dict(state_dict)


@register_model("elic2022-official", from_state_dict=_from_state_dict)
def build_elic(n: int = ELIC_N) -> ELIC:
    """ELIC (N=192, M=320 as published; a smaller N for tests), freshly initialised; no published weights."""
    return ELIC(N=n, M=ELIC_M)
