"""Model registry: ``build(name, **kwargs)`` returns a CompressAI-style ``nn.Module``.

Every registered model has ``forward(x) -> {"x_hat", "likelihoods": {...}}``, ``update(force=...)``,
``compress(x)`` and ``decompress(strings, shape)``, and two attributes used by the engine and evaluation:

- ``forward_multiple``: H and W given to ``forward`` must be multiples of it;
- ``eval_pad_multiple``: evaluation pads images to a multiple of it (the published protocol).
"""
from __future__ import annotations

import inspect
from typing import Callable

from torch import nn

from common.errors import UserError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    """Decorator that adds a model builder to the registry under ``name``."""

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorator


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def accepts(name: str, argument: str) -> bool:
    """Whether the builder of model ``name`` takes keyword ``argument`` (e.g. ``quality``)."""
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(available_models())}")
    return argument in inspect.signature(_REGISTRY[name]).parameters


def build(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; unknown names raise a one-line :class:`UserError`."""
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(available_models())}")
    return _REGISTRY[name](**kwargs)


# Registration happens on import of each model module.
from common.models import bmshj2018  # noqa: E402,F401
from common.models import hpcm  # noqa: E402,F401
