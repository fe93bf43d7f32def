"""Deterministic HPCM weights that anyone can recreate from the official key names alone.

This is the recipe of the published HPCM-Base parity vector (``shared/reference/README.md``): every
parameter is drawn from a generator seeded by the CRC32 of its key. Tests and benchmarks use it to get
weights whose latents carry many bits (default initialisation codes to almost nothing).
"""
from __future__ import annotations

import math
import zlib

import torch
from torch import nn

# Official initial values of the parameters that are neither conv weights nor biases.
_INITIAL_VALUES = {"means_hyper": 0.0, "scales_hyper": 1.0}


@torch.no_grad()
def fill_parity_weights(model: nn.Module, salt: int = 0) -> nn.Module:
    """Overwrite every parameter of ``model`` in place (buffers untouched) and return it.

    Conv weights: U(-1, 1) * 1.5 / sqrt(fan_in); biases: U(-1, 1) * 0.01; other parameters: their
    official initial value + 0.1 * U(-1, 1). U is drawn in float64 with seed ``crc32(key) ^ salt``.
    """
    for key, param in model.named_parameters():
        generator = torch.Generator().manual_seed(zlib.crc32(key.encode()) ^ salt)
        r = torch.rand(param.shape, generator=generator, dtype=torch.float64) * 2 - 1
        if key.endswith(".weight") and param.dim() >= 2:
            value = r * 1.5 / math.sqrt(param[0].numel())
        elif key.endswith(".bias"):
            value = r * 0.01
        else:
            value = _INITIAL_VALUES.get(key, 1.0) + 0.1 * r  # adaptive_params_list.* start at 1
        param.copy_(value)
    return model
