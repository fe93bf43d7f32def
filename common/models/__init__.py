"""Model registry: ``build(name, **kwargs)`` returns a CompressAI-style ``nn.Module``.

Every registered model has ``forward(x) -> {"x_hat", "likelihoods": {...}}``, ``update(force=...)``,
``compress(x)`` and ``decompress(strings, shape)``, and two attributes used by the engine and evaluation:

- ``forward_multiple``: H and W given to ``forward`` must be multiples of it;
- ``eval_pad_multiple``: evaluation pads images to a multiple of it (the published protocol).

Builders only build architectures (no file I/O). Each :class:`ModelEntry` also states the facts that
loaders need about the model: where its published weights are, how a state dict tells its quality level,
how a state dict decides its size, how foreign key names convert. Loading weights is :mod:`common.assembly`'s,
which imports this registry (never the other way round).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from common.errors import UserError

@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and the facts loaders need."""

    name: str
    build: Callable[..., nn.Module]
    # Where the published weights of (quality, metric) are in the local torch.hub cache (never downloaded).
    published_weights: Callable[[int, str], Path] | None = None
    # The quality level a state dict of this model was built at (None: no quality matches), for models with one.
    quality_of: Callable[[dict], int | None] | None = None
    # The model that fits a state dict, for models whose size the weights decide.
    from_state_dict: Callable[[dict], nn.Module] | None = None
    # Key names of other releases (e.g. compressai's zoo) converted to this model's.
    convert_state_dict: Callable[[dict], dict] | None = None

    @property
    def has_quality(self) -> bool:
        return "quality" in inspect.signature(self.build).parameters


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, **facts):
    """Decorator that adds a model builder to the registry under ``name``, with its facts (see ModelEntry)."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = ModelEntry(name, builder, **facts)
        return builder

    return decorator


def entry(name: str) -> ModelEntry:
    """The registry entry of model ``name``; unknown names raise a one-line :class:`UserError`."""
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(available_models())}")
    return _REGISTRY[name]


def is_aux_parameter(name: str) -> bool:
    """EntropyBottleneck ``quantiles``: trained by the auxiliary loss only, never by the main optimizer."""
    return name.endswith(".quantiles") or name == "quantiles"


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name`` with architecture ``kwargs`` and fresh weights (with weights:
    :func:`common.assembly.build_with_weights`). Unknown names raise a one-line :class:`UserError`."""
    return entry(name).build(**kwargs)


# Registration happens on import of each model module.
from common.models import bmshj2018  # noqa: E402,F401
from common.models import hpcm  # noqa: E402,F401
from common.models import elic  # noqa: E402,F401
from common.models import mbt2018  # noqa: E402,F401
