"""Task-loss bookkeeping shared by the FAMO (Solution 1) and QP (Solution 2) optimizers.

Errors are ``ValueError``s: :class:`TaskLossError` for task losses that cannot be balanced (wrong count or
shape, at or below ``min_losses``), raised during a step, so a training loop can report them as the user's
configuration problem rather than as a bug.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from balanced_rd.cautious import CautiousAdam

class TaskLossError(ValueError):
    """Task losses the optimizer cannot balance: wrong number or shape, or not above their ``min_losses``."""


# Added to loss - min_loss before the log (the FAMO reference value).
LOG_EPS = 1e-8


def check_n_tasks(n_tasks: int) -> int:
    if int(n_tasks) != n_tasks or n_tasks < 2:
        raise ValueError(f"n_tasks must be an integer >= 2 (balancing needs at least two tasks), got {n_tasks}")
    return int(n_tasks)


def task_names_or_default(task_names: Sequence[str] | None, n_tasks: int) -> list[str]:
    if task_names is None:
        return [f"task{i}" for i in range(n_tasks)]
    names = [str(name) for name in task_names]
    if len(names) != n_tasks:
        raise ValueError(f"got {len(names)} task names for n_tasks={n_tasks}; give one name per task")
    return names


def per_task_vector(value: float | Sequence[float] | Tensor, n_tasks: int, name: str) -> Tensor:
    """A float32 vector of length ``n_tasks`` from a scalar (broadcast) or one value per task."""
    vector = torch.as_tensor(value, dtype=torch.float32).detach().clone().reshape(-1)
    if vector.numel() == 1:
        vector = vector.expand(n_tasks).clone()
    if vector.numel() != n_tasks:
        raise ValueError(f"{name} has {vector.numel()} values but there are {n_tasks} tasks; "
                        f"give one value or one per task")
    if not torch.isfinite(vector).all():
        raise ValueError(f"{name} must be finite, got {vector.tolist()}")
    return vector


def stack_losses(task_losses: Sequence[Tensor | float] | Tensor, n_tasks: int) -> Tensor:
    """The K task losses as one 1-D tensor (autograd graph kept); wrong count -> TaskLossError."""
    if isinstance(task_losses, Tensor):
        losses = task_losses.reshape(-1) if task_losses.dim() <= 1 else None
    else:
        items = [loss if isinstance(loss, Tensor) else torch.as_tensor(float(loss)) for loss in task_losses]
        if any(item.numel() != 1 for item in items):
            raise TaskLossError("each task loss must be a scalar; reduce per-sample losses (e.g. .mean()) first")
        device = items[0].device if items else None
        losses = torch.stack([item.reshape(()).to(device) for item in items]) if items else torch.zeros(0)
    if losses is None or losses.numel() != n_tasks:
        got = task_losses.shape if isinstance(task_losses, Tensor) else len(task_losses)
        raise TaskLossError(f"expected {n_tasks} task losses (n_tasks={n_tasks}), got {got}")
    return losses


def check_above_min(values: Tensor, min_losses: Tensor, names: Sequence[str]) -> None:
    """Raise a TaskLossError naming the first finite task loss that is <= its min_loss (log would fail)."""
    bad = torch.isfinite(values) & (values <= min_losses)
    if bad.any():
        index = int(bad.nonzero()[0, 0])
        raise TaskLossError(
            f"task loss '{names[index]}' = {values[index].item():.6g} is <= its min_loss "
            f"{min_losses[index].item():.6g}; balancing takes log(loss - min_loss): lower --min_losses "
            f"(the LIC default is -1) or check that loss")


def arithmetic_dtype(losses: Tensor) -> torch.dtype:
    """The precision of the task-weight arithmetic: the wider of FP32 and the losses' own dtype."""
    return torch.promote_types(losses.dtype, torch.float32)


def shifted_log(values: Tensor, min_losses: Tensor) -> Tensor:
    """log(loss - min_loss + eps), elementwise, in the dtype of ``values`` (FP32 or FP64)."""
    return (values - min_losses + LOG_EPS).log()


def task_log_record(names: Sequence[str], weights: Tensor, coefficients: Tensor | None) -> dict[str, float]:
    """``{"weight_<task>": w_i}`` plus ``{"coef_<task>": a_i}`` when coefficients exist: one CSV log row."""
    record = {f"weight_{name}": value for name, value in zip(names, weights.tolist())}
    if coefficients is not None:
        record.update({f"coef_{name}": value for name, value in zip(names, coefficients.tolist())})
    return record


class TaskWeightedOptimizer(CautiousAdam):
    """Cautious Adam over K task losses: the task-weight state that :class:`Balanced` and :class:`BalancedQP` share.

    Subclasses set ``self._weights`` (the current task weights) and ``self._last_coefficients`` (the
    coefficients the raw task gradients got in the last weighted backward).
    """

    def __init__(self, params, lr: float, *, n_tasks: int, min_losses: float | Sequence[float],
                 task_names: Sequence[str] | None, **adam_options):
        super().__init__(params, lr, **adam_options)
        self.n_tasks = check_n_tasks(n_tasks)
        self.task_names = task_names_or_default(task_names, self.n_tasks)
        self.min_losses = per_task_vector(min_losses, self.n_tasks, "min_losses")
        self._last_coefficients: Tensor | None = None

    @property
    def task_weights(self) -> Tensor:
        """The current task weights (a detached copy)."""
        raise NotImplementedError

    @property
    def loss_coefficients(self) -> Tensor | None:
        """a_i of the last weighted backward: the coefficients the raw task gradients actually got."""
        return self._last_coefficients

    def task_weight_dict(self) -> dict[str, float]:
        """``{"weight_<task>": w_i}`` (plus ``"coef_<task>": a_i`` once a loss was weighted), for CSV logs."""
        return task_log_record(self.task_names, self.task_weights, self._last_coefficients)
