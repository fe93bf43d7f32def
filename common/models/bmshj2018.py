"""bmshj2018-factorized (Ballé et al. 2018) through compressai, with offline weight loading."""
from __future__ import annotations

from pathlib import Path

import torch
from compressai.models import FactorizedPrior
from compressai.zoo import load_state_dict as zoo_convert_state_dict
from compressai.zoo.image import cfgs, model_urls

from common.errors import UserError
from common.models import register_model

ARCH = "bmshj2018-factorized"
QUALITIES = tuple(range(1, 9))
# Channel counts of the tiny variant: the same layers and code paths at a fraction of the cost, for tests and
# CPU smoke runs. It has no published weights.
TINY_CHANNELS = (16, 24)
# CPU study sizes (PHASES_OVERVIEW.md): "small", half of quality 1's channels (N=128, M=192) and a quarter of its
# MACs, is the demo's model (`make pretrain` trains its base); "mini", a quarter of the channels, trains from
# scratch to convergence within the budget of the from-scratch study.
SMALL_CHANNELS = (64, 96)
MINI_CHANNELS = (32, 48)


def channels(quality: int) -> tuple[int, int]:
    """(N, M) of the zoo model at ``quality``."""
    check_quality(quality)
    n, m = cfgs[ARCH][quality]
    return n, m


def quality_of(n: int, m: int) -> int | None:
    """The zoo quality whose (N, M) are these channel counts (the smallest, as 1-3 and 4-5 share theirs)."""
    return next((q for q in QUALITIES if cfgs[ARCH][q] == (n, m)), None)


def quality_of_state_dict(state_dict: dict) -> int | None:
    """The quality of a bmshj2018-factorized state dict, from its first and last analysis convolutions."""
    first, last = state_dict.get("g_a.0.weight"), state_dict.get("g_a.6.weight")
    if first is None or last is None:
        return None
    return quality_of(first.shape[0], last.shape[0])


def check_quality(quality: int) -> None:
    if quality not in QUALITIES:
        raise UserError(f"--quality must be an integer from 1 to 8 for {ARCH}, got {quality}")


def pretrained_path(quality: int, metric: str = "mse") -> Path:
    """Where torch.hub (and so compressai's zoo) keeps the published weights for this quality."""
    check_quality(quality)
    if metric not in ("mse", "ms-ssim"):
        raise UserError(f"metric must be mse or ms-ssim, got {metric!r}")
    url = model_urls[ARCH][metric][quality]
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _annotate(model: FactorizedPrior) -> FactorizedPrior:
    model.forward_multiple = 16
    model.eval_pad_multiple = 64
    return model


def from_state_dict(state_dict: dict) -> FactorizedPrior:
    """The FactorizedPrior whose N and M are those of ``state_dict`` (our key names), with its weights."""
    try:
        return _annotate(FactorizedPrior.from_state_dict(state_dict))
    except (KeyError, RuntimeError) as exc:
        raise UserError(f"not a {ARCH} state dict ({str(exc).splitlines()[0]})") from exc


_WEIGHT_FACTS = dict(from_state_dict=from_state_dict, convert_state_dict=zoo_convert_state_dict)


@register_model(ARCH, published_weights=pretrained_path, quality_of=quality_of_state_dict, **_WEIGHT_FACTS)
def build_bmshj2018_factorized(quality: int = 1) -> FactorizedPrior:
    """The model at ``quality`` (1–8), freshly initialised."""
    return _annotate(FactorizedPrior(*channels(quality)))


def _register_size(suffix: str, sizes: tuple[int, int], summary: str) -> None:
    def build() -> FactorizedPrior:
        return _annotate(FactorizedPrior(*sizes))

    build.__doc__ = f"bmshj2018-factorized with N={sizes[0]}, M={sizes[1]}: {summary}"
    register_model(f"{ARCH}-{suffix}", **_WEIGHT_FACTS)(build)


_register_size("tiny", TINY_CHANNELS, "the same layer structure at about 1 % of quality 1's MACs (tests)")
_register_size("small", SMALL_CHANNELS, "about a quarter of quality 1's MACs (the demo)")
_register_size("mini", MINI_CHANNELS, "about 1/16 of quality 1's MACs (the from-scratch study)")
