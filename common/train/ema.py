"""An exponential moving average of the model weights (``--ema_decay``), as the Balanced R-D reference keeps.

``w_ema <- d * w_ema + (1 - d) * w`` after every optimizer step (the first step copies ``w``). When it is on, the
average is the run's model: it is validated, judged for convergence, written to every checkpoint as
``ema_state_dict`` and loaded by ``common.assembly.load_model``; the raw weights stay in ``state_dict``
for resuming. Averaging the iterates removes most of the noise that a constant learning rate leaves in the
weights, so the average reaches the quality that a learning-rate decay would give without waiting for it.

Only parameters are averaged; buffers (entropy-coder tables, GDN constants) are copied from the live model
before the average is used, and the entropy coder's tables are rebuilt for it at the end of a run.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from common.errors import UserError


class WeightEMA:
    """EMA of ``model``'s parameters; ``module`` is a model with the averaged weights."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise UserError(f"--ema_decay must be in (0, 1) (0 turns the average off), got {decay}")
        self.decay = decay
        self._average = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self._average.update_parameters(model)

    @torch.no_grad()
    def synced(self, model: nn.Module) -> nn.Module:
        """The averaged model with ``model``'s current buffers."""
        for mine, theirs in zip(self.module.buffers(), model.buffers()):
            if mine.shape != theirs.shape:  # e.g. entropy-coder tables rebuilt with another size
                mine.resize_(theirs.shape)
            mine.copy_(theirs)
        return self.module

    @property
    def module(self) -> nn.Module:
        return self._average.module

    @property
    def updates(self) -> int:
        return int(self._average.n_averaged)

    def load(self, state_dict: dict, updates: int) -> None:
        self.module.load_state_dict(state_dict)
        self._average.n_averaged.fill_(updates)
