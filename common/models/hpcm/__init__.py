"""HPCM (ICCV 2025) models: ``hpcm-base``, ``hpcm-large`` (official state-dict layout) and ``hpcm-tiny``."""
from __future__ import annotations

from common.models import register_model
from common.models.hpcm.model import BASE, HPCM, LARGE, TINY, HPCMConfig

__all__ = ["HPCM", "HPCMConfig", "BASE", "LARGE", "TINY"]


@register_model("hpcm-base")
def build_hpcm_base(official_s2_hyper_quirk: bool = True) -> HPCM:
    """HPCM-Base (68.5M parameters); the official scale-2 hyper merge is kept by default."""
    return HPCM(BASE, official_s2_hyper_quirk=official_s2_hyper_quirk)


@register_model("hpcm-large")
def build_hpcm_large(official_s2_hyper_quirk: bool = True) -> HPCM:
    """HPCM-Large (89.7M parameters); the official scale-2 hyper merge is kept by default."""
    return HPCM(LARGE, official_s2_hyper_quirk=official_s2_hyper_quirk)


@register_model("hpcm-tiny")
def build_hpcm_tiny(official_s2_hyper_quirk: bool = False) -> HPCM:
    """A 0.4M-parameter HPCM for CPU tests (y = x/8, 64x64 inputs); aligned scale-2 merge by default."""
    return HPCM(TINY, official_s2_hyper_quirk=official_s2_hyper_quirk)
