"""Balanced R-D, Solution 1 (trajectory / FAMO weights + Cautious Adam), for K >= 2 task losses.

Notation: losses l_i, offsets m_i (``min_losses``), D_i = l_i - m_i + 1e-8, logits xi, z = softmax(xi).

* :meth:`Balanced.weighted_loss` returns the FAMO scalar  sum_i z_i log D_i / c  with c = sum_i z_i / D_i
  treated as a constant. Its gradient is the convex combination sum_i a_i grad(l_i) with
  a_i = (z_i / D_i) / sum_j (z_j / D_j).
* :meth:`Balanced.step` is a Cautious Adam step on the model parameters (``balanced_rd.cautious``).
* :meth:`Balanced.update_task_weights` takes the losses of the same batch at the new parameters,
  delta_i = log D_i(before) - log D_i(after), and does one Adam step (lr ``w_lr``, betas (0.9, 0.999),
  eps 1e-8) on xi with gradient  z * (delta - <z, delta>) + gamma * (xi - xi0)  (softmax-Jacobian product
  plus coupled L2 decay towards xi0 = 0, i.e. uniform weights, or towards ``prior_weights``). A task whose
  log loss fell less than average gains weight.

Loss arithmetic (D, log, c, delta) is done with autocast off in the wider of FP32 and the losses' dtype. The
logits, their prior, per-task gamma and their Adam state are FP32, and FP64 from the first FP64 losses on: an
FP64 problem keeps FP64 arithmetic all the way (an FP32 logit step rounds every gradient and Adam moment to FP32,
and the weights drift from the FP64 ones step by step), while FP32, FP16 and BF16 losses keep the FP32 state.
Under ``torch.distributed`` the detached loss vectors are averaged over ranks in both calls, so every rank holds
the same logits; the backpropagated form sum_i a_i l_i(local) then makes DDP's gradient averaging give exactly
the gradient of the FAMO loss of the global batch. The logits and their Adam live outside ``param_groups``, so
learning-rate schedulers never touch ``w_lr``.

Typical step (``common.train.step.training_step`` does exactly this, with AMP and the cheaper options)::

    loss = opt.weighted_loss([distortion, rate])
    loss.backward()                      # or scaler.scale(loss).backward(); scaler.unscale_(opt)
    clip_grad_norm_(params, 1.0)
    opt.step()                           # or scaler.step(opt); scaler.update()
    with torch.no_grad():
        new = task_losses(model, same_batch)
    opt.update_task_weights(new)         # no-op when the model step was skipped (GradScaler inf/NaN)
"""
from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
from torch import Tensor

from balanced_rd.distributed import all_reduce_mean
from balanced_rd.tasks import (LOG_EPS, TaskWeightedOptimizer, arithmetic_dtype, check_above_min, per_task_vector,
                               shifted_log, stack_losses)

# Adam on the logits uses torch's defaults (as the FAMO and Balanced R-D reference code do).
_LOGIT_BETAS = (0.9, 0.999)
_LOGIT_EPS = 1e-8


def logit_gradient(logits: Tensor, delta: Tensor, gamma: float | Tensor, prior: Tensor | None = None) -> Tensor:
    """J_softmax(logits)^T delta + gamma * (logits - prior), i.e. z * (delta - <z, delta>) + gamma * (xi - xi0).

    delta is centred on its maximum first (exact in floating point, and the same value mathematically
    since sum(z) = 1), so equal deltas give an exactly zero softmax term.
    """
    z = torch.softmax(logits, dim=0)
    centred = delta - delta.max()
    offset = logits if prior is None else logits - prior
    return z * (centred - (z * centred).sum()) + gamma * offset


class Balanced(TaskWeightedOptimizer):
    """Cautious Adam on the model parameters with FAMO task weighting (see the module docstring).

    Args:
        params: model parameters only (no EntropyBottleneck ``.quantiles``: they keep the aux optimizer).
        lr, betas, eps, weight_decay: Adam hyperparameters of the model step (decoupled weight decay).
        n_tasks: number of task losses K (>= 2).
        gamma: L2 decay of the logits towards the prior logits (zero, i.e. uniform weights, unless
            ``prior_weights`` is given); a float or one value per task.
        w_lr: learning rate of the Adam step on the logits.
        min_losses: offsets m_i (float or per task); the LIC reference uses -1, i.e. log(1 + l).
        cautious: sign-mask the model update (False: plain Adam/AdamW).
        max_mask_scale: cap on the mask rescaling 1/mean(mask); None = uncapped.
        task_names: names used in error messages and logs (default task0, task1, ...).
        adapt_weights: FAMO's logit update (False: the weights stay at their prior, uniform by default, so the
            step minimises the fixed-weight log losses; the ablation that separates FAMO from the log losses).
        prior_weights: optional task weights to start from and decay towards (normalised). Each task's
            gradient is scaled by its own weight, and the rate parts add up to the rate, so for 5 hierarchical
            tasks the uniform default already gives distortion and every rate part the gradient ratio that
            weights 0.5/0.5 give 2 tasks; 0.5 for distortion and 0.125 per rate part gives the rate about a
            quarter of its 2-task pull (phase 3's study measures both, PHASES_OVERVIEW.md).
            The logits start at, and gamma pulls them to, xi0 = log(prior) - mean(log(prior)).
    """

    def __init__(self, params: Iterable, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, n_tasks: int = 2, gamma: float | Sequence[float] = 0.003,
                 w_lr: float = 0.025, min_losses: float | Sequence[float] = -1.0, cautious: bool = True,
                 max_mask_scale: float | None = 10.0, task_names: Sequence[str] | None = None,
                 prior_weights: Sequence[float] | None = None, adapt_weights: bool = True):
        super().__init__(params, lr, n_tasks=n_tasks, min_losses=min_losses, task_names=task_names, betas=betas,
                         eps=eps, weight_decay=weight_decay, cautious=cautious, max_mask_scale=max_mask_scale)
        self.adapt_weights = bool(adapt_weights)
        self.w_lr = w_lr
        self.logit_prior = _prior_logits(prior_weights, self.n_tasks)
        self.logits = self.logit_prior.clone()
        self._logit_exp_avg = torch.zeros(self.n_tasks)
        self._logit_exp_avg_sq = torch.zeros(self.n_tasks)
        self._logit_step = 0
        self.gamma = gamma
        self.skipped_weight_updates = 0  # updates dropped because delta was not finite
        self._prev_losses: Tensor | None = None
        self._model_step_taken = False
        self._frozen = torch.zeros(self.n_tasks, dtype=torch.bool)

    # ----------------------------------------------------------------------------------- properties
    @property
    def gamma(self) -> float | Tensor:
        """Logit decay: a float, or a vector with one value per task in the logits' dtype."""
        return self._gamma

    @gamma.setter
    def gamma(self, value: float | Sequence[float] | Tensor) -> None:
        vector = per_task_vector(value, self.n_tasks, "gamma")
        if (vector < 0).any():
            raise ValueError(f"gamma must be >= 0, got {vector.tolist()}")
        is_scalar = not isinstance(value, Tensor) and isinstance(value, (int, float))
        self._gamma = float(value) if is_scalar else vector.to(self.logits.device, self.logits.dtype)

    @property
    def w_lr(self) -> float:
        return self._w_lr

    @w_lr.setter
    def w_lr(self, value: float) -> None:
        if not value > 0:
            raise ValueError(f"w_lr must be > 0, got {value}")
        self._w_lr = float(value)

    @property
    def task_weights(self) -> Tensor:
        """z = softmax(logits), a detached copy."""
        return torch.softmax(self.logits, dim=0)

    def freeze_tasks(self, indices: Sequence[int]) -> None:
        """Keep the weights of these tasks where they are from now on; the other tasks share the rest.

        Used to stop re-balancing a task that no longer changes (seed 004's per-scale early stopping).
        """
        for index in indices:
            if not 0 <= index < self.n_tasks:
                raise ValueError(f"task index {index} out of range for {self.n_tasks} tasks")
            self._frozen[index] = True
        if bool(self._frozen.all()):
            raise ValueError("every task weight would be frozen; leave at least one task free")

    def frozen_task_names(self) -> list[str]:
        return [name for name, frozen in zip(self.task_names, self._frozen.tolist()) if frozen]

    @property
    def model_step_taken(self) -> bool:
        """Whether :meth:`step` ran since the last :meth:`weighted_loss` (False after a GradScaler skip)."""
        return self._model_step_taken

    # ------------------------------------------------------------------------------------ the steps
    def weighted_loss(self, task_losses: Sequence[Tensor] | Tensor) -> Tensor:
        """The FAMO scalar to backpropagate; remembers the (rank-averaged) losses for the logit update."""
        losses = stack_losses(task_losses, self.n_tasks)
        with torch.autocast(device_type=losses.device.type, enabled=False):
            local = losses.to(arithmetic_dtype(losses))
            values = all_reduce_mean(local.detach())
            min_losses = self._famo_on(values.device, values.dtype).to(values.dtype)
            check_above_min(values, min_losses, self.task_names)
            z = torch.softmax(self.logits.to(values.dtype), dim=0)
            inverse = z / (values - min_losses + LOG_EPS)
            normaliser = inverse.sum()
            coefficients = inverse / normaliser
            famo_value = (z * shifted_log(values, min_losses)).sum() / normaliser
            # Value: the FAMO scalar of the global batch. Gradient: sum_i a_i grad(l_i) of the local losses,
            # which is the FAMO gradient (c detached) and stays exact under DDP gradient averaging.
            loss = famo_value + (coefficients * (local - local.detach())).sum()
        self._prev_losses = values
        self._model_step_taken = False
        self._last_coefficients = coefficients
        return loss

    @torch.no_grad()
    def step(self, closure=None):
        """Cautious Adam step on the model parameters (the logits move only in update_task_weights)."""
        loss = super().step(closure)
        self._model_step_taken = True
        return loss

    @torch.no_grad()
    def update_task_weights(self, new_task_losses: Sequence[Tensor] | Tensor | None = None, *,
                            skip: bool = False,
                            reference_losses: Sequence[Tensor] | Tensor | None = None) -> bool:
        """One logit step from the losses of the same data at the new parameters; True if the logits moved.

        Nothing moves (and False is returned) when ``adapt_weights`` is off, when ``skip`` is true, when no loss was weighted since the
        last call, when :meth:`step` did not run after it (e.g. GradScaler skipped it), or when delta is
        not finite (counted in ``skipped_weight_updates``). ``reference_losses`` replaces the remembered
        before-step losses, for deltas measured on a subset of the batch. Under torch.distributed every
        rank must make the same call (the skips are rank-consistent when the inputs are).
        """
        previous, stepped = self._prev_losses, self._model_step_taken
        self._prev_losses, self._model_step_taken = None, False
        if skip or previous is None or not stepped or not self.adapt_weights:
            return False
        if new_task_losses is None:
            raise ValueError("update_task_weights needs the new task losses (or skip=True)")
        with torch.autocast(device_type=previous.device.type, enabled=False):
            new = stack_losses(new_task_losses, self.n_tasks).detach()
            new = all_reduce_mean(new.to(arithmetic_dtype(new)))
            if reference_losses is not None:
                previous = stack_losses(reference_losses, self.n_tasks).detach()
                previous = all_reduce_mean(previous.to(arithmetic_dtype(previous)))
            dtype = torch.promote_types(previous.dtype, new.dtype)
            previous, new = previous.to(dtype), new.to(dtype)
            min_losses = self._famo_on(new.device, dtype).to(dtype)
            check_above_min(previous, min_losses, self.task_names)
            check_above_min(new, min_losses, self.task_names)
            delta = shifted_log(previous, min_losses) - shifted_log(new, min_losses)
            if not torch.isfinite(delta).all():
                self.skipped_weight_updates += 1
                return False
            self._step_logits(delta)
        return True

    def _step_logits(self, delta: Tensor) -> None:
        """Adam step on the logits with gradient J_softmax^T delta + gamma * (logits - prior).

        The gradient is formed in delta's precision and stored in the logits' Adam state (FP32, or FP64 for
        FP64 losses: see :meth:`_famo_on`).
        """
        grad = logit_gradient(self.logits.to(delta.dtype), delta, self._gamma, self.logit_prior.to(delta.dtype))
        grad = grad.to(self.logits.dtype)
        beta1, beta2 = _LOGIT_BETAS
        self._logit_step += 1
        self._logit_exp_avg.lerp_(grad, 1 - beta1)
        self._logit_exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (self._logit_exp_avg_sq.sqrt() / math.sqrt(1 - beta2 ** self._logit_step)).add_(_LOGIT_EPS)
        before = self.logits.clone()
        self.logits.addcdiv_(self._logit_exp_avg, denom, value=-self.w_lr / (1 - beta1 ** self._logit_step))
        frozen = self._frozen.to(self.logits.device)
        if frozen.any():
            # Shift the free logits so that their softmax mass, hence every frozen weight, is unchanged.
            free = ~frozen
            shift = torch.logsumexp(before[free], 0) - torch.logsumexp(self.logits[free], 0)
            self.logits = torch.where(frozen, before, self.logits + shift)

    def _famo_on(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Move the FAMO state to ``device`` and to the wider of its dtype and the loss arithmetic's ``dtype``
        (created FP32 on the CPU; follows the losses, and never narrows); returns min_losses."""
        dtype = torch.promote_types(self.logits.dtype, dtype)
        if self.logits.device != device or self.logits.dtype != dtype:
            self.logits = self.logits.to(device, dtype)
            self._logit_exp_avg = self._logit_exp_avg.to(device, dtype)
            self._logit_exp_avg_sq = self._logit_exp_avg_sq.to(device, dtype)
            self.min_losses = self.min_losses.to(device)
            self.logit_prior = self.logit_prior.to(device, dtype)
            if isinstance(self._gamma, Tensor):
                self._gamma = self._gamma.to(device, dtype)
        return self.min_losses

    # ------------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        """torch's optimizer state plus ``"famo"``: logits, logit-Adam state, min_losses, gamma, w_lr."""
        state = super().state_dict()
        gamma = self._gamma if isinstance(self._gamma, float) else self._gamma.cpu().tolist()
        state["famo"] = {
            "n_tasks": self.n_tasks,
            "task_names": list(self.task_names),
            "logits": self.logits.detach().cpu().clone(),
            "logit_prior": self.logit_prior.cpu().clone(),
            "logit_exp_avg": self._logit_exp_avg.cpu().clone(),
            "logit_exp_avg_sq": self._logit_exp_avg_sq.cpu().clone(),
            "logit_step": self._logit_step,
            "min_losses": self.min_losses.cpu().clone(),
            "gamma": gamma,
            "w_lr": self.w_lr,
            "skipped_weight_updates": self.skipped_weight_updates,
            "frozen": self._frozen.tolist(),
            "adapt_weights": self.adapt_weights,
        }
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore everything :meth:`state_dict` wrote (bit-exact continuation)."""
        state_dict = dict(state_dict)
        famo = state_dict.pop("famo", None)
        if famo is None:
            raise ValueError("optimizer state has no 'famo' entry (it was not saved by balanced_rd.Balanced); "
                            "resume with the optimizer it was trained with")
        if famo["n_tasks"] != self.n_tasks:
            raise ValueError(f"optimizer state was saved with n_tasks={famo['n_tasks']}, "
                            f"this optimizer has n_tasks={self.n_tasks}")
        super().load_state_dict(state_dict)
        # The logit state keeps the dtype it was saved in (FP64 after FP64 losses, see _famo_on).
        device, dtype = self.logits.device, famo["logits"].dtype
        self.logits = famo["logits"].to(device=device, dtype=dtype).clone()
        self.logit_prior = famo["logit_prior"].to(device=device, dtype=dtype).clone()
        self._logit_exp_avg = famo["logit_exp_avg"].to(device=device, dtype=dtype).clone()
        self._logit_exp_avg_sq = famo["logit_exp_avg_sq"].to(device=device, dtype=dtype).clone()
        self._logit_step = int(famo["logit_step"])
        self.min_losses = famo["min_losses"].to(device=device, dtype=torch.float32).clone()
        self.gamma = famo["gamma"]
        self.w_lr = famo["w_lr"]
        self.skipped_weight_updates = int(famo["skipped_weight_updates"])
        self._frozen = torch.tensor(famo.get("frozen", [False] * self.n_tasks), dtype=torch.bool)
        self.adapt_weights = bool(famo.get("adapt_weights", True))
        self._prev_losses, self._model_step_taken = None, False


def _prior_logits(prior_weights: Sequence[float] | None, n_tasks: int) -> Tensor:
    """Centred log of the normalised prior weights (zeros, i.e. uniform, without a prior)."""
    if prior_weights is None:
        return torch.zeros(n_tasks)
    weights = per_task_vector(prior_weights, n_tasks, "prior_weights")
    if not (weights > 0).all():
        raise ValueError(f"prior_weights must all be > 0, got {weights.tolist()}")
    logits = weights.log()
    return logits - logits.mean()
