"""HPCM (ICCV 2025) models: ``hpcm-base``, ``hpcm-large`` (official state-dict layout) and ``hpcm-tiny``."""
from __future__ import annotations

from common.checkpoint import load_state_dict
from common.errors import UserError
from common.models import register_model
from common.models.hpcm.model import BASE, HPCM, LARGE, TINY, HPCMConfig

__all__ = ["HPCM", "HPCMConfig", "BASE", "LARGE", "TINY", "build_hpcm"]


def build_hpcm(name: str, config: HPCMConfig, checkpoint: str | None, trust_checkpoint: bool,
               official_s2_hyper_quirk: bool) -> HPCM:
    """Build an HPCM variant; ``checkpoint`` is an official state dict or one of our checkpoints."""
    model = HPCM(config, official_s2_hyper_quirk=official_s2_hyper_quirk)
    if checkpoint:
        state = load_state_dict(checkpoint, trust=trust_checkpoint)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            detail = " ".join(str(exc).split())[:300]
            raise UserError(f"{checkpoint} does not fit {name} ({detail})") from exc
    return model


@register_model("hpcm-base")
def build_hpcm_base(checkpoint: str | None = None, trust_checkpoint: bool = False,
                    official_s2_hyper_quirk: bool = True) -> HPCM:
    """HPCM-Base (68.5M parameters); the official scale-2 hyper merge is kept by default."""
    return build_hpcm("hpcm-base", BASE, checkpoint, trust_checkpoint, official_s2_hyper_quirk)


@register_model("hpcm-large")
def build_hpcm_large(checkpoint: str | None = None, trust_checkpoint: bool = False,
                     official_s2_hyper_quirk: bool = True) -> HPCM:
    """HPCM-Large (89.7M parameters); the official scale-2 hyper merge is kept by default."""
    return build_hpcm("hpcm-large", LARGE, checkpoint, trust_checkpoint, official_s2_hyper_quirk)


@register_model("hpcm-tiny")
def build_hpcm_tiny(checkpoint: str | None = None, trust_checkpoint: bool = False,
                    official_s2_hyper_quirk: bool = False) -> HPCM:
    """A 0.4M-parameter HPCM for CPU tests (y = x/8, 64x64 inputs); aligned scale-2 merge by default."""
    return build_hpcm("hpcm-tiny", TINY, checkpoint, trust_checkpoint, official_s2_hyper_quirk)
