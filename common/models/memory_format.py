"""The memory format a model's convolutions run in (``--memory_format`` of ``common.train`` and ``common.eval``).

On a CPU, oneDNN computes convolutions in a channels-last layout: an NCHW model pays a reorder of activations
into and out of that layout around its convolutions, forwards and backwards. A model whose weights are
channels_last makes its convolutions return channels_last activations, and those reorders go away. Whether
that wins depends on the model (``python -m benchmarks.memory_format`` times both layouts side by side): on a
busy machine it did for HPCM-Base, not for bmshj2018 (GDN, transposed convolutions) at one thread. So ``auto``
takes the layout a model declares in its ``cpu_memory_format`` attribute on the CPU, PyTorch's default where
a model declares none, and PyTorch's default on other devices, where this project has not measured
channels_last.

The format changes the order of floating-point sums inside a convolution, not what is computed: outputs agree
to float32 rounding, and a model compresses and decompresses in one format, so its own decoding stays exact.
"""
from __future__ import annotations

import torch
from torch import nn

MEMORY_FORMATS = ("auto", "channels_last", "contiguous")


def resolve(choice: str, device: torch.device, model: nn.Module | None = None) -> torch.memory_format:
    """The ``torch.memory_format`` that ``choice`` (one of :data:`MEMORY_FORMATS`) means for ``model`` on ``device``."""
    if choice not in MEMORY_FORMATS:
        raise ValueError(f"memory format must be one of {', '.join(MEMORY_FORMATS)}, got {choice!r}")
    if choice == "auto":
        on_cpu = torch.device(device).type == "cpu"
        return getattr(model, "cpu_memory_format", torch.contiguous_format) if on_cpu else torch.contiguous_format
    return torch.channels_last if choice == "channels_last" else torch.contiguous_format


def apply(model: nn.Module, choice: str, device: torch.device) -> nn.Module:
    """Put ``model``'s 4-d weights (and buffers) in the format ``choice`` resolves to on ``device``."""
    return model.to(memory_format=resolve(choice, device, model))
