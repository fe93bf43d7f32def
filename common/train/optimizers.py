"""The optimizer registry of the training engine, and the command-line flags of the Balanced R-D optimizers.

Each :class:`OptimizerEntry` builds one optimizer from the parsed flags, names the update rule that
:func:`common.train.step.training_step` applies for it (``sum``, ``famo`` or ``qp``), and declares which
optimizer flags it reads. A flag that the chosen optimizer does not read (``--gamma`` with ``--optimizer
adam``) is refused with one line by :func:`check_flags`, instead of being silently dropped; the same holds
for the options of the γ schedules (``--gamma_milestones`` belongs to ``--gamma_strategy step``).

Adding an optimizer is one :func:`register_optimizer` call here (see ARCHITECTURE.md); flag names follow
the seed scripts (``--use_balanced``, ``--gamma``, ``--w_lr``, ``--adaptive_gamma``, ``--gamma_strategy``).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from balanced_rd import Balanced, BalancedQP
from balanced_rd.gamma import GAMMA_SCHEDULE_OPTIONS, GAMMA_STRATEGIES, GammaSchedule, make_gamma_schedule
from common.cli import bool_flag, number
from common.errors import UserError

Builder = Callable[[Iterable, argparse.Namespace, float, int, Sequence[str]], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerEntry:
    """One ``--optimizer`` choice: its builder, the step's update rule and the flags (argparse dests) it reads."""

    name: str
    build: Builder
    update: str
    cls: type
    options: tuple[str, ...]


OPTIMIZERS: dict[str, OptimizerEntry] = {}

# Flags of the task-weighting optimizers (Balanced, BalancedQP): shared, then each one's own.
_TASK_WEIGHTING = ("min_losses", "cautious", "max_mask_scale")
_FAMO = ("gamma", "w_lr", "w_lr_sched", "prior_weights", "weight_update_every", "delta_subset", "share_noise",
         "adaptive_gamma", "gamma_strategy", "gamma_final_ratio", "gamma_warmup_epochs", "gamma_milestones",
         "gamma_step_factor", "gamma_min", "gamma_cv_window")
# The γ-schedule flags and the keyword of make_gamma_schedule each one fills.
_GAMMA_SCHEDULE_FLAGS = {"gamma_final_ratio": "final_ratio", "gamma_warmup_epochs": "warmup_epochs",
                         "gamma_milestones": "milestones", "gamma_step_factor": "step_factor",
                         "gamma_min": "min_gamma", "gamma_cv_window": "cv_window"}


def register_optimizer(name: str, *, update: str, cls: type, options: Sequence[str] = ()):
    """Decorator adding ``builder(params, args, lr, n_tasks, task_names)`` to the registry as ``name``."""

    def decorator(builder: Builder) -> Builder:
        if name in OPTIMIZERS:
            raise ValueError(f"optimizer {name!r} registered twice")
        OPTIMIZERS[name] = OptimizerEntry(name, builder, update, cls, tuple(options))
        return builder

    return decorator


@register_optimizer("adam", update="sum", cls=torch.optim.Adam)
def _adam(params, args, lr, n_tasks, task_names):
    return torch.optim.Adam(params, lr=lr, weight_decay=args.weight_decay)


@register_optimizer("adamw", update="sum", cls=torch.optim.AdamW)
def _adamw(params, args, lr, n_tasks, task_names):
    return torch.optim.AdamW(params, lr=lr, weight_decay=args.weight_decay)


def _task_weighting_kwargs(args, n_tasks, task_names) -> dict:
    return dict(weight_decay=args.weight_decay, n_tasks=n_tasks, min_losses=args.min_losses, cautious=args.cautious,
                max_mask_scale=args.max_mask_scale, task_names=task_names)


@register_optimizer("balanced", update="famo", cls=Balanced, options=_TASK_WEIGHTING + _FAMO)
def _balanced(params, args, lr, n_tasks, task_names):
    gamma = args.gamma[0] if len(args.gamma) == 1 else args.gamma
    return Balanced(params, lr, gamma=gamma, w_lr=args.w_lr, prior_weights=args.prior_weights,
                    **_task_weighting_kwargs(args, n_tasks, task_names))


@register_optimizer("balanced_qp", update="qp", cls=BalancedQP, options=_TASK_WEIGHTING + ("qp_eps",))
def _balanced_qp(params, args, lr, n_tasks, task_names):
    return BalancedQP(params, lr, qp_eps=args.qp_eps, **_task_weighting_kwargs(args, n_tasks, task_names))


def update_rule(optimizer: torch.optim.Optimizer) -> str:
    """The update rule of the registered optimizer class ``optimizer`` is an instance of (``sum`` otherwise)."""
    matches = [entry for entry in OPTIMIZERS.values() if isinstance(optimizer, entry.cls)]
    # The most derived class wins (Balanced is an Adam-like optimizer, not a torch.optim.Adam, but be exact).
    matches.sort(key=lambda entry: len(entry.cls.__mro__), reverse=True)
    return matches[0].update if matches else "sum"


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
    group.add_argument("--w_lr_sched", choices=("constant", "follow"), default="constant",
                       help="follow = scale w_lr by the model's scheduled lr / --lr every step, so the task weights "
                            "settle when the model's schedule decays (default: constant, as in the paper)")
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
    """The optimizer to build: ``--use_balanced`` means ``--optimizer balanced`` and refuses any other choice."""
    name = getattr(args, "optimizer", None)
    if getattr(args, "use_balanced", False):
        if name not in (None, "balanced"):
            raise UserError(f"--use_balanced conflicts with --optimizer {name}; give only one of them")
        return "balanced"
    name = name or "adam"
    if name not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    return name


def with_optimizer(args: argparse.Namespace, name: str, defaults: dict) -> argparse.Namespace:
    """A copy of ``args`` that trains with optimizer ``name``, the flags only other optimizers read back at ``defaults``."""
    values = vars(args).copy()
    for dest in {dest for entry in OPTIMIZERS.values() for dest in entry.options} - set(OPTIMIZERS[name].options):
        values[dest] = defaults[dest]
    values.update(optimizer=name, use_balanced=False)
    return argparse.Namespace(**values)


def gamma_strategy(args: argparse.Namespace) -> str:
    return args.gamma_strategy or ("cosine" if args.adaptive_gamma else "constant")


def check_flags(args: argparse.Namespace, defaults: dict) -> None:
    """Refuse optimizer and γ-schedule flags that the chosen variant would ignore (values differing from ``defaults``)."""
    def given(dest: str) -> bool:
        return dest in defaults and getattr(args, dest, defaults[dest]) != defaults[dest]

    name = optimizer_name(args)
    used = set(OPTIMIZERS[name].options)
    for dest in sorted({dest for entry in OPTIMIZERS.values() for dest in entry.options} - used):
        if given(dest):
            owners = [entry.name for entry in OPTIMIZERS.values() if dest in entry.options]
            raise UserError(f"--{dest} is an option of --optimizer {' or '.join(owners)}, not of --optimizer {name}; "
                            "drop it or change the optimizer")
    if name != "balanced":
        return
    strategy = gamma_strategy(args)
    for flag, keyword in _GAMMA_SCHEDULE_FLAGS.items():
        if given(flag) and keyword not in GAMMA_SCHEDULE_OPTIONS[strategy]:
            owners = [s for s, options in GAMMA_SCHEDULE_OPTIONS.items() if keyword in options]
            raise UserError(f"--{flag} is not used by the {strategy} gamma schedule (it is an option of "
                            f"--gamma_strategy {', '.join(owners)}); drop it or choose one of those")


def build_optimizer(params: Iterable, args: argparse.Namespace, n_tasks: int, lr: float,
                    task_names: Sequence[str] | None = None) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer chosen by the flags over ``params`` (model parameters only, no quantiles) and its update rule."""
    entry = OPTIMIZERS[optimizer_name(args)]
    try:
        return entry.build(params, args, lr, n_tasks, task_names), entry.update
    except ValueError as exc:
        raise UserError(f"--optimizer {entry.name}: {exc}") from exc


def build_gamma_schedule(args: argparse.Namespace, optimizer: torch.optim.Optimizer,
                         total_epochs: int | None = None) -> GammaSchedule | None:
    """The per-epoch gamma schedule for a Balanced optimizer (None for other optimizers)."""
    if not isinstance(optimizer, Balanced):
        if args.gamma_strategy or args.adaptive_gamma:
            raise UserError("--gamma_strategy/--adaptive_gamma need --optimizer balanced (or --use_balanced)")
        return None
    strategy = gamma_strategy(args)
    keywords = {keyword: getattr(args, flag) for flag, keyword in _GAMMA_SCHEDULE_FLAGS.items()}
    keywords["total_epochs"] = total_epochs if total_epochs is not None else getattr(args, "epochs", None)
    try:
        return make_gamma_schedule(strategy, optimizer, **keywords)
    except ValueError as exc:
        raise UserError(f"--gamma_strategy {strategy}: {exc}") from exc


def step_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of :func:`common.train.step.training_step` chosen by the flags."""
    if args.weight_update_every < 1 or args.delta_subset < 0:
        raise UserError(f"--weight_update_every must be >= 1 and --delta_subset >= 0, got "
                        f"{args.weight_update_every} and {args.delta_subset}")
    return dict(weight_update_every=args.weight_update_every, delta_subset=args.delta_subset,
                share_noise=args.share_noise)
