"""The hooks of :meth:`common.train.engine.Trainer.fit`, and what a hook may read of the running trainer.

A hook is handed the trainer as a :class:`TrainerState`: the engine's ``Trainer`` is one, and this module does not
import the engine, so plug-ins (``common.train.finetune``'s early stopping, tests, benchmarks) depend on this
interface rather than on the engine that calls them.
"""
from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn


class TrainerState(Protocol):
    """What the engine's ``Trainer`` offers its hooks (it has more; these are the parts hooks rely on)."""

    cfg: Any  # the run's TrainConfig
    model: nn.Module
    optimizer: torch.optim.Optimizer
    progress: Any  # .step (steps done), .epoch, .batch_in_epoch
    total_steps: int
    val_log: Any  # MetricsLog of the validations: .rows()
    train_log: Any  # MetricsLog of the steps
    main: bool  # the process that writes files and logs (rank 0)
    dist: Any  # the distributed setting (common.train.distributed)

    def epoch_index(self) -> int:
        """The epoch in progress (0-based)."""


class Callback:
    """Hooks into :meth:`Trainer.fit` (override what you need); tests, benchmarks and tools use them instead of
    subclassing the trainer. ``trainer.progress.step`` counts the steps done so far."""

    def on_step_start(self, trainer: TrainerState) -> None:
        """Before each optimizer step."""

    def on_step_end(self, trainer: TrainerState, row: dict[str, float]) -> None:
        """After each step, with the logged terms of that step."""

    def on_epoch_end(self, trainer: TrainerState, epoch: int, val: dict[str, float] | None, seconds: float) -> None:
        """After the end-of-epoch work (schedules, validation when due, checkpoints), which took ``seconds``."""

    def on_validation(self, trainer: TrainerState, val: dict[str, float]) -> None:
        """After each validation has been logged (and the best checkpoints written)."""
