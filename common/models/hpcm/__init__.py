"""HPCM (ICCV 2025) models: ``hpcm-base``, ``hpcm-large`` (official state-dict layout) and ``hpcm-tiny``."""
from __future__ import annotations

import torch

from common.models import register_model
from common.models.hpcm.model import BASE, HPCM, LARGE, TINY, HPCMConfig

__all__ = ["HPCM", "HPCMConfig", "BASE", "LARGE", "TINY"]


def _channels_last_on_cpu(model: HPCM) -> HPCM:
    """Declare channels_last for ``--memory_format auto`` on the CPU (``common.models.memory_format``).

    On a busy machine HPCM-Base's training step ran faster in it (``benchmarks/memory_format.py`` times it;
    an idle-machine figure is still to come, README). hpcm-tiny declares nothing: at one thread its training
    step was no faster, and it keeps the NCHW arithmetic that the committed hpcm-tiny results were made with.
    """
    model.cpu_memory_format = torch.channels_last
    return model


@register_model("hpcm-base")
def build_hpcm_base(official_s2_hyper_quirk: bool = True) -> HPCM:
    """HPCM-Base (68.5M parameters); the official scale-2 hyper merge is kept by default."""
    return _channels_last_on_cpu(HPCM(BASE, official_s2_hyper_quirk=official_s2_hyper_quirk))


@register_model("hpcm-large")
def build_hpcm_large(official_s2_hyper_quirk: bool = True) -> HPCM:
    """HPCM-Large (89.7M parameters); the official scale-2 hyper merge is kept by default."""
    return _channels_last_on_cpu(HPCM(LARGE, official_s2_hyper_quirk=official_s2_hyper_quirk))


@register_model("hpcm-tiny")
def build_hpcm_tiny(official_s2_hyper_quirk: bool = False) -> HPCM:
    """A 0.4M-parameter HPCM for CPU tests (y = x/8, 64x64 inputs); aligned scale-2 merge by default."""
    return HPCM(TINY, official_s2_hyper_quirk=official_s2_hyper_quirk)
