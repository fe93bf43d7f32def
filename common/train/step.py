"""One complete training step of the engine, for every optimizer (also used by the benchmarks).

The step owns what every update shares (zero grads, autocast, GradScaler, clipping, DDP unwrapping); the
optimizer's registry entry (:mod:`common.train.optimizers`) names its update rule, which decides how the K
task losses become a step:

* ``sum``: any torch optimizer minimises the sum of the task losses;
* ``famo``: :class:`balanced_rd.Balanced` backpropagates its FAMO loss, steps, and moves its task weights
  along the loss trajectory (the losses of the same batch after the step);
* ``qp``: :class:`balanced_rd.BalancedQP` forms the QP-weighted direction from per-task gradients.

Exact Balanced step = forward + FAMO loss + backward + clip + Cautious Adam step + one no-grad forward of
the same batch + a K-element logit update: the re-forward is the only added model work.

Cheaper delta estimates (documented approximations of the exact algorithm):

* ``weight_update_every=k``: re-forward and update the logits only on every k-th step
  (``step_index % k == 0``); the weights then lag by up to k - 1 steps. Cost about forward / k.
* ``delta_subset=n``: re-forward only the first n samples of the batch; delta compares their losses
  before and after the step, so the logit gradient is noisier (fewer samples). When ``task_losses_fn``
  returns per-sample losses (shape [batch]) the before-losses come from the training forward and the cost
  is about forward * n / batch; with scalar losses they need one more no-grad forward of the n samples
  before the step (cost about 2 * forward * n / batch).

``share_noise=True`` replays the random-number state of the first forward in the re-forward, so a model
with additive-noise quantisation sees the same noise both times and delta measures the parameter change,
not a new noise draw (full-batch re-forward only).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from common.errors import UserError

TaskLossesFn = Callable[[nn.Module, Any], Sequence[Tensor]]


@dataclass
class StepResult:
    """What one step did: the batch-mean task losses before the step (detached), and which updates ran."""

    losses: Tensor
    model_step_taken: bool
    weights_updated: bool


def _first_tensor(batch) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise UserError("batch must be a tensor or a list/tuple of tensors (first dimension = samples)")


def _head(batch, count: int):
    """The first ``count`` samples of a tensor batch or of each tensor in a list/tuple batch."""
    if isinstance(batch, Tensor):
        return batch[:count]
    return type(batch)(item[:count] for item in batch)


def _batch_means(losses: Sequence[Tensor]) -> list[Tensor]:
    return [loss if loss.dim() == 0 else loss.mean() for loss in losses]


def _autocast(device_type: str, amp_dtype: torch.dtype | None):
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=amp_dtype)


def _rng_state(device: torch.device) -> tuple:
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda_state


@contextlib.contextmanager
def _replayed_rng(device: torch.device, state: tuple):
    """Run the body with the saved RNG state; the generators continue afterwards as if it never ran."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], device)
        yield


UPDATE_RULES = ("sum", "famo", "qp")


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch, task_losses_fn: TaskLossesFn, *,
                  update: str | None = None, clip_max_norm: float | None = None,
                  scaler: torch.amp.GradScaler | None = None, amp_dtype: torch.dtype | None = None,
                  step_index: int = 0, weight_update_every: int = 1, delta_subset: int = 0,
                  share_noise: bool = False) -> StepResult:
    """Zero grads, forward, backward, clip, step, and (``famo``) the task-weight update; see the module docstring.

    ``task_losses_fn(model, batch)`` returns the K task losses, scalars or per-sample vectors (averaged
    here). ``update`` is one of :data:`UPDATE_RULES` (default: the registry's rule for the optimizer's type).
    With ``scaler`` the loss is scaled, gradients are unscaled before clipping, and a skipped step
    (inf/NaN gradients) leaves the task weights untouched. Clipping covers the optimizer's parameters only.
    """
    if update is None:
        from common.train.optimizers import update_rule

        update = update_rule(optimizer)
    if update not in UPDATE_RULES:
        raise UserError(f"unknown update rule {update!r}; choose one of: {', '.join(UPDATE_RULES)}")
    if weight_update_every < 1 or delta_subset < 0:
        raise UserError(f"weight_update_every must be >= 1 and delta_subset >= 0, got "
                        f"{weight_update_every} and {delta_subset}")
    if share_noise and delta_subset:
        raise UserError("share_noise replays the noise of the full batch; it cannot be combined with delta_subset")
    if scaler is not None and update == "qp":
        raise UserError("BalancedQP does not support GradScaler; train it in FP32 or with bf16 autocast")
    if update == "qp" and isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module  # BalancedQP averages its per-task gradients itself; DDP's hooks would not fire
    device = _first_tensor(batch).device
    params = [param for group in optimizer.param_groups for param in group["params"]]
    is_balanced = update == "famo"
    tracks_changes = update == "qp" and getattr(optimizer, "track_changes", False)
    # The re-forward of a Balanced step (with share_noise) or of a tracked QP step sees the same noise.
    rng_before = _rng_state(device) if (is_balanced and share_noise) or tracks_changes else None

    optimizer.zero_grad(set_to_none=True)
    with _autocast(device.type, amp_dtype):
        raw_losses = list(task_losses_fn(model, batch))
    losses = _batch_means(raw_losses)
    if update == "qp":
        optimizer.backward(losses)
    else:
        loss = optimizer.weighted_loss(losses) if is_balanced else torch.stack([l.float() for l in losses]).sum()
        (scaler.scale(loss) if scaler is not None else loss).backward()
    # Fixed task weights (Balanced with adapt_weights off) need no re-forward.
    update_weights = (is_balanced and getattr(optimizer, "adapt_weights", True)
                      and step_index % weight_update_every == 0)
    eval_batch, reference = batch, None
    if update_weights and delta_subset:
        count = min(delta_subset, _first_tensor(batch).shape[0])
        eval_batch = _head(batch, count)
        if all(loss.dim() == 1 for loss in raw_losses):
            reference = [loss.detach()[:count].mean() for loss in raw_losses]
        else:  # scalar losses: evaluate the subset at the parameters before the step
            with torch.no_grad(), _autocast(device.type, amp_dtype):
                reference = _batch_means(task_losses_fn(model, eval_batch))
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_max_norm:
        torch.nn.utils.clip_grad_norm_(params, clip_max_norm)
    stepped = True
    if scaler is not None:
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        stepped = scaler.get_scale() >= scale  # the scale only shrinks when the step was skipped
    else:
        optimizer.step()
    detached = torch.stack([l.detach().float() for l in losses])
    if tracks_changes:
        with torch.no_grad(), _replayed_rng(device, rng_before), _autocast(device.type, amp_dtype):
            optimizer.record_losses_after_step(_batch_means(task_losses_fn(model, batch)))
    if not is_balanced:
        return StepResult(detached, stepped, False)

    taken = optimizer.model_step_taken
    if not taken or not update_weights:
        optimizer.update_task_weights(skip=True)
        return StepResult(detached, taken, False)
    replay = _replayed_rng(device, rng_before) if rng_before is not None else contextlib.nullcontext()
    with torch.no_grad(), replay, _autocast(device.type, amp_dtype):
        new_losses = _batch_means(task_losses_fn(model, eval_batch))
    updated = optimizer.update_task_weights(new_losses, reference_losses=reference)
    return StepResult(detached, True, updated)
