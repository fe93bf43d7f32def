"""The hooks of :meth:`common.train.engine.Trainer.fit`."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from common.train.engine import Trainer


class Callback:
    """Hooks into :meth:`Trainer.fit` (override what you need); tests, benchmarks and tools use them instead of
    subclassing the trainer. ``trainer.progress.step`` counts the steps done so far."""

    def on_step_start(self, trainer: "Trainer") -> None:
        """Before each optimizer step."""

    def on_step_end(self, trainer: "Trainer", row: dict[str, float]) -> None:
        """After each step, with the logged terms of that step."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int, val: dict[str, float] | None, seconds: float) -> None:
        """After the end-of-epoch work (schedules, validation when due, checkpoints), which took ``seconds``."""

    def on_validation(self, trainer: "Trainer", val: dict[str, float]) -> None:
        """After each validation has been logged (and the best checkpoints written)."""
