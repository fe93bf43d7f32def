"""Cautious Adam: Adam whose update is masked where it disagrees in sign with the current gradient.

Per parameter tensor, at step t (torch-Adam conventions, decoupled weight decay as in AdamW)::

    p   <- p * (1 - lr * weight_decay)                       # not masked
    m   <- beta1 * m + (1 - beta1) * g
    v   <- beta2 * v + (1 - beta2) * g^2
    phi  = 1[m * g > 0]                                      # strict: m*g == 0 is masked too
    s    = min(1 / max(mean(phi), 1e-3), max_mask_scale)     # mean over this tensor only
    p   <- p - lr / (1 - beta1^t) * (m * phi * s) / (sqrt(v) / sqrt(1 - beta2^t) + eps)

The stored moments are never masked. ``cautious=False`` gives plain Adam (AdamW when
``weight_decay > 0``); ``max_mask_scale=None`` leaves the rescaling uncapped (official C-AdamW).
Moments are kept in FP32 whatever the parameter dtype.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import Tensor


# Lower bound on the mask mean in the rescaling (official C-AdamW/timm value).
_MIN_MASK_MEAN = 1e-3


def _check_hyperparameters(lr: float, betas, eps: float, weight_decay: float, max_mask_scale) -> None:
    if not lr >= 0.0:
        raise ValueError(f"learning rate must be >= 0, got {lr}")
    if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
        raise ValueError(f"betas must be two numbers in [0, 1), got {tuple(betas)}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if max_mask_scale is not None and not max_mask_scale >= 1.0:
        raise ValueError(f"max_mask_scale must be >= 1 or None (uncapped), got {max_mask_scale}")


class CautiousAdam(torch.optim.Optimizer):
    """Adam with the Cautious sign mask (see the module docstring for the exact update)."""

    def __init__(self, params: Iterable, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, cautious: bool = True, max_mask_scale: float | None = 10.0):
        _check_hyperparameters(lr, betas, eps, weight_decay, max_mask_scale)
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        cautious=bool(cautious), max_mask_scale=max_mask_scale)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """Take one (cautious) Adam step on every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    self._update_parameter(param, group)
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's loader, then the moments restored in FP32 (torch casts them to the parameter dtype)."""
        super().load_state_dict(state_dict)
        saved_ids = [index for group in state_dict["param_groups"] for index in group["params"]]
        params = [param for group in self.param_groups for param in group["params"]]
        for index, param in zip(saved_ids, params):
            saved = state_dict["state"].get(index)
            if saved is not None and param.dtype != torch.float32:
                for key in ("exp_avg", "exp_avg_sq"):
                    self.state[param][key] = saved[key].to(device=param.device, dtype=torch.float32, copy=True)

    def _update_parameter(self, param: Tensor, group: dict) -> None:
        grad = param.grad
        if grad.is_sparse:
            raise ValueError("CautiousAdam/Balanced do not support sparse gradients; use dense parameters")
        lr, (beta1, beta2) = group["lr"], group["betas"]
        state = self.state[param]
        if not state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(param, dtype=torch.float32, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(param, dtype=torch.float32,
                                                   memory_format=torch.preserve_format)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        state["step"] += 1
        step = state["step"]

        # Low-precision parameters are updated through an FP32 copy (moments are FP32 already).
        master = param if param.dtype == torch.float32 else param.float()
        grad = grad if grad.dtype == torch.float32 else grad.float()

        if group["weight_decay"] != 0:
            master.mul_(1 - lr * group["weight_decay"])
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step_size = lr / (1 - beta1 ** step)
        denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** step)).add_(group["eps"])

        if group["cautious"]:
            mask = torch.mul(exp_avg, grad).gt_(0)  # 1.0 where update and gradient agree, in one buffer
            # Tensor-valued scale: no host synchronisation per parameter on accelerators.
            scale = mask.mean().clamp_(min=_MIN_MASK_MEAN).reciprocal_()
            if group["max_mask_scale"] is not None:
                scale.clamp_(max=group["max_mask_scale"])
            update = mask.mul_(exp_avg).mul_(scale)
        else:
            update = exp_avg
        master.addcdiv_(update, denom, value=-step_size)
        if master is not param:
            param.copy_(master)
