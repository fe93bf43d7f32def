"""Mixed precision: autocast contexts, GradScaler, and local FP32 regions (seed 003 ``--local_fp32``).

A local FP32 region is a module whose forward runs with autocast disabled and float32 inputs, so that
numerically fragile operations (entropy models, normalisations, exp/log) never run in fp16/bf16.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch import nn

from common.errors import UserError

LOCAL_FP32_MODES = ("none", "entropy", "entropy+decoder", "all_normexp", "custom")

# Class-name fragments per mode. Matching by name keeps our own blocks (GDNishLite, HPCM's GGM coder)
# and users' custom blocks covered without importing them here.
_ENTROPY = ("EntropyBottleneck", "GaussianConditional", "EntropyModel", "GGM", "LatentCodec")
_SOFTMAX = ("Softmax", "LogSoftmax")
_NORMEXP = ("GDN", "Norm", "Softmax", "LogSoftmax", "Sigmoid", "Softplus", "ELU", "GELU", "SiLU", "Tanh")


def amp_dtype(name: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[name]


def autocast(device: torch.device, enabled: bool, dtype: torch.dtype):
    """Autocast for the model forward; a no-op context when disabled."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _float32_args(value):
    if torch.is_tensor(value) and value.is_floating_point() and value.dtype != torch.float32:
        return value.float()
    if isinstance(value, (list, tuple)):
        return type(value)(_float32_args(v) for v in value)
    if isinstance(value, dict):
        return {k: _float32_args(v) for k, v in value.items()}
    return value


def _fp32_forward(forward, device_type: str):
    @functools.wraps(forward)
    def wrapped(*args, **kwargs):
        with torch.autocast(device_type=device_type, enabled=False):
            return forward(*_float32_args(args), **_float32_args(kwargs))

    wrapped.__local_fp32__ = True
    return wrapped


def _decoder_prefixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(name + "." for name in ("g_s", "h_s") if hasattr(model, name))


def select_local_fp32_modules(model: nn.Module, mode: str, custom: str = "") -> list[str]:
    """Names of the modules that ``mode`` runs in FP32."""
    if mode not in LOCAL_FP32_MODES:
        raise UserError(f"--local_fp32 must be one of {', '.join(LOCAL_FP32_MODES)}, got {mode!r}")
    if mode == "none":
        return []
    if mode == "custom":
        fragments = tuple(part.strip() for part in custom.split(",") if part.strip())
        if not fragments:
            raise UserError("--local_fp32 custom needs --local_fp32_custom with class names, e.g. "
                            "\"EntropyBottleneck,Softmax\"")
    elif mode == "entropy":
        fragments = _ENTROPY
    elif mode == "all_normexp":
        fragments = _ENTROPY + _NORMEXP
    else:  # entropy+decoder: entropy models, softmaxes, and the decoder's normalisations
        fragments = _ENTROPY + _SOFTMAX
    decoder = _decoder_prefixes(model)
    selected = []
    for name, module in model.named_modules():
        if not name:
            continue
        cls = type(module).__name__
        in_decoder_norm = mode == "entropy+decoder" and name.startswith(decoder) and (
            "GDN" in cls or "Norm" in cls)
        if any(fragment in cls for fragment in fragments) or in_decoder_norm:
            selected.append(name)
    if mode == "custom" and not selected:
        raise UserError(f"--local_fp32_custom {custom!r} matches no module class of this model; give fragments of "
                        "its class names, e.g. \"EntropyBottleneck,Softmax\"")
    # Children of an FP32 module already run in FP32.
    return [n for n in selected if not any(n.startswith(p + ".") for p in selected if p != n)]


def apply_local_fp32(model: nn.Module, mode: str, custom: str, device_type: str) -> list[str]:
    """Make the selected modules run in FP32 under autocast; returns their names."""
    names = select_local_fp32_modules(model, mode, custom)
    modules = dict(model.named_modules())
    for name in names:
        module = modules[name]
        if not getattr(module.forward, "__local_fp32__", False):
            module.forward = _fp32_forward(module.forward, device_type)
    return names
