"""Per-epoch schedules for gamma, the logit decay of :class:`balanced_rd.Balanced` (seed 004, phases 2-3).

gamma0 is the optimizer's gamma when the schedule is built (a float or one value per task; every
formula applies elementwise). e is the epoch (0 at construction, +1 per :meth:`GammaSchedule.step`),
r = ``final_ratio`` (gamma1 = r * gamma0), W = ``warmup_epochs``, T = ``total_epochs`` and
p = clamp((e - W) / (T - W), 0, 1) the progress after warm-up.

=========  =========================================================================================
constant   gamma0
linear     gamma0 * (1 - (1 - r) * p)
cosine     gamma0 * (r + (1 - r) * (1 + cos(pi * p)) / 2)
step       max(gamma0 * factor^n(e), floor), n(e) = number of milestones <= e,
           floor = ``min_gamma`` if given, else r * gamma0
hpcm       step with milestones (500, 1500, 2750), factor 0.5, floor 0.0005 (the seed's HPCM preset;
           gamma0 = 0.006 gives 0.006 -> 0.003 -> 0.0015 -> 0.00075)
adaptive   clip(cosine(e) * k, r * gamma0, 1.5 * gamma0), k = 0.8 if CV < ``cv_low``, 1.2 if
           CV > ``cv_high``, else 1; CV = std / |mean| (population std) of the last ``cv_window``
           validation losses passed to step(); k = 1 until two losses are known. This is the seed's
           heuristic (more decay, i.e. weights nearer uniform, while the validation loss is noisy); it
           has no published justification.
hierarchi  5 tasks (distortion, z, y_s1, y_s2, y_s3): distortion and z keep gamma0; each y scale's gamma0 is
cal        multiplied by seed 004's 4-stage piecewise-linear factor, whose knots sit at 0, 10, 50, 83.3 and
           100 % of T (the seed's epochs 0, 300, 1500, 2500, 3000 of a 3000-epoch run): s1 1.0, 1.2, 0.9,
           0.7, 0.5; s2 0.8, 0.8, 1.1, 0.8, 0.5; s3 0.6, 0.6, 1.0, 1.1, 1.3 (held after T)
follow     gamma0 * (the model's scheduled lr / its base lr), set every step by the trainer through
           :meth:`FollowLRGamma.follow`: FAMO's loss changes shrink with the model's lr, and a decay that kept its
           size would pull the task weights back towards uniform whenever the lr drops
scale_ada  5 tasks: each y scale's gamma0 times a factor that starts at 1 and, at every validation once
ptive      ``cv_window`` of them are known, is multiplied by 0.95 when the coefficient of variation (sample
           std / mean) of that scale's last ``cv_window`` validation rates is below 0.01 and by 1.02 above
           0.05, clipped to [0.5, 1.5] (seed 004's per-scale adaptive gamma, fed with the real per-scale
           rates it never received)
=========  =========================================================================================
"""
from __future__ import annotations

import inspect
import math
from typing import Callable, Sequence

import torch
from torch import Tensor


HPCM_MILESTONES = (500, 1500, 2750)
HPCM_MIN_GAMMA = 0.0005


class GammaSchedule:
    """Base class: sets ``optimizer.gamma = gamma_at(epoch)`` at construction and on every :meth:`step`."""

    def __init__(self, optimizer, final_ratio: float = 0.2):
        if not hasattr(optimizer, "gamma"):
            raise ValueError(f"{type(optimizer).__name__} has no gamma; gamma schedules need balanced_rd.Balanced")
        if not 0.0 <= final_ratio <= 1.0:
            raise ValueError(f"gamma final ratio must be in [0, 1], got {final_ratio}")
        self.optimizer = optimizer
        gamma = optimizer.gamma
        self.base_gamma: float | Tensor = gamma if isinstance(gamma, float) else gamma.detach().cpu().clone()
        self.final_ratio = float(final_ratio)
        self.epoch = 0
        self._apply()

    def gamma_at(self, epoch: int) -> float | Tensor:
        """gamma for ``epoch`` (a float, or a per-task vector when gamma0 is one)."""
        raise NotImplementedError

    def step(self, val_loss: float | None = None, scale_rates: Sequence[float] | None = None) -> float | Tensor:
        """Advance one epoch; returns gamma. ``val_loss`` (that epoch's validation loss, read by 'adaptive') and
        ``scale_rates`` (its validation rates of y_s1..y_s3, read by 'scale_adaptive') are None on epochs
        without validation."""
        self.epoch += 1
        return self._apply()

    def _apply(self) -> float | Tensor:
        gamma = self.gamma_at(self.epoch)
        self.optimizer.gamma = gamma
        return gamma

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self._apply()


class ConstantGamma(GammaSchedule):
    """gamma0 at every epoch."""

    def gamma_at(self, epoch: int) -> float | Tensor:
        return self.base_gamma


class FollowLRGamma(GammaSchedule):
    """gamma0 times the model's lr factor (scheduled lr / base lr), which the trainer passes to :meth:`follow`
    before every step; the epoch count plays no part."""

    def __init__(self, optimizer):
        self.lr_factor = 1.0
        super().__init__(optimizer)

    def follow(self, lr_factor: float) -> float | Tensor:
        self.lr_factor = float(lr_factor)
        return self._apply()

    def gamma_at(self, epoch: int) -> float | Tensor:
        return self.base_gamma * self.lr_factor


class _AnnealedGamma(GammaSchedule):
    """Shared warm-up/progress bookkeeping of the linear, cosine and adaptive schedules."""

    def __init__(self, optimizer, total_epochs: int, final_ratio: float = 0.2, warmup_epochs: int = 0):
        if total_epochs is None or warmup_epochs < 0 or total_epochs <= warmup_epochs:
            raise ValueError(f"gamma schedule needs total epochs > warm-up epochs >= 0, got total={total_epochs}, "
                            f"warm-up={warmup_epochs}; set --epochs / --gamma_warmup_epochs")
        self.total_epochs = int(total_epochs)
        self.warmup_epochs = int(warmup_epochs)
        super().__init__(optimizer, final_ratio)

    def progress(self, epoch: int) -> float:
        return min(max((epoch - self.warmup_epochs) / (self.total_epochs - self.warmup_epochs), 0.0), 1.0)

    def cosine_factor(self, epoch: int) -> float:
        ratio = self.final_ratio
        return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * self.progress(epoch)))


class LinearGamma(_AnnealedGamma):
    """gamma0 -> r * gamma0 linearly after warm-up."""

    def gamma_at(self, epoch: int) -> float | Tensor:
        return self.base_gamma * (1 - (1 - self.final_ratio) * self.progress(epoch))


class CosineGamma(_AnnealedGamma):
    """gamma0 -> r * gamma0 along a half cosine after warm-up."""

    def gamma_at(self, epoch: int) -> float | Tensor:
        return self.base_gamma * self.cosine_factor(epoch)


class StepGamma(GammaSchedule):
    """gamma0 * factor^(milestones passed), floored at ``min_gamma`` (or r * gamma0)."""

    def __init__(self, optimizer, milestones: Sequence[int], factor: float = 0.5, final_ratio: float = 0.2,
                 min_gamma: float | None = None):
        if not 0.0 < factor <= 1.0:
            raise ValueError(f"gamma step factor must be in (0, 1], got {factor}")
        self.milestones = sorted(int(m) for m in milestones)
        self.factor = float(factor)
        self.min_gamma = None if min_gamma is None else float(min_gamma)
        super().__init__(optimizer, final_ratio)

    def gamma_at(self, epoch: int) -> float | Tensor:
        passed = sum(1 for milestone in self.milestones if milestone <= epoch)
        gamma = self.base_gamma * self.factor ** passed
        floor = self.min_gamma if self.min_gamma is not None else self.base_gamma * self.final_ratio
        if isinstance(gamma, Tensor):
            return torch.maximum(gamma, torch.as_tensor(floor, dtype=gamma.dtype))
        return max(gamma, floor)


class AdaptiveGamma(_AnnealedGamma):
    """Cosine schedule times a factor chosen from the variability of recent validation losses."""

    def __init__(self, optimizer, total_epochs: int, final_ratio: float = 0.2, warmup_epochs: int = 0,
                 cv_window: int = 50, cv_low: float = 0.01, cv_high: float = 0.05,
                 down: float = 0.8, up: float = 1.2):
        if cv_window < 2:
            raise ValueError(f"gamma CV window must be >= 2 validation losses, got {cv_window}")
        self.cv_window, self.cv_low, self.cv_high, self.down, self.up = int(cv_window), cv_low, cv_high, down, up
        self.val_losses: list[float] = []
        super().__init__(optimizer, total_epochs, final_ratio, warmup_epochs)

    def step(self, val_loss: float | None = None, scale_rates: Sequence[float] | None = None) -> float | Tensor:
        if val_loss is not None:
            self.val_losses = (self.val_losses + [float(val_loss)])[-self.cv_window:]
        return super().step()

    def variation(self) -> float | None:
        """Coefficient of variation of the remembered validation losses (None with fewer than two)."""
        if len(self.val_losses) < 2:
            return None
        mean = sum(self.val_losses) / len(self.val_losses)
        std = math.sqrt(sum((v - mean) ** 2 for v in self.val_losses) / len(self.val_losses))
        return std / abs(mean) if mean != 0 else math.inf

    def gamma_at(self, epoch: int) -> float | Tensor:
        cv = self.variation()
        multiplier = 1.0 if cv is None else self.down if cv < self.cv_low else self.up if cv > self.cv_high else 1.0
        factor = min(max(self.cosine_factor(epoch) * multiplier, self.final_ratio), 1.5)
        return self.base_gamma * factor

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "val_losses": list(self.val_losses)}

    def load_state_dict(self, state: dict) -> None:
        self.val_losses = [float(v) for v in state["val_losses"]]
        super().load_state_dict(state)


# Seed 004's hierarchical schedule: knots as fractions of the run and each y scale's factor at them.
HIERARCHICAL_KNOTS = (0.0, 0.1, 0.5, 2500 / 3000, 1.0)
HIERARCHICAL_FACTORS = ((1.0, 1.2, 0.9, 0.7, 0.5), (0.8, 0.8, 1.1, 0.8, 0.5), (0.6, 0.6, 1.0, 1.1, 1.3))
N_SCALE_TASKS = 5  # distortion, z, y_s1, y_s2, y_s3


def _per_task_base(optimizer) -> Tensor:
    """gamma0 as a vector over the 5 hierarchical tasks (a single gamma0 is given to every task)."""
    n_tasks = getattr(optimizer, "n_tasks", None)
    if n_tasks != N_SCALE_TASKS:
        raise ValueError(f"this gamma strategy schedules the three HPCM y scales of the 5 hierarchical tasks; "
                         f"the optimizer balances {n_tasks} (use --hierarchical_tasks true)")
    gamma = optimizer.gamma
    return gamma.detach().cpu().clone() if isinstance(gamma, Tensor) else torch.full((N_SCALE_TASKS,), float(gamma))


class HierarchicalGamma(GammaSchedule):
    """Seed 004's 4-stage per-scale schedule (see the module table), stretched over ``total_epochs``."""

    def __init__(self, optimizer, total_epochs: int | None):
        if not total_epochs or total_epochs < 1:
            raise ValueError(f"the hierarchical gamma schedule needs the run's epochs, got {total_epochs}")
        self.total_epochs = int(total_epochs)
        optimizer.gamma = _per_task_base(optimizer)
        super().__init__(optimizer)

    def scale_factors(self, epoch: int) -> list[float]:
        fraction = min(epoch / self.total_epochs, 1.0)
        for left, right in zip(range(len(HIERARCHICAL_KNOTS) - 1), range(1, len(HIERARCHICAL_KNOTS))):
            if fraction <= HIERARCHICAL_KNOTS[right]:
                t = (fraction - HIERARCHICAL_KNOTS[left]) / (HIERARCHICAL_KNOTS[right] - HIERARCHICAL_KNOTS[left])
                return [f[left] + (f[right] - f[left]) * t for f in HIERARCHICAL_FACTORS]
        return [f[-1] for f in HIERARCHICAL_FACTORS]

    def gamma_at(self, epoch: int) -> float | Tensor:
        factors = torch.tensor([1.0, 1.0, *self.scale_factors(epoch)], dtype=self.base_gamma.dtype)
        return self.base_gamma * factors


class ScaleAdaptiveGamma(GammaSchedule):
    """Per y scale: gamma0 times a factor moved by the variability of that scale's validation rate."""

    LOW, HIGH, DOWN, UP, LIMITS = 0.01, 0.05, 0.95, 1.02, (0.5, 1.5)

    def __init__(self, optimizer, cv_window: int = 50):
        if cv_window < 2:
            raise ValueError(f"gamma CV window must be >= 2 validations, got {cv_window}")
        self.cv_window = int(cv_window)
        self.history: list[list[float]] = [[], [], []]
        self.factors = [1.0, 1.0, 1.0]
        optimizer.gamma = _per_task_base(optimizer)
        super().__init__(optimizer)

    def step(self, val_loss: float | None = None, scale_rates: Sequence[float] | None = None) -> float | Tensor:
        if scale_rates is not None:
            for index, rate in enumerate(scale_rates):
                history = self.history[index] = (self.history[index] + [float(rate)])[-self.cv_window:]
                if len(history) == self.cv_window:
                    values = torch.tensor(history, dtype=torch.float64)
                    cv = float(values.std() / values.mean()) if values.mean() != 0 else math.inf
                    multiplier = self.DOWN if cv < self.LOW else self.UP if cv > self.HIGH else 1.0
                    self.factors[index] = min(max(self.factors[index] * multiplier, self.LIMITS[0]), self.LIMITS[1])
        return super().step()

    def gamma_at(self, epoch: int) -> float | Tensor:
        return self.base_gamma * torch.tensor([1.0, 1.0, *self.factors], dtype=self.base_gamma.dtype)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "history": [list(h) for h in self.history], "factors": list(self.factors)}

    def load_state_dict(self, state: dict) -> None:
        self.history = [[float(v) for v in h] for h in state["history"]]
        self.factors = [float(f) for f in state["factors"]]
        super().load_state_dict(state)


def _constant(optimizer) -> GammaSchedule:
    return ConstantGamma(optimizer)


def _follow(optimizer) -> GammaSchedule:
    return FollowLRGamma(optimizer)


def _linear(optimizer, total_epochs: int | None = None, final_ratio: float = 0.2,
            warmup_epochs: int = 0) -> GammaSchedule:
    return LinearGamma(optimizer, total_epochs, final_ratio, warmup_epochs)


def _cosine(optimizer, total_epochs: int | None = None, final_ratio: float = 0.2,
            warmup_epochs: int = 0) -> GammaSchedule:
    return CosineGamma(optimizer, total_epochs, final_ratio, warmup_epochs)


def _step(optimizer, milestones: Sequence[int] = (1000, 2000, 2500), step_factor: float = 0.5,
          final_ratio: float = 0.2, min_gamma: float | None = None) -> GammaSchedule:
    return StepGamma(optimizer, milestones, step_factor, final_ratio, min_gamma)


def _hpcm(optimizer, final_ratio: float = 0.2, min_gamma: float | None = None) -> GammaSchedule:
    return StepGamma(optimizer, HPCM_MILESTONES, 0.5, final_ratio, HPCM_MIN_GAMMA if min_gamma is None else min_gamma)


def _adaptive(optimizer, total_epochs: int | None = None, final_ratio: float = 0.2, warmup_epochs: int = 0,
              cv_window: int = 50) -> GammaSchedule:
    return AdaptiveGamma(optimizer, total_epochs, final_ratio, warmup_epochs, cv_window)


def _hierarchical(optimizer, total_epochs: int | None = None) -> GammaSchedule:
    return HierarchicalGamma(optimizer, total_epochs)


def _scale_adaptive(optimizer, cv_window: int = 50) -> GammaSchedule:
    return ScaleAdaptiveGamma(optimizer, cv_window)


# The registry: each strategy's builder; its keyword arguments are the options it reads.
GAMMA_SCHEDULES: dict[str, Callable[..., GammaSchedule]] = {
    "constant": _constant, "follow": _follow, "linear": _linear, "cosine": _cosine, "step": _step, "hpcm": _hpcm,
    "adaptive": _adaptive, "hierarchical": _hierarchical, "scale_adaptive": _scale_adaptive}
GAMMA_STRATEGIES = tuple(GAMMA_SCHEDULES)
GAMMA_SCHEDULE_OPTIONS: dict[str, tuple[str, ...]] = {
    name: tuple(inspect.signature(builder).parameters)[1:] for name, builder in GAMMA_SCHEDULES.items()}


def make_gamma_schedule(name: str, optimizer, **options) -> GammaSchedule:
    """Build the schedule ``name`` (one of :data:`GAMMA_STRATEGIES`) for ``optimizer``.

    ``options`` are keyword arguments of the strategies (:data:`GAMMA_SCHEDULE_OPTIONS`); each strategy takes
    the ones it reads and ignores the others.
    """
    if name not in GAMMA_SCHEDULES:
        raise ValueError(f"unknown gamma strategy {name!r}; choose one of: {', '.join(GAMMA_STRATEGIES)}")
    known = {option for names in GAMMA_SCHEDULE_OPTIONS.values() for option in names}
    if set(options) - known:
        raise TypeError(f"unknown gamma schedule option(s): {', '.join(sorted(set(options) - known))}")
    return GAMMA_SCHEDULES[name](optimizer, **{k: v for k, v in options.items() if k in GAMMA_SCHEDULE_OPTIONS[name]})
