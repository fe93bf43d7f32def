"""Balanced rate-distortion optimisation (Zhang et al., CVPR 2025) as torch optimizers.

- :class:`Balanced`: Solution 1, FAMO task weights + Cautious Adam (training from scratch).
- :class:`BalancedQP`: Solution 2, equality-constrained QP weights per step (fine-tuning).
- :class:`CautiousAdam`: the model-step core of both.
- :mod:`balanced_rd.gamma`: gamma schedules (per epoch, or following the model's lr every step).

The package depends on torch only; its errors are ``ValueError`` (:class:`TaskLossError` for task losses
that cannot be balanced). The training step, the command-line flags and the task-weight plots live in
``common.train`` (``step``, ``optimizers``, ``plots``).
"""
from balanced_rd.balanced import Balanced, logit_gradient
from balanced_rd.cautious import CautiousAdam
from balanced_rd.gamma import GAMMA_STRATEGIES, FollowLRGamma, GammaSchedule, make_gamma_schedule
from balanced_rd.qp import BalancedQP, qp_weights, task_gradients
from balanced_rd.tasks import TaskLossError, TaskWeightedOptimizer

__all__ = ["Balanced", "logit_gradient", "BalancedQP", "CautiousAdam", "FollowLRGamma", "GAMMA_STRATEGIES",
           "GammaSchedule", "TaskLossError", "TaskWeightedOptimizer", "make_gamma_schedule", "qp_weights",
           "task_gradients"]
