"""Balanced rate-distortion optimisation (Zhang et al., CVPR 2025) as torch optimizers.

- :class:`Balanced`: Solution 1, FAMO task weights + Cautious Adam (training from scratch).
- :class:`BalancedQP`: Solution 2, equality-constrained QP weights per step (fine-tuning).
- :class:`CautiousAdam`: the model-step core of both.
- :mod:`balanced_rd.gamma`: per-epoch gamma schedules; :mod:`balanced_rd.step`: one full training step;
  :mod:`balanced_rd.cli`: command-line flags; :mod:`balanced_rd.plots`: task-weight plots.
"""
from balanced_rd.balanced import Balanced, logit_gradient
from balanced_rd.cautious import CautiousAdam
from balanced_rd.gamma import GAMMA_STRATEGIES, GammaSchedule, make_gamma_schedule
from balanced_rd.qp import BalancedQP, qp_weights, task_gradients
from balanced_rd.step import StepResult, balanced_step

__all__ = ["Balanced", "logit_gradient", "BalancedQP", "CautiousAdam", "GAMMA_STRATEGIES", "GammaSchedule", "StepResult",
           "balanced_step", "make_gamma_schedule", "qp_weights", "task_gradients"]
