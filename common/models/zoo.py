"""compressai zoo architectures in our registry: sizes per quality, published weights on disk, state-dict facts.

One :class:`ZooArchitecture` per compressai model family supplies what its registry entry states: the (N, M)
of each published quality, where torch.hub keeps the published weights (never downloaded here), the quality
and the model that a state dict's channel counts decide, and compressai's key-name conversion.
"""
from __future__ import annotations

from pathlib import Path

import torch
from compressai.zoo import load_state_dict as zoo_convert_state_dict
from compressai.zoo.image import cfgs, model_urls
from torch import nn

from common.errors import UserError
from common.models import register_model

QUALITIES = tuple(range(1, 9))


class ZooArchitecture:
    """A compressai model class at the zoo's qualities, with the multiples our engine and evaluation need.

    ``channel_keys`` name the two analysis convolutions whose output channels are N and M.
    """

    def __init__(self, arch: str, model_class: type[nn.Module], forward_multiple: int, eval_pad_multiple: int,
                 channel_keys: tuple[str, str] = ("g_a.0.weight", "g_a.6.weight")):
        self.arch, self.model_class = arch, model_class
        self.forward_multiple, self.eval_pad_multiple = forward_multiple, eval_pad_multiple
        self.channel_keys = channel_keys

    def check_quality(self, quality: int) -> None:
        if quality not in QUALITIES:
            raise UserError(f"--quality must be an integer from 1 to 8 for {self.arch}, got {quality}")

    def channels(self, quality: int) -> tuple[int, int]:
        """(N, M) of the zoo model at ``quality``."""
        self.check_quality(quality)
        n, m = cfgs[self.arch][quality]
        return n, m

    def quality_of(self, n: int, m: int) -> int | None:
        """The zoo quality whose (N, M) are these channel counts (the smallest, as several share theirs)."""
        return next((q for q in QUALITIES if cfgs[self.arch][q] == (n, m)), None)

    def quality_of_state_dict(self, state_dict: dict) -> int | None:
        """The quality of a state dict, from the output channels of its first and last analysis convolutions."""
        first, last = (state_dict.get(key) for key in self.channel_keys)
        return None if first is None or last is None else self.quality_of(first.shape[0], last.shape[0])

    def pretrained_path(self, quality: int, metric: str = "mse") -> Path:
        """Where torch.hub (and so compressai's zoo) keeps the published weights for this quality."""
        self.check_quality(quality)
        if metric not in ("mse", "ms-ssim"):
            raise UserError(f"metric must be mse or ms-ssim, got {metric!r}")
        url = model_urls[self.arch][metric][quality]
        return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]

    def annotate(self, model: nn.Module) -> nn.Module:
        model.forward_multiple = self.forward_multiple
        model.eval_pad_multiple = self.eval_pad_multiple
        return model

    def new(self, n: int, m: int) -> nn.Module:
        return self.annotate(self.model_class(n, m))

    def from_state_dict(self, state_dict: dict) -> nn.Module:
        """The model whose N and M are those of ``state_dict`` (our key names), with its weights."""
        try:
            return self.annotate(self.model_class.from_state_dict(state_dict))
        except (KeyError, RuntimeError) as exc:
            raise UserError(f"not a {self.arch} state dict ({str(exc).splitlines()[0]})") from exc

    def weight_facts(self) -> dict:
        """Registry facts for any size of this architecture."""
        return dict(from_state_dict=self.from_state_dict, convert_state_dict=zoo_convert_state_dict)

    def register(self) -> None:
        """Register the architecture under its zoo name, at the zoo's qualities, with its published weights."""
        def build(quality: int = 1) -> nn.Module:
            return self.new(*self.channels(quality))

        build.__doc__ = f"{self.arch} at ``quality`` (1-8), freshly initialised."
        register_model(self.arch, published_weights=self.pretrained_path, quality_of=self.quality_of_state_dict,
                       **self.weight_facts())(build)

    def register_size(self, suffix: str, sizes: tuple[int, int], summary: str) -> None:
        """Register ``ARCH-suffix``: the same layers at channel counts of no published quality."""
        def build() -> nn.Module:
            return self.new(*sizes)

        build.__doc__ = f"{self.arch} with N={sizes[0]}, M={sizes[1]}: {summary}"
        register_model(f"{self.arch}-{suffix}", **self.weight_facts())(build)
