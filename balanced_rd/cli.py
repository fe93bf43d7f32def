"""Command-line flags of the Balanced R-D optimizers and builders from parsed ``args``.

The training engine owns ``--optimizer {adam,adamw,balanced,balanced_qp}``, ``--learning_rate`` (or
``--lr``), ``--weight_decay`` and ``--epochs``; :func:`add_arguments` adds everything else (names as in
the seed scripts: ``--use_balanced``, ``--gamma``, ``--w_lr``, ``--adaptive_gamma``, ``--gamma_strategy``).
"""
from __future__ import annotations

import argparse
from typing import Iterable, Sequence

import torch

from balanced_rd.balanced import Balanced
from balanced_rd.gamma import GAMMA_STRATEGIES, GammaSchedule, make_gamma_schedule
from balanced_rd.qp import BalancedQP
from common.cli import bool_flag, number
from common.errors import UserError


def _optional_float(value: str) -> float | None:
    if value.strip().lower() in {"none", "inf"}:
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {value!r}") from exc


def add_arguments(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add the Balanced R-D flags to ``group`` (a parser or one of its argument groups)."""
    bool_flag(group, "--use_balanced", False, "train with balanced_rd.Balanced (same as --optimizer balanced)")
    group.add_argument("--gamma", type=number(float, minimum=0), nargs="+", default=[0.003],
                       help="logit decay gamma: one value, or one per task (default: 0.003)")
    group.add_argument("--w_lr", type=number(float, above=0), default=0.025, help="learning rate of the task-weight logits "
                       "(default: 0.025)")
    group.add_argument("--min_losses", type=number(float), nargs="+", default=[-1.0],
                       help="offsets m in log(loss - m): one value or one per task (default: -1)")
    group.add_argument("--prior_weights", type=number(float, above=0), nargs="+", default=None,
                       help="balanced: task weights to start from and decay towards, one per task "
                            "(default: uniform)")
    bool_flag(group, "--cautious", True, "sign-mask the model update (Cautious Adam); false = plain Adam")
    group.add_argument("--max_mask_scale", type=_optional_float, default=10.0,
                       help="cap on the cautious rescaling 1/mean(mask); 'none' = uncapped (default: 10)")
    group.add_argument("--qp_eps", type=number(float, minimum=0), default=1e-6,
                       help="balanced_qp: relative ridge on the gradient Gram matrix (default: 1e-6)")
    bool_flag(group, "--adaptive_gamma", False,
              "schedule gamma per epoch (strategy --gamma_strategy, cosine when not given)")
    group.add_argument("--gamma_strategy", choices=GAMMA_STRATEGIES, default=None,
                       help="per-epoch gamma schedule (default: constant, or cosine with --adaptive_gamma)")
    group.add_argument("--gamma_final_ratio", type=number(float, minimum=0), default=0.2,
                       help="final gamma / initial gamma of linear, cosine, adaptive; floor of step "
                            "(default: 0.2)")
    group.add_argument("--gamma_warmup_epochs", type=number(int, minimum=0), default=0,
                       help="epochs at the initial gamma before linear/cosine/adaptive start (default: 0)")
    group.add_argument("--gamma_milestones", type=number(int, minimum=0), nargs="+", default=[1000, 2000, 2500],
                       help="epochs where the step schedule multiplies gamma by --gamma_step_factor "
                            "(default: 1000 2000 2500)")
    group.add_argument("--gamma_step_factor", type=number(float, above=0), default=0.5, help="step schedule factor (default: 0.5)")
    group.add_argument("--gamma_min", type=number(float, minimum=0), default=None,
                       help="absolute gamma floor of step/hpcm (default: final ratio * gamma; hpcm 0.0005)")
    group.add_argument("--gamma_cv_window", type=number(int, minimum=2), default=50,
                       help="adaptive: number of recent validation losses in the CV (default: 50)")
    group.add_argument("--weight_update_every", type=number(int, minimum=1), default=1,
                       help="cheaper delta: update the task weights every k-th step only (default: 1 = exact)")
    group.add_argument("--delta_subset", type=number(int, minimum=0), default=0,
                       help="cheaper delta: re-evaluate only the first N samples of the batch (default: 0 = "
                            "whole batch)")
    bool_flag(group, "--share_noise", False,
              "re-evaluate the batch with the same quantisation noise as the training forward")


def optimizer_name(args: argparse.Namespace) -> str:
    """The optimizer to build: ``--use_balanced`` selects ``balanced`` unless it conflicts."""
    name = getattr(args, "optimizer", None) or "adam"
    if getattr(args, "use_balanced", False):
        if name == "balanced_qp":
            raise UserError("--use_balanced conflicts with --optimizer balanced_qp; give only one of them")
        return "balanced"
    return name


def _learning_rate(args: argparse.Namespace, lr: float | None) -> float:
    for value in (lr, getattr(args, "learning_rate", None), getattr(args, "lr", None)):
        if value is not None:
            return float(value)
    raise UserError("no learning rate given; pass --learning_rate")


def build_optimizer(params: Iterable, args: argparse.Namespace, n_tasks: int, lr: float | None = None,
                    task_names: Sequence[str] | None = None) -> torch.optim.Optimizer:
    """Adam, AdamW, Balanced or BalancedQP over ``params`` (model parameters only, no quantiles)."""
    name = optimizer_name(args)
    learning_rate = _learning_rate(args, lr)
    weight_decay = float(getattr(args, "weight_decay", 0.0) or 0.0)
    if name == "adam":
        return torch.optim.Adam(params, lr=learning_rate, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)
    common = dict(weight_decay=weight_decay, n_tasks=n_tasks, min_losses=args.min_losses, cautious=args.cautious,
                  max_mask_scale=args.max_mask_scale, task_names=task_names)
    if name == "balanced":
        gamma = args.gamma[0] if len(args.gamma) == 1 else args.gamma
        return Balanced(params, learning_rate, gamma=gamma, w_lr=args.w_lr, prior_weights=args.prior_weights,
                        **common)
    if name == "balanced_qp":
        return BalancedQP(params, learning_rate, qp_eps=args.qp_eps, **common)
    raise UserError(f"unknown optimizer {name!r}; choose one of: adam, adamw, balanced, balanced_qp")


def gamma_strategy(args: argparse.Namespace) -> str:
    return args.gamma_strategy or ("cosine" if args.adaptive_gamma else "constant")


def build_gamma_schedule(args: argparse.Namespace, optimizer: torch.optim.Optimizer,
                         total_epochs: int | None = None) -> GammaSchedule | None:
    """The per-epoch gamma schedule for a Balanced optimizer (None for other optimizers)."""
    if not isinstance(optimizer, Balanced):
        if args.gamma_strategy or args.adaptive_gamma:
            raise UserError("--gamma_strategy/--adaptive_gamma need --optimizer balanced (or --use_balanced)")
        return None
    return make_gamma_schedule(gamma_strategy(args), optimizer,
                               total_epochs=total_epochs if total_epochs is not None else getattr(args, "epochs", None),
                               final_ratio=args.gamma_final_ratio, warmup_epochs=args.gamma_warmup_epochs,
                               milestones=args.gamma_milestones, step_factor=args.gamma_step_factor,
                               min_gamma=args.gamma_min, cv_window=args.gamma_cv_window)


def step_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`balanced_rd.step.balanced_step` chosen by the flags."""
    if args.weight_update_every < 1 or args.delta_subset < 0:
        raise UserError(f"--weight_update_every must be >= 1 and --delta_subset >= 0, got "
                        f"{args.weight_update_every} and {args.delta_subset}")
    return dict(weight_update_every=args.weight_update_every, delta_subset=args.delta_subset,
                share_noise=args.share_noise)
