"""The optimizer registry of the training engine.

Each :class:`OptimizerEntry` builds one optimizer from an :class:`OptimizerConfig`, names the update rule that
:func:`common.train.step.training_step` applies for it (``sum``, ``famo`` or ``qp``), and declares which
optimizer flags it reads. A flag that the chosen optimizer does not read (``--gamma`` with ``--optimizer
adam``) is refused with one line by :func:`check_flags`, instead of being silently dropped; the same holds
for the options of the γ schedules (``--gamma_milestones`` belongs to ``--gamma_strategy step``).

Adding an optimizer is one :func:`register_optimizer` call here and its flag in :mod:`common.flags` (see
ARCHITECTURE.md); flag names follow the seed scripts (``--use_balanced``, ``--gamma``, ``--w_lr``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from balanced_rd import Balanced, BalancedQP, CautiousAdam
from balanced_rd.gamma import GAMMA_SCHEDULE_OPTIONS, GammaSchedule, make_gamma_schedule
from common.errors import UserError
from common.train.config import OptimizerConfig

Builder = Callable[[Iterable, OptimizerConfig, float, int, Sequence[str]], torch.optim.Optimizer]


@dataclass(frozen=True)
class OptimizerEntry:
    """One ``--optimizer`` choice: its builder, the step's update rule and the options (OptimizerConfig fields) it reads."""

    name: str
    build: Builder
    update: str
    cls: type
    options: tuple[str, ...]


OPTIMIZERS: dict[str, OptimizerEntry] = {}

# Flags of the task-weighting optimizers (Balanced, BalancedQP): shared, then each one's own.
_TASK_WEIGHTING = ("min_losses", "cautious", "max_mask_scale")
_FAMO = ("famo", "gamma", "gamma_s1", "gamma_s2", "gamma_s3", "w_lr", "w_lr_sched", "prior_weights", "scale_weights", "weight_update_every", "delta_subset", "share_noise",
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


# Seed 004's phase-3 defaults of --gamma_s1/2/3.
SEED_SCALE_GAMMAS = (0.008, 0.006, 0.004)


def _gamma(args: OptimizerConfig, n_tasks: int) -> float | list[float]:
    """One gamma, one per task, or (seed 004's --gamma_sN) --gamma for distortion and z and one per y scale."""
    scales = (args.gamma_s1, args.gamma_s2, args.gamma_s3)
    if all(value is None for value in scales):
        return args.gamma[0] if len(args.gamma) == 1 else args.gamma
    if n_tasks != 5:
        raise UserError("--gamma_s1/--gamma_s2/--gamma_s3 set the gamma of the three y scales of "
                        "--hierarchical_tasks true (5 tasks); without it give --gamma only")
    if len(args.gamma) != 1:
        raise UserError("--gamma_sN and a per-task --gamma both set the scales' gamma; give --gamma one value "
                        "(distortion and z) with --gamma_sN, or five values alone")
    return [args.gamma[0]] * 2 + [default if value is None else value for value, default in zip(scales, SEED_SCALE_GAMMAS)]


def _prior_weights(args: OptimizerConfig, n_tasks: int) -> list[float] | None:
    """--prior_weights, or seed 004's --scale_weights s1 s2 s3 as the prior of the three y-scale tasks.

    Seed 004 multiplied the task weights by scale factors inside the loss only, so the weights no longer summed
    to 1 and the logit update did not see the change. Here the factors (relative to their mean) scale the
    uniform prior of the y scales, which the weights start from and decay towards; distortion and z keep
    theirs. 0.3 0.4 0.3 gives 0.2, 0.2, 0.18, 0.24, 0.18.
    """
    if args.scale_weights is None:
        return args.prior_weights
    if n_tasks != 5 or len(args.scale_weights) != 3:
        raise UserError("--scale_weights takes 3 values (y scales s1, s2, s3) and needs --hierarchical_tasks true")
    if args.prior_weights is not None:
        raise UserError("--scale_weights and --prior_weights both set the prior task weights; give one")
    if not all(value > 0 for value in args.scale_weights):
        raise UserError(f"--scale_weights must be > 0, got {args.scale_weights}")
    mean = sum(args.scale_weights) / 3
    return [1.0, 1.0, *(value / mean for value in args.scale_weights)]


@register_optimizer("balanced", update="famo", cls=Balanced, options=_TASK_WEIGHTING + _FAMO)
def _balanced(params, args, lr, n_tasks, task_names):
    gamma = _gamma(args, n_tasks)
    return Balanced(params, lr, gamma=gamma, w_lr=args.w_lr, prior_weights=_prior_weights(args, n_tasks),
                    adapt_weights=args.famo, **_task_weighting_kwargs(args, n_tasks, task_names))


@register_optimizer("cautious_adam", update="sum", cls=CautiousAdam, options=("max_mask_scale",))
def _cautious_adam(params, args, lr, n_tasks, task_names):
    """Cautious Adam on the plain sum λ·D + R: the sign mask without the log losses or FAMO (an ablation arm)."""
    return CautiousAdam(params, lr, weight_decay=args.weight_decay, max_mask_scale=args.max_mask_scale)


@register_optimizer("balanced_qp", update="qp", cls=BalancedQP, options=_TASK_WEIGHTING + ("qp_eps", "qp_track_changes"))
def _balanced_qp(params, args, lr, n_tasks, task_names):
    return BalancedQP(params, lr, qp_eps=args.qp_eps, track_changes=args.qp_track_changes,
                      **_task_weighting_kwargs(args, n_tasks, task_names))


def _options_only_of_others(name: str) -> set[str]:
    """The options other optimizers read and ``name`` does not."""
    return {dest for entry in OPTIMIZERS.values() for dest in entry.options} - set(OPTIMIZERS[name].options)


def update_rule(optimizer: torch.optim.Optimizer) -> str:
    """The update rule of the registered optimizer class ``optimizer`` is an instance of (``sum`` otherwise)."""
    matches = [entry for entry in OPTIMIZERS.values() if isinstance(optimizer, entry.cls)]
    # The most derived class wins (Balanced is an Adam-like optimizer, not a torch.optim.Adam, but be exact).
    matches.sort(key=lambda entry: len(entry.cls.__mro__), reverse=True)
    return matches[0].update if matches else "sum"


def optimizer_name(args: OptimizerConfig) -> str:
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


def with_optimizer(config: OptimizerConfig, name: str) -> OptimizerConfig:
    """A copy of ``config`` that trains with optimizer ``name``, the options only other optimizers read at their defaults."""
    defaults = dataclasses.asdict(OptimizerConfig())
    others = _options_only_of_others(name)
    return dataclasses.replace(config, optimizer=name, use_balanced=False, **{dest: defaults[dest] for dest in others})


def gamma_strategy(args: OptimizerConfig) -> str:
    return args.gamma_strategy or ("cosine" if args.adaptive_gamma else "constant")


def check_flags(args: OptimizerConfig) -> None:
    """Refuse optimizer and γ-schedule options that the chosen variant would ignore (values differing from the defaults)."""
    defaults = dataclasses.asdict(OptimizerConfig())

    def given(dest: str) -> bool:
        return getattr(args, dest, defaults[dest]) != defaults[dest]

    name = optimizer_name(args)
    for dest in sorted(_options_only_of_others(name)):
        if given(dest):
            owners = [entry.name for entry in OPTIMIZERS.values() if dest in entry.options]
            raise UserError(f"--{dest} is an option of --optimizer {' or '.join(owners)}, not of --optimizer {name}; "
                            "drop it or change the optimizer")
    if name != "balanced":
        return
    if not args.famo:
        fixed = [dest for dest in _FAMO if dest not in ("famo", "prior_weights", "scale_weights") and given(dest)]
        if fixed:
            raise UserError(f"--{fixed[0]} sets FAMO's task-weight update, which --famo false turns off; drop it")
    strategy = gamma_strategy(args)
    for flag, keyword in _GAMMA_SCHEDULE_FLAGS.items():
        if given(flag) and keyword not in GAMMA_SCHEDULE_OPTIONS[strategy]:
            owners = [s for s, options in GAMMA_SCHEDULE_OPTIONS.items() if keyword in options]
            raise UserError(f"--{flag} is not used by the {strategy} gamma schedule (it is an option of "
                            f"--gamma_strategy {', '.join(owners)}); drop it or choose one of those")


def build_optimizer(params: Iterable, args: OptimizerConfig, n_tasks: int, lr: float,
                    task_names: Sequence[str] | None = None) -> tuple[torch.optim.Optimizer, str]:
    """The optimizer chosen by the flags over ``params`` (model parameters only, no quantiles) and its update rule."""
    entry = OPTIMIZERS[optimizer_name(args)]
    try:
        return entry.build(params, args, lr, n_tasks, task_names), entry.update
    except ValueError as exc:
        raise UserError(f"--optimizer {entry.name}: {exc}") from exc


def build_gamma_schedule(args: OptimizerConfig, optimizer: torch.optim.Optimizer,
                         total_epochs: int | None = None) -> GammaSchedule | None:
    """The per-epoch gamma schedule for a Balanced optimizer (None for other optimizers)."""
    if not isinstance(optimizer, Balanced):
        if args.gamma_strategy or args.adaptive_gamma:
            raise UserError("--gamma_strategy/--adaptive_gamma need --optimizer balanced (or --use_balanced)")
        return None
    strategy = gamma_strategy(args)
    keywords = {keyword: getattr(args, flag) for flag, keyword in _GAMMA_SCHEDULE_FLAGS.items()}
    keywords["total_epochs"] = total_epochs
    try:
        return make_gamma_schedule(strategy, optimizer, **keywords)
    except ValueError as exc:
        raise UserError(f"--gamma_strategy {strategy}: {exc}") from exc


def step_options(args: OptimizerConfig) -> dict:
    """Keyword arguments of :func:`common.train.step.training_step` chosen by the flags."""
    if args.weight_update_every < 1 or args.delta_subset < 0:
        raise UserError(f"--weight_update_every must be >= 1 and --delta_subset >= 0, got "
                        f"{args.weight_update_every} and {args.delta_subset}")
    return dict(weight_update_every=args.weight_update_every, delta_subset=args.delta_subset,
                share_noise=args.share_noise)
