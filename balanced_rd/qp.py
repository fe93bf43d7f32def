"""Balanced R-D, Solution 2 (fine-tuning): task weights from an equality-constrained QP at every step.

With log-loss gradients g_i = grad(l_i) / D_i (D_i = l_i - m_i + 1e-8) and Gram matrix Q_ij = <g_i, g_j>,
the weights solve  min_w 1/2 w^T Q w  subject to  sum_i w_i = 1  (no sign constraint), i.e.

    w = Q^-1 1 / (1^T Q^-1 1),      so that  <g_i, d> = 1 / (1^T Q^-1 1)  for every task, d = sum_i w_i g_i:

all log losses fall at the same first-order rate. For K = 2 the closed form is
w_0 = (Q_11 - Q_01) / (Q_00 + Q_11 - 2 Q_01). Q gets a ridge ``qp_eps * trace(Q) / K`` so parallel
gradients stay finite. Weights can be negative when the gradients are strongly correlated.

The direction is then rescaled as in Solution 1: the raw task gradients get coefficients
a_i = (w_i / D_i) / sum_j |w_j| / D_j, which equals FAMO's c-normalisation when every w_i >= 0 and never
flips the direction (or divides by ~0) when some w_i < 0 (our choice; the paper's text is not available).
The model step is Cautious Adam. Each step needs one backward pass per task (K autograd.grad calls).

How strong the ridge is: for K = 2, |w_i - 1/2| <= 1 / (2 sqrt(qp_eps (qp_eps + 2))) for *any* Gram matrix
(reached by parallel gradients whose norms differ by the factor 1 + qp_eps + sqrt(qp_eps (qp_eps + 2))).
``qp_eps`` 10 confines the weights to [0.4544, 0.5456], i.e. near-uniform weighting whatever the gradients
say; 1 gives [0.211, 0.789]; at 0.1 (bound 1.09) and below the weights are no longer confined to [0, 1], and the
default 1e-6 leaves the QP essentially exact.

``track_changes=True`` records, per step, the first-order prediction of each log loss's change,
<grad log D_i, p_after - p_before> for the update actually taken (after Adam and the mask), and, once
:meth:`BalancedQP.record_losses_after_step` gives the losses of the same batch at the new parameters, the
realised change log D_i(after) - log D_i(before); both are logged (``pred_dlog_<task>``,
``real_dlog_<task>``). The QP equalises the predicted changes of the raw direction d; the log shows how
far Adam's step and the loss surface move the realised ones from them.

Usage::

    opt = BalancedQP(model_params, lr=5e-5)
    opt.zero_grad()
    weights = opt.backward([distortion, rate])   # fills .grad with the balanced direction
    clip_grad_norm_(model_params, 1.0)
    opt.step()

Under torch.distributed the per-task gradients and losses are averaged over ranks inside ``backward``:
pass the parameters of the *unwrapped* module (autograd.grad bypasses DDP's gradient hooks).
GradScaler is not supported (the per-task gradients are taken unscaled); use FP32 or bf16 autocast.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import torch
from torch import Tensor

from balanced_rd.distributed import all_reduce_mean, all_reduce_mean_
from balanced_rd.tasks import LOG_EPS, TaskWeightedOptimizer, check_above_min, stack_losses


def task_gradients(task_losses: Sequence[Tensor], params: Sequence[Tensor]) -> Tensor:
    """Gradients of each task loss w.r.t. ``params`` as a (K, n_params) FP32 matrix (one autograd.grad each).

    Parameters a task does not reach get zeros. The graph is freed after the last task.
    """
    params = list(params)
    rows = []
    for index, loss in enumerate(task_losses):
        grads = torch.autograd.grad(loss, params, retain_graph=index < len(task_losses) - 1, allow_unused=True)
        rows.append(torch.cat([(grad if grad is not None else torch.zeros_like(param)).reshape(-1).float()
                               for grad, param in zip(grads, params)]))
    return torch.stack(rows)


def qp_weights(gram: Tensor, qp_eps: float = 1e-6) -> Tensor:
    """Minimiser of 1/2 w^T (Q + ridge I) w subject to sum(w) = 1, ridge = qp_eps * trace(Q) / K (float64)."""
    gram = gram.double()
    n_tasks = gram.shape[0]
    ridge = qp_eps * float(gram.trace()) / n_tasks
    regularised = gram + ridge * torch.eye(n_tasks, dtype=gram.dtype, device=gram.device)
    uniform = torch.full((n_tasks,), 1.0 / n_tasks, dtype=gram.dtype, device=gram.device)
    if n_tasks == 2:
        denominator = regularised[0, 0] + regularised[1, 1] - 2 * regularised[0, 1]
        if not denominator > 0:  # identical gradients without a ridge: every feasible w is optimal
            return uniform
        first = (regularised[1, 1] - regularised[0, 1]) / denominator
        return torch.stack([first, 1 - first])
    ones = torch.ones(n_tasks, dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.lstsq(regularised, ones.unsqueeze(1)).solution.squeeze(1)
    total = solution.sum()
    if not (torch.isfinite(solution).all() and total.abs() > 0):
        return uniform
    return solution / total


class BalancedQP(TaskWeightedOptimizer):
    """Cautious Adam driven by QP task weights (Solution 2); see the module docstring.

    Args:
        params, lr, betas, eps, weight_decay, cautious, max_mask_scale: as :class:`balanced_rd.Balanced`.
        n_tasks: number of task losses K (>= 2).
        min_losses: offsets m_i in D_i = l_i - m_i (float or per task; LIC default -1).
        qp_eps: relative ridge added to the Gram matrix.
        task_names: names for errors and logs.
    """

    def __init__(self, params: Iterable, lr: float, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, n_tasks: int = 2, min_losses: float | Sequence[float] = -1.0,
                 qp_eps: float = 1e-6, cautious: bool = True, max_mask_scale: float | None = 10.0,
                 task_names: Sequence[str] | None = None, track_changes: bool = False):
        super().__init__(params, lr, n_tasks=n_tasks, min_losses=min_losses, task_names=task_names, betas=betas,
                         eps=eps, weight_decay=weight_decay, cautious=cautious, max_mask_scale=max_mask_scale)
        self.qp_eps = float(qp_eps)
        self._weights = torch.full((self.n_tasks,), 1.0 / self.n_tasks)
        self.track_changes = bool(track_changes)
        self._log_gradients: Tensor | None = None
        self._log_losses_before: Tensor | None = None
        self.predicted_change: Tensor | None = None
        self.realised_change: Tensor | None = None

    @property
    def task_weights(self) -> Tensor:
        """QP weights w of the last :meth:`backward` (uniform before the first)."""
        return self._weights.clone()

    def _parameters_in_order(self) -> list[Tensor]:
        return [param for group in self.param_groups for param in group["params"] if param.requires_grad]

    def backward(self, task_losses: Sequence[Tensor] | Tensor) -> Tensor:
        """Accumulate the balanced direction into ``.grad`` of the parameters; returns the QP weights."""
        losses = stack_losses(task_losses, self.n_tasks)
        params = self._parameters_in_order()
        gradients = all_reduce_mean_(task_gradients(list(losses.float()), params))
        with torch.no_grad():
            values = all_reduce_mean(losses.detach().float())
            self.min_losses = self.min_losses.to(values.device)
            check_above_min(values, self.min_losses, self.task_names)
            shifted = (values - self.min_losses + LOG_EPS).double()
            log_gradients = gradients.double() / shifted.unsqueeze(1)
            weights = qp_weights(log_gradients @ log_gradients.T, self.qp_eps)
            coefficients = (weights / shifted) / (weights.abs() / shifted).sum()
            direction = (coefficients.to(gradients.dtype).unsqueeze(1) * gradients).sum(0)
            offset = 0
            for param in params:
                numel = param.numel()
                piece = direction[offset:offset + numel].view_as(param).to(param.dtype)
                offset += numel
                if param.grad is None:
                    param.grad = piece.clone()
                else:
                    param.grad.add_(piece)
        self._weights = weights.float().cpu()
        self._last_coefficients = coefficients.float().cpu()
        if self.track_changes:
            self._log_gradients, self._log_losses_before = log_gradients, shifted.log()
        return self.task_weights

    @torch.no_grad()
    def step(self, closure=None):
        """The Cautious Adam step; with ``track_changes`` also the predicted change of each log loss."""
        if not self.track_changes or self._log_gradients is None:
            return super().step(closure)
        params = self._parameters_in_order()
        before = torch.cat([param.detach().reshape(-1).double() for param in params])
        loss = super().step(closure)
        after = torch.cat([param.detach().reshape(-1).double() for param in params])
        self.predicted_change = (self._log_gradients @ (after - before)).float().cpu()
        self.realised_change = None
        self._log_gradients = None
        return loss

    @torch.no_grad()
    def record_losses_after_step(self, task_losses: Sequence[Tensor] | Tensor) -> None:
        """The losses of the same batch at the new parameters: sets the realised change of each log loss."""
        if self._log_losses_before is None:
            return
        values = all_reduce_mean(stack_losses(task_losses, self.n_tasks).detach().float())
        after = (values - self.min_losses.to(values.device) + LOG_EPS).double().log()
        self.realised_change = (after - self._log_losses_before).float().cpu()
        self._log_losses_before = None

    def task_weight_dict(self) -> dict[str, float]:
        """The weights and coefficients, plus the predicted and realised log-loss changes when tracked."""
        record = super().task_weight_dict()
        for prefix, values in (("pred_dlog", self.predicted_change), ("real_dlog", self.realised_change)):
            if values is not None:
                record.update({f"{prefix}_{name}": float(value) for name, value in zip(self.task_names, values)})
        return record
