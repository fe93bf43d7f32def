"""Seed 004's fine-tuning tools: parameter groups, frozen and progressively unfrozen groups, per-scale stopping.

Every parameter of a registry model belongs to exactly one named group, chosen by its name:

* ``analysis``: the analysis transform ``g_a``; ``synthesis``: the synthesis transform ``g_s``;
* ``hyper``: the hyper transforms ``h_a`` and ``h_s``;
* ``context``: the context model: HPCM's spatial-prior adaptors and nets, attention blocks, context fusion net
  and per-step adaptive parameters; ELIC's channel context and checkerboard context and parameter nets;
* ``entropy``: the parameters of the z entropy model (CompressAI's ``entropy_bottleneck``, HPCM's
  ``means_hyper``/``scales_hyper``).

Seed 004 matched substrings (``context``, ``entropy_bottleneck``, ``gaussian_conditional``) that select
nothing of HPCM but two 1x1 convolutions; the patterns here are written against the real module names, and
``python -m common.train.finetune MODEL`` prints which parameters fall in which group.

``--group_lr GROUP=MULT`` gives a group ``MULT`` times the schedule's learning rate (seed 004's
``--context_lr_ratio R`` is ``--group_lr context=R``); ``--freeze_entropy`` leaves the entropy group (and
the entropy bottleneck's quantiles) as loaded; ``--unfreeze_at GROUP=EPOCH`` keeps a group frozen until
that epoch (``--progressive_unfreeze``: seed 004's hyper at 100 and context at 200);
``--scale_early_stopping`` freezes the task weight of each HPCM y scale once its validation rate has
plateaued (:class:`ScaleEarlyStopping`).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch
from torch import nn

from common.errors import UserError
from common.train import distributed
from common.train.callbacks import Callback, TrainerState
from common.train.config import FinetuneConfig

PARAMETER_GROUPS: dict[str, str] = {
    "analysis": r"g_a\.",
    "synthesis": r"g_s\.",
    "hyper": r"(latent_codec\.hyper\.)?h_[as]\.",
    "context": r"(y_spatial_prior\w*|attn_s\d|context_net|adaptive_params_list)\."
               r"|latent_codec\.y\.(channel_context|latent_codec\.y\d+\.(context_prediction|entropy_parameters))\.",
    "entropy": r"(latent_codec\.hyper\.)?(entropy_bottleneck|gaussian_conditional)\.|(means|scales)_hyper$",
}
# Seed 004's --progressive_unfreeze: the hyper transforms train from epoch 100, the context model from 200.
SEED_UNFREEZE_EPOCHS = {"hyper": 100, "context": 200}
# The HPCM y scales whose task weights --scale_early_stopping freezes, with their validation metric.
SCALE_RATES = {"rate_y_s1": "bpp_y_s1", "rate_y_s2": "bpp_y_s2", "rate_y_s3": "bpp_y_s3"}
_COMPILED = {group: re.compile(pattern) for group, pattern in PARAMETER_GROUPS.items()}


def group_of(name: str) -> str | None:
    """The group of parameter ``name`` (a prefix of DDP/QAT wrappers is ignored), None if no pattern matches."""
    name = name.removeprefix("module.")
    matches = [group for group, pattern in _COMPILED.items() if pattern.match(name)]
    if len(matches) > 1:
        raise RuntimeError(f"parameter {name} matches the groups {matches}; fix PARAMETER_GROUPS")
    return matches[0] if matches else None


def named_groups(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names by group (those of no group under ``"other"``), in registration order."""
    groups: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        groups.setdefault(group_of(name) or "other", []).append(name)
    return groups


def _pairs(items: Sequence[str], flag: str, value_type, groups: Iterable[str]) -> dict[str, float]:
    known = set(groups)
    parsed = {}
    for item in items:
        group, sep, value = item.partition("=")
        if not sep or group not in known:
            raise UserError(f"{flag} {item}: expected GROUP=VALUE with GROUP one of this model's groups: "
                            f"{', '.join(sorted(known))}")
        try:
            parsed[group] = value_type(value)
        except ValueError:
            raise UserError(f"{flag} {item}: {value!r} is not a {value_type.__name__}") from None
    return parsed


def group_lr_multipliers(cfg: FinetuneConfig, groups: Iterable[str]) -> dict[str, float]:
    """Each named group's multiplier of the scheduled lr (only the groups that differ from 1)."""
    groups = list(groups)
    multipliers = _pairs(cfg.group_lr, "--group_lr", float, groups)
    if cfg.context_lr_ratio is not None:
        if "context" in multipliers:
            raise UserError("--context_lr_ratio and --group_lr context=... both set the context lr; give one")
        if "context" not in groups:
            raise UserError("--context_lr_ratio: this model has no context model (its groups: "
                            f"{', '.join(groups)}); drop the flag")
        multipliers["context"] = cfg.context_lr_ratio
    for group, value in multipliers.items():
        if not value >= 0:
            raise UserError(f"--group_lr {group}={value}: the multiplier must be >= 0")
    return {group: value for group, value in multipliers.items() if value != 1.0}


def unfreeze_epochs(cfg: FinetuneConfig, groups: Iterable[str]) -> dict[str, int]:
    """The epoch from which each progressively unfrozen group trains."""
    groups = list(groups)
    epochs = _pairs(cfg.unfreeze_at, "--unfreeze_at", int, groups)
    if cfg.progressive_unfreeze:
        if epochs:
            raise UserError("--progressive_unfreeze is seed 004's --unfreeze_at hyper=100 context=200; give one of them")
        epochs = {group: epoch for group, epoch in SEED_UNFREEZE_EPOCHS.items() if group in groups}
        if not epochs:
            raise UserError(f"--progressive_unfreeze unfreezes the hyper transforms and the context model, which "
                            f"this model does not have (its groups: {', '.join(groups)}); drop the flag")
    for group, epoch in epochs.items():
        if epoch < 0:
            raise UserError(f"--unfreeze_at {group}={epoch}: the epoch must be >= 0")
    return epochs


def check_flags(cfg: FinetuneConfig, hierarchical_tasks: bool, optimizer: str) -> None:
    """Refuse combinations that would be silently ignored."""
    if cfg.scale_early_stopping and not (hierarchical_tasks and optimizer == "balanced"):
        raise UserError("--scale_early_stopping freezes the task weights of the HPCM y scales: it needs "
                        "--hierarchical_tasks true with --optimizer balanced (or --use_balanced)")
    defaults = FinetuneConfig()
    if not cfg.scale_early_stopping and (cfg.early_stopping_patience != defaults.early_stopping_patience
                                         or cfg.early_stopping_tol != defaults.early_stopping_tol):
        raise UserError("--early_stopping_patience/--early_stopping_tol are options of --scale_early_stopping; "
                        "add it or drop them")


class ParameterPlan:
    """Which trainable parameters train at which lr multiplier, which are frozen for good or until an epoch."""

    def __init__(self, model: nn.Module, trainable: Sequence[nn.Parameter], cfg: FinetuneConfig):
        named = dict(model.named_parameters())
        groups = named_groups(model)
        present = [group for group in groups if group != "other"]
        self.multipliers = group_lr_multipliers(cfg, present)
        self.unfreeze = unfreeze_epochs(cfg, present)
        trainable_ids = {id(p) for p in trainable}
        frozen = {"entropy"} if cfg.freeze_entropy else set()
        if cfg.freeze_entropy and "entropy" not in groups:
            raise UserError("--freeze_entropy: this model has no entropy-model parameters; drop the flag")
        for name in groups.get("entropy", []) if cfg.freeze_entropy else []:
            named[name].requires_grad_(False)
        self.by_group = {group: [named[name] for name in names if id(named[name]) in trainable_ids]
                         for group, names in groups.items() if group not in frozen}
        self._unfrozen: set[str] | None = None

    def trainable(self) -> list[nn.Parameter]:
        return [p for params in self.by_group.values() for p in params]

    def optimizer_params(self, params: Sequence[nn.Parameter], lr: float) -> list | list[dict]:
        """``params`` as the optimizer takes them: one list, or one group per multiplier (key ``lr_mult``)."""
        if not self.multipliers:
            return list(params)
        wanted = {id(p) for p in params}
        groups = []
        for group, members in self.by_group.items():
            members = [p for p in members if id(p) in wanted]
            if members:
                mult = self.multipliers.get(group, 1.0)
                groups.append({"params": members, "lr": lr * mult, "lr_mult": mult, "name": group})
        return groups

    def apply_epoch(self, epoch: int) -> bool:
        """Freeze the groups whose unfreeze epoch is after ``epoch``, unfreeze the others; True if anything changed."""
        unfrozen = {group for group, start in self.unfreeze.items() if epoch >= start}
        if unfrozen == self._unfrozen:
            return False
        self._unfrozen = unfrozen
        for group in self.unfreeze:
            for param in self.by_group.get(group, []):
                param.requires_grad_(group in unfrozen)
        return True


    def training_groups(self) -> list[str]:
        return [group for group, params in self.by_group.items() if params and any(p.requires_grad for p in params)]


def lr_multipliers(optimizer: torch.optim.Optimizer) -> list[float]:
    """Each param group's multiplier of the scheduled lr (1 for groups built without one)."""
    return [group.get("lr_mult", 1.0) for group in optimizer.param_groups]


class ScaleEarlyStopping(Callback):
    """Freezes the task weight of each HPCM y scale once its validation rate has plateaued.

    A scale has plateaued when every validation of the last ``patience`` epochs (at least two, spanning that
    many epochs) lies within ``tol`` (relative) of their mean; from then on its weight stays where it is and
    the other tasks share the rest (:meth:`balanced_rd.Balanced.freeze_tasks`). Seed 004 counted patience on
    collinear proxies and only stopped the run; here the frozen set is part of the optimizer's state, so a
    resumed run keeps it, and the history is read back from ``val_log.csv``.
    """

    def __init__(self, patience: int, tol: float):
        self.patience, self.tol = patience, tol

    def plateaued(self, rows: Sequence[dict], metric: str, epoch: int) -> bool:
        window = [float(row[f"val_{metric}"]) for row in rows
                  if f"val_{metric}" in row and epoch - int(row["epoch"]) <= self.patience]
        span = [int(row["epoch"]) for row in rows if f"val_{metric}" in row]
        if len(window) < 2 or not span or epoch - min(span) < self.patience:
            return False
        mean = sum(window) / len(window)
        return max(window) - min(window) <= self.tol * abs(mean)

    def on_validation(self, trainer: TrainerState, val: dict[str, float]) -> None:
        optimizer = trainer.optimizer
        rows = trainer.val_log.rows() if trainer.main else []
        names = list(optimizer.task_names)
        frozen = set(optimizer.frozen_task_names())
        newly = [task for task, metric in SCALE_RATES.items()
                 if task not in frozen and self.plateaued(rows, metric, trainer.epoch_index())]
        newly = distributed.broadcast_object(trainer.dist, newly)
        if newly:
            optimizer.freeze_tasks([names.index(task) for task in newly])
            if trainer.main:
                print(f"epoch {trainer.epoch_index()}: the rate of {', '.join(newly)} has plateaued "
                      f"(within {self.tol:.1%} for {self.patience} epochs); its task weight is frozen")


def main(argv: Sequence[str] | None = None) -> None:
    """Print each group's parameters for registry models (what ``--group_lr`` and the freezing flags select)."""
    from common import models

    from common.cli import OneLineErrorParser

    parser = OneLineErrorParser(prog="python -m common.train.finetune", description=main.__doc__)
    parser.add_argument("model", nargs="+", help="registry names, e.g. hpcm-base bmshj2018-factorized")
    args = parser.parse_args(argv)
    for name in args.model:
        model = models.build(name)
        print(f"{name}:")
        sizes = dict(model.named_parameters())
        for group, names in named_groups(model).items():
            count = sum(sizes[n].numel() for n in names)
            print(f"  {group}: {len(names)} tensors, {count} parameters")
            for param_name in names:
                print(f"    {param_name}")


if __name__ == "__main__":
    from common.cli import run_main

    run_main(main)
