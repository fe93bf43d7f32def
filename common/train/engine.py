"""The training engine behind ``python -m common.train``.

One loop serves every recipe: plain Adam/AdamW, the Balanced R-D optimizer, layer replacements, QAT and
HPCM. What a recipe changes is configuration, never a copy of this loop.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

import common.models as models
from balanced_rd import FollowLRGamma, TaskLossError, TaskWeightedOptimizer
from common import data, losses, qat, receipt, replace
from common.assembly import Recipe, assemble, check_finite_parameters, load_model, start_from_weights
from common.models import memory_format
from common.checkpoint import (CHECKPOINT_FORMAT, atomic_link, atomic_save, atomic_write_text, load_file, model_only,
                               remove_stale_temporaries)
from common.errors import UserError
from common.eval.evaluate import evaluate_tensors
from common.paths import output_dir
from common.train import convergence, distributed, finetune, optimizers, precision, run_folder
from common.train.callbacks import Callback
from common.train.ema import WeightEMA
from common.train.logging import MetricsLog, WandbRun
from common.train.config import DistillConfig, FinetuneConfig, ModelConfig, ScheduleConfig, TrainConfig
from common.train.plots import plot_task_weights
from common.train.recon import ReconWriter
from common.train.sampler import ResumableSampler
from common.train.step import training_step

DEFAULT_EPOCHS = 10
# Without --val_every, validation (and its checkpoints) follows epochs but no more often than this many steps:
# on a small folder an epoch is a step or two.
VALIDATION_STEPS = 500
# Flags that --resume may change: the learning rate and the run length (the schedule is refitted to them), and
# what only concerns logging, output or the machine. Flags that only choose the starting weights do not apply
# to a resumed run. Any other difference from the checkpoint's flags is refused.
RESUME_OVERRIDES = ("lr", "steps", "epochs")
RESUME_FREE = ("resume", "overwrite", "checkpoint", "pretrained", "trust_checkpoint", "progress", "wandb",
               "wandb_project", "val_every", "recon_every", "recon_count", "recon_dir", "recon_subdir", "save_every_steps",
               "num_workers", "device", "cache_images_mb", "max_image_pixels", "save_dir", "strict")


def complete_config(cfg: TrainConfig) -> None:
    """Fill in what the flags imply, as a run records it in its checkpoints: the optimizer named by
    --use_balanced, --finetune_lr as the lr of --finetune, and the student of --resume_student as the weights."""
    cfg.optim.optimizer = optimizers.optimizer_name(cfg.optim)
    if cfg.tune.finetune:
        cfg.schedule.lr = cfg.tune.finetune_lr
    if cfg.distill.resume_student:
        cfg.model.checkpoint = cfg.distill.resume_student


def flag_changes(recorded: dict, config: TrainConfig, free: Sequence[str] = RESUME_FREE) -> str:
    """The flags whose value in ``config`` differs from a checkpoint's ``recorded`` ones, other than ``free``
    (e.g. "--gamma 0.003 (now 0.03)"); empty when they agree."""
    current = config.flat()
    changed = [name for name, value in current.items()
               if name in recorded and recorded[name] != value and name not in free]
    shown = ", ".join(f"--{n} {recorded[n]!r} (now {current[n]!r})" for n in changed[:3])
    return shown + (" and more" if len(changed) > 3 else "")


def check_finished_run(folder: Path, config: TrainConfig) -> None:
    """Refuse to reuse the finished run in ``folder`` for ``config`` when its checkpoint was trained with other
    flags: a sweep that skips it would otherwise report that model as the run it was asked for."""
    ckpt = load_file(folder / "last.pt", trust=config.model.trust_checkpoint)
    config = copy.deepcopy(config)
    complete_config(config)
    changes = flag_changes(ckpt.get("args", {}) if isinstance(ckpt, dict) else {}, config)
    if changes:
        raise UserError(f"{folder} holds a finished run trained with {changes}; give another output folder or "
                        "delete that run to train it again")


def check_config(cfg: TrainConfig) -> None:
    """Refuse flag values and combinations that no run accepts (one line each), before anything is built;
    completes ``cfg`` as the run records it (:func:`complete_config`)."""
    optimizers.check_flags(cfg.optim)
    losses.check_flags(cfg.loss, distill=cfg.distill.distill)
    finetune.check_flags(cfg.tune, cfg.loss.hierarchical_tasks, optimizers.optimizer_name(cfg.optim))
    if cfg.tune.finetune:
        _check_finetune(cfg)
    _check_unused_variant_flags(cfg)
    if cfg.distill.resume_student and (cfg.model.checkpoint or cfg.model.pretrained or cfg.distill.distill):
        raise UserError("--resume_student starts from the student's weights; drop --checkpoint, "
                        "--pretrained and --distill")
    complete_config(cfg)
    for section, name, least in ((cfg.schedule, "batch_size", 1), (cfg.output, "val_every", 1),
                                 (cfg.output, "recon_count", 0), (cfg.output, "recon_every", 0)):
        if getattr(section, name) is not None and getattr(section, name) < least:
            raise UserError(f"--{name} must be at least {least}, got {getattr(section, name)}")
    if cfg.schedule.steps is not None and cfg.schedule.steps < 1:
        raise UserError(f"--steps must be at least 1, got {cfg.schedule.steps}")
    if cfg.schedule.epochs is not None and cfg.schedule.epochs < 1:
        raise UserError(f"--epochs must be at least 1, got {cfg.schedule.epochs}")
    if not (math.isfinite(cfg.schedule.lr) and cfg.schedule.lr > 0):
        raise UserError(f"--lr must be a positive number, got {cfg.schedule.lr}")
    if cfg.output.recon_dir and cfg.output.recon_subdir:
        raise UserError("--recon_dir and --recon_subdir both name the reconstruction folder; pass one")
    _check_multistep(cfg)
    if cfg.schedule.sched == "onecycle" and cfg.schedule.lr_warmup_steps:
        raise UserError("--lr_warmup_steps does not combine with --sched onecycle (it has its own warm-up)")
    if cfg.distill.distill and not (cfg.model.checkpoint or cfg.model.pretrained):
        raise UserError("--distill needs the teacher's weights: --pretrained or --checkpoint PATH")


def _check_unused_variant_flags(cfg: TrainConfig) -> None:
    """--distill_l1/--distill_msssim without --distill, --finetune_lr without --finetune and --local_fp32_custom
    without --local_fp32 custom were silently ignored."""
    distill, tune = DistillConfig(), FinetuneConfig()
    if not cfg.distill.distill:
        for name in ("distill_l1", "distill_msssim"):
            if getattr(cfg.distill, name) != getattr(distill, name):
                raise UserError(f"--{name} is an option of --distill (its loss weights); add --distill or drop it")
    if not cfg.tune.finetune and cfg.tune.finetune_lr != tune.finetune_lr:
        raise UserError("--finetune_lr is the learning rate of --finetune; add --finetune or give --lr instead")
    if cfg.precision.local_fp32 != "custom" and cfg.precision.local_fp32_custom:
        raise UserError(f"--local_fp32_custom is read only by --local_fp32 custom, not by --local_fp32 "
                        f"{cfg.precision.local_fp32}; add it or drop --local_fp32_custom")


def _check_multistep(cfg: TrainConfig) -> None:
    sched = cfg.schedule
    given = sched.lr_milestones or sched.lr_factors or sched.lr_milestone_unit != ScheduleConfig().lr_milestone_unit
    if sched.sched != "multistep":
        if given:
            raise UserError("--lr_milestones/--lr_factors/--lr_milestone_unit belong to --sched multistep; "
                            "add it or drop them")
        return
    if not sched.lr_milestones or len(sched.lr_milestones) != len(sched.lr_factors):
        raise UserError("--sched multistep needs --lr_milestones and as many --lr_factors (e.g. --lr_milestones "
                        "2750 2850 2950 --lr_factors 0.3 0.1 0.01)")
    if any(b <= a for a, b in zip(sched.lr_milestones, sched.lr_milestones[1:])):
        raise UserError(f"--lr_milestones must increase, got {' '.join(map(str, sched.lr_milestones))}")


def _check_finetune(cfg: TrainConfig) -> None:
    """Seed 004's --finetune: a new run (epoch 0, a fresh schedule) from given weights at --finetune_lr."""
    if not (cfg.model.checkpoint or cfg.model.pretrained or cfg.distill.resume_student):
        raise UserError("--finetune starts a new run from given weights: add --checkpoint PATH (or --pretrained)")
    default_lr = ScheduleConfig().lr
    if cfg.schedule.lr not in (default_lr, cfg.tune.finetune_lr):
        raise UserError(f"--finetune trains at --finetune_lr ({cfg.tune.finetune_lr}); drop --lr {cfg.schedule.lr} "
                        "or give it as --finetune_lr")


class TrainingDiverged(UserError):
    """The loss or the model outputs became non-finite or exceeded the overflow tolerance."""


@dataclass
class Progress:
    """Where the run is; everything needed to continue it exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_msssim: float = -math.inf
    best_loss: float = math.inf
    wandb_id: str | None = None
    validated_at: int | None = None  # the step of the last validation recorded (its val_log row written)


class TeacherTarget(nn.Module):
    """Distillation (seed 001): the loss compares the student's output with the teacher's reconstruction."""

    def __init__(self, teacher: nn.Module, loss: nn.Module):
        super().__init__()
        self.teacher, self.loss, self.task_names = teacher, loss, loss.task_names

    def forward(self, output: dict[str, Any], x: torch.Tensor) -> dict[str, Any]:
        with torch.no_grad():
            target = self.teacher(x)["x_hat"]
            # Logged beside the student's own PSNR: seed 001's claim is a student within 0.1 dB of its teacher.
            teacher_psnr = losses.psnr(target.clamp(0.0, 1.0), x)
        return {**self.loss(output, target), "teacher_psnr": teacher_psnr}


def checkpoint_names(distill: DistillConfig) -> dict[str, str]:
    """File names of the run's checkpoints; seed 001's fine-tuning stage (``--resume_student``) uses ft_*."""
    if distill.resume_student:
        return {"last": "ft_last.pt", "best_msssim": "ft_best.pt", "best_loss": "ft_best_loss.pt"}
    return {"last": "last.pt", "best_msssim": "best_msssim.pt", "best_loss": "best_loss.pt"}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UserError(f"--device: {exc}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but no CUDA GPU is available; use --device cpu")
    return device


def resolve_amp(mode: str, device: torch.device) -> bool:
    """``--amp`` as parsed (true, false or auto: on for CUDA, off for CPU) on ``device``."""
    return device.type == "cuda" if mode == "auto" else mode == "true"


def model_kwargs(model: ModelConfig) -> dict[str, Any]:
    """The architecture arguments of ``--model`` that the run was given (weights excluded)."""
    if not models.entry(model.model).has_quality:
        if model.quality is not None:
            raise UserError(f"--quality does not apply to {model.model}; drop it")
        return {}
    return {"quality": 1 if model.quality is None else model.quality}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    # Plain types and tensors only, so checkpoints load with weights_only=True.
    _, numpy_keys, numpy_pos, _, _ = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(numpy_keys.astype(np.int64)),
             "numpy_pos": int(numpy_pos), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def split_parameters(model: nn.Module, trainable: list[nn.Parameter]) -> tuple[list, list]:
    """(net parameters, trainable entropy-bottleneck quantiles): the quantiles belong to the aux optimizer only.

    A recipe that freezes the entropy model (e.g. ``--train_scope replaced``) leaves its quantiles untouched.
    """
    quantiles = [p for name, p in model.named_parameters() if models.is_aux_parameter(name) and p.requires_grad]
    quantile_ids = {id(p) for p in quantiles}
    return [p for p in trainable if id(p) not in quantile_ids], quantiles


class Trainer:
    """Builds everything a run needs from parsed flags and runs it (``fit``), calling ``callbacks`` on the way."""

    def __init__(self, config: TrainConfig, callbacks: Sequence[Callback] = ()):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer takes a TrainConfig (common.train.config), got {type(config).__name__}; "
                            "from flags, build it with common.train.options.parse_config")
        self.cfg = cfg = copy.deepcopy(config)  # the run completes it (optimizer name, --resume_student)
        self.callbacks = list(callbacks)
        self.device = resolve_device(cfg.schedule.device)
        self.dist = distributed.init_from_env(self.device.type)
        self.main = self.dist.is_main
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.use_amp = resolve_amp(cfg.precision.amp, self.device)
        self.amp_dtype = precision.amp_dtype(cfg.precision.amp_dtype)
        self.save_dir = Path(cfg.output.save_dir)
        self.names = checkpoint_names(cfg.distill)
        self.teacher: nn.Module | None = None
        check_config(cfg)
        if self.main:
            output_dir(self.save_dir, "--save_dir")
            self._check_existing_run()
            for name in self.names.values():
                remove_stale_temporaries(self.save_dir, name)
        seed_everything(cfg.schedule.seed)  # the same initial weights on every rank

        self.replace_config = replace.config_from_args(cfg.replace)
        self.qat_config = qat.config_from_args(cfg.qat)
        if self.qat_config and self.use_amp:
            warnings.warn("QAT with AMP is not recommended (seed 002: it invites NaNs); consider --amp false. "
                          "Fake quantization itself runs in float32.", stacklevel=2)
        resume_ckpt = self._load_resume_checkpoint()
        self.model = memory_format.apply(self._build_model(resume_ckpt), cfg.schedule.memory_format, self.device)
        self.model_kwargs = (resume_ckpt["model"]["kwargs"] if resume_ckpt is not None
                             else self._architecture_kwargs())
        self.criterion = losses.criterion_from_args(cfg.loss)
        if self.teacher is not None:
            memory_format.apply(self.teacher, cfg.schedule.memory_format, self.device)
            self.criterion = TeacherTarget(self.teacher, losses.DistillationLoss(cfg.distill.distill_l1, cfg.distill.distill_msssim))
        self.train_set, self.val_set = data.build_datasets(cfg.data, seed=cfg.schedule.seed, report=self.main)
        self._check_sizes()
        self.sampler = ResumableSampler(len(self.train_set), cfg.schedule.batch_size, cfg.schedule.seed,
                                        self.dist.rank, self.dist.world_size)
        self.loader = DataLoader(self.train_set, batch_size=cfg.schedule.batch_size, sampler=self.sampler,
                                 num_workers=cfg.data.num_workers, drop_last=True,
                                 pin_memory=self.device.type == "cuda",
                                 # Restarting workers every epoch costs more than a whole step when an
                                 # epoch is a few batches; the dataset reads its epoch from shared memory.
                                 persistent_workers=cfg.data.num_workers > 0,
                                 # A private generator keeps the global RNG (used by the model's
                                 # quantisation noise) untouched when a new epoch iterator starts.
                                 generator=torch.Generator().manual_seed(cfg.schedule.seed))
        self.val_every = cfg.output.val_every or max(1, math.ceil(VALIDATION_STEPS / self.sampler.batches_per_epoch))
        self.recon_every = self.val_every if cfg.output.recon_every is None else cfg.output.recon_every
        self.total_steps = self._total_steps()
        beyond = [step for step in cfg.output.keep_steps if step > self.total_steps]
        if beyond:
            raise UserError(f"--keep_steps {' '.join(map(str, beyond))}: the run has {self.total_steps} steps; keep "
                            "steps within it")
        self.convergence_start = convergence.window_start(self.total_steps)
        self.convergence: convergence.Convergence | None = None
        self.total_epochs = math.ceil(self.total_steps / self.sampler.batches_per_epoch)

        trainable = (replace.set_trainable(self.model, self.replace_config) if self.replace_config
                     else [p for p in self.model.parameters() if p.requires_grad])
        self.parameter_plan = finetune.ParameterPlan(self.model, trainable, cfg.tune)
        self.net_params, self.quantiles = split_parameters(self.model, self.parameter_plan.trainable())
        if not self.net_params:
            raise UserError("no trainable parameters: check --train_scope / --replace_parts / --freeze_entropy")
        self.parameter_plan.apply_epoch(0)
        self.optimizer, self.update_rule = optimizers.build_optimizer(
            self.parameter_plan.optimizer_params(self.net_params, cfg.schedule.lr), cfg.optim,
            n_tasks=len(self.criterion.task_names), lr=cfg.schedule.lr, task_names=self.criterion.task_names)
        self.step_options = optimizers.step_options(cfg.optim)
        self.aux_optimizer = (torch.optim.Adam(self.quantiles, lr=cfg.optim.eb_aux_lr)
                              if cfg.optim.eb_aux and self.quantiles else None)
        self.scheduler = self._build_scheduler()
        self.gamma_schedule = optimizers.build_gamma_schedule(cfg.optim, self.optimizer, self.total_epochs)
        self.scaler = torch.amp.GradScaler(self.device.type,
                                           enabled=self.use_amp and self.amp_dtype == torch.float16)
        self.qat_controller = qat.QATController(self.model, self.qat_config) if self.qat_config else None
        if self.use_amp:
            precision.apply_local_fp32(self.model, cfg.precision.local_fp32, cfg.precision.local_fp32_custom, self.device.type)
        self.ddp_model = distributed.wrap_ddp(self.model, self.dist, self.device)
        self.ema = WeightEMA(self.model, cfg.schedule.ema_decay) if cfg.schedule.ema_decay else None
        if cfg.tune.scale_early_stopping:
            self.callbacks.append(finetune.ScaleEarlyStopping(cfg.tune.early_stopping_patience,
                                                              cfg.tune.early_stopping_tol))
        seed_everything(cfg.schedule.seed + self.dist.rank)  # independent quantisation noise per rank

        self.progress = Progress()
        if resume_ckpt is not None:
            self._restore(resume_ckpt)
        resume_step = self.progress.step if resume_ckpt is not None else None
        # The rows each log held when the checkpoint was written (older checkpoints: the rows up to its step).
        log_rows = (resume_ckpt.get("log_rows") or {}) if resume_ckpt is not None else {}
        default_recon = "recon_ft" if cfg.distill.resume_student else "recon"
        recon_dir = (Path(cfg.output.recon_dir) if cfg.output.recon_dir
                     else self.save_dir / (cfg.output.recon_subdir or default_recon))
        self.recon = ReconWriter(recon_dir,
                                 self.val_set, cfg.output.recon_count) if self.main and self.recon_every > 0 else None
        if self.main:
            self.save_dir.mkdir(parents=True, exist_ok=True)
            self.train_log = MetricsLog(self.save_dir, "train_log", resume_step, log_rows.get("train_log"))
            self.val_log = MetricsLog(self.save_dir, "val_log", resume_step, log_rows.get("val_log"))
            self.wandb = WandbRun(cfg.output.wandb, self.save_dir, cfg.output.wandb_project, cfg.flat(),
                                  self.progress.wandb_id)
            self.progress.wandb_id = self.wandb.run_id

    # ------------------------------------------------------------------ setup
    def multistep_factor(self, t: int) -> float:
        """--lr_factors of the last milestone reached at epoch or step ``t`` (1 before the first)."""
        sched = self.cfg.schedule
        passed = sum(t >= milestone for milestone in sched.lr_milestones)
        return sched.lr_factors[passed - 1] if passed else 1.0

    def _check_existing_run(self) -> None:
        """Refuse to start a new run over an existing one unless asked to (--resume continues it)."""
        if self.cfg.output.resume is not None or self.cfg.output.overwrite:
            return
        found = [name for name in (self.names["last"], "train_log.jsonl") if (self.save_dir / name).exists()]
        if found:
            raise UserError(f"{self.save_dir} already holds a run ({', '.join(found)}): continue it with --resume "
                            "or replace it with --overwrite")

    def _check_sizes(self) -> None:
        multiple = getattr(self.model, "forward_multiple", 1)
        for flag, size in (("--patch_size", self.cfg.data.patch_size), ("--val_patch_size", self.val_set.patch_size)):
            if size % multiple:
                raise UserError(f"{flag} {size} must be a multiple of {multiple} for {self.cfg.model.model}")
        if len(self.train_set) < self.cfg.schedule.batch_size * self.dist.world_size:
            raise UserError(f"the training set has {len(self.train_set)} images, fewer than one batch "
                            f"(--batch_size {self.cfg.schedule.batch_size} x {self.dist.world_size} processes)")

    def _total_steps(self) -> int:
        if self.cfg.schedule.steps is not None:
            return self.cfg.schedule.steps
        return (self.cfg.schedule.epochs or DEFAULT_EPOCHS) * self.sampler.batches_per_epoch

    def _resume_path(self) -> Path | None:
        if self.cfg.output.resume is None:
            return None
        path = self.save_dir / self.names["last"] if self.cfg.output.resume == "auto" else Path(self.cfg.output.resume)
        if not path.is_file():
            raise UserError(f"nothing to resume: {path} does not exist (drop --resume to start a new run)")
        return path

    def _load_resume_checkpoint(self) -> dict | None:
        path = self._resume_path()
        if path is None:
            return None
        ckpt = load_file(path, trust=self.cfg.model.trust_checkpoint)
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "progress" not in ckpt:
            raise UserError(f"{path} is not a training checkpoint of this toolkit; to start from its weights "
                            "use --checkpoint instead of --resume")
        if ckpt["model"]["name"] != self.cfg.model.model:
            raise UserError(f"{path} was trained with --model {ckpt['model']['name']}, not {self.cfg.model.model}")
        changes = flag_changes(ckpt.get("args", {}), self.cfg, RESUME_OVERRIDES + RESUME_FREE)
        if changes:
            raise UserError(f"{path} was trained with {changes}; resume with its flags (only --lr, --steps/--epochs "
                            "and output flags may change) or start a new run")
        return ckpt

    def _build_model(self, resume_ckpt: dict | None) -> nn.Module:
        cfg = self.cfg
        if resume_ckpt is not None:
            recipe = Recipe.read(resume_ckpt, self._resume_path())
            self.replace_config, self.qat_config = recipe.replace, recipe.qat
            model = assemble(recipe)
            model.load_state_dict(resume_ckpt["state_dict"])
            check_finite_parameters(model, self._resume_path())
            if cfg.distill.distill:
                self.teacher = load_model(cfg.model.model, quality=model_kwargs(cfg.model).get("quality", 1),
                                          pretrained=cfg.model.pretrained, checkpoint=cfg.model.checkpoint,
                                          trust=cfg.model.trust_checkpoint).to(self.device)
                self.teacher.requires_grad_(False)
            return model.to(self.device)
        if not (cfg.model.checkpoint or cfg.model.pretrained):
            return assemble(Recipe(cfg.model.model, model_kwargs(cfg.model), self.replace_config, self.qat_config)).to(self.device)
        quality = model_kwargs(cfg.model).get("quality")
        if cfg.distill.distill:
            # The loaded weights are the teacher; the student is a copy with the replaced decoder.
            self.teacher = load_model(cfg.model.model, quality=quality, pretrained=cfg.model.pretrained,
                                      checkpoint=cfg.model.checkpoint, trust=cfg.model.trust_checkpoint).to(self.device)
            self.replace_config = self.replace_config or replace.make_config(decoder_upsample=True)
            student = replace.build_student_from_teacher(self.teacher, self.replace_config)
            return (qat.prepare(student, self.qat_config) if self.qat_config else student).to(self.device)
        model, self.replace_config, self.qat_config = start_from_weights(
            cfg.model.model, quality, pretrained=cfg.model.pretrained, checkpoint=cfg.model.checkpoint,
            trust=cfg.model.trust_checkpoint, replace=self.replace_config, qat_config=self.qat_config)
        return model.to(self.device)

    def _architecture_kwargs(self) -> dict[str, Any]:
        """What rebuilds this model: the flags, or for loaded weights without --quality the quality they have."""
        kwargs = model_kwargs(self.cfg.model)
        loaded = self.cfg.model.checkpoint and not self.cfg.model.pretrained
        if "quality" in kwargs and self.cfg.model.quality is None and loaded:
            n, m = getattr(self.model, "N", None), getattr(self.model, "M", None)
            kwargs["quality"] = models.entry(self.cfg.model.model).quality_of(self.model.state_dict())
            if kwargs["quality"] is None:
                name = self.cfg.model.model
                sizes = [other for other in models.available_models() if other.startswith(f"{name}-")]
                hint = f"; if it is a smaller model, train it as one of: {', '.join(sizes)}" if sizes else ""
                raise UserError(f"{self.cfg.model.checkpoint} holds a {name} with N={n}, M={m}, the channels of "
                                f"no quality 1-8{hint}")
        return kwargs

    def _build_scheduler(self):
        cfg, opt = self.cfg, self.optimizer
        if cfg.schedule.sched == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.total_epochs))
        if cfg.schedule.sched == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=self._group_lrs(), total_steps=self.total_steps,
                                                       pct_start=cfg.schedule.onecycle_pct_start)
        if cfg.schedule.sched == "plateau":
            return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min")
        if cfg.schedule.sched == "multistep":
            return torch.optim.lr_scheduler.LambdaLR(opt, self.multistep_factor)
        return None

    @property
    def steps_lr_per_step(self) -> bool:
        """Whether the scheduler moves every optimizer step (else once per epoch)."""
        sched = self.cfg.schedule
        return sched.sched == "onecycle" or (sched.sched == "multistep" and sched.lr_milestone_unit == "step")

    def _group_lrs(self) -> list[float]:
        """--lr times each param group's multiplier (--group_lr)."""
        return [self.cfg.schedule.lr * mult for mult in finetune.lr_multipliers(self.optimizer)]

    def _schedule_factor(self, scheduled: Sequence[float]) -> float:
        """The schedule's current lr / --lr, read from a param group whose multiplier is not 0."""
        for lr, mult in zip(scheduled, finetune.lr_multipliers(self.optimizer)):
            if mult > 0:
                return lr / (self.cfg.schedule.lr * mult)
        return 0.0

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self) -> dict[str, Any]:
        return {
            **Recipe(self.cfg.model.model, self.model_kwargs, self.replace_config, self.qat_config).record(),
            "state_dict": self.model.state_dict(),
            "ema_state_dict": self.ema.synced(self.model).state_dict() if self.ema else None,
            "ema_updates": self.ema.updates if self.ema else 0,
            "optimizer": self.optimizer.state_dict(),
            "aux_optimizer": self.aux_optimizer.state_dict() if self.aux_optimizer else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler else None,
            "gamma_schedule": self.gamma_schedule.state_dict() if self.gamma_schedule else None,
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "progress": asdict(self.progress),
            # A resume keeps exactly these rows: a row written after this checkpoint (a validation whose own
            # checkpoint a kill prevented) is written again by the resumed run, never twice.
            "log_rows": {"train_log": self.train_log.count, "val_log": self.val_log.count} if self.main else None,
            "step": self.progress.step,
            "epoch": self.progress.epoch,
            "args": self.cfg.flat(),
        }

    def save(self, name: str, ckpt: dict | None = None) -> Path:
        """Write a checkpoint atomically; weights that are no longer finite are never written over good ones."""
        path = self.save_dir / name
        if not all(torch.isfinite(p).all() for p in self.model.parameters()):
            self._diverged("the weights became non-finite")
        if self.main:
            atomic_save(ckpt if ckpt is not None else self.checkpoint(), path)
        return path

    def _restore(self, ckpt: dict) -> None:
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except ValueError as exc:
            raise UserError(f"the checkpoint's optimizer state does not fit --optimizer "
                            f"{self.cfg.optim.optimizer}: {exc}") from exc
        if self.aux_optimizer and ckpt.get("aux_optimizer"):
            self.aux_optimizer.load_state_dict(ckpt["aux_optimizer"])
        if self.scheduler and ckpt.get("scheduler"):
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.gamma_schedule and ckpt.get("gamma_schedule"):
            self.gamma_schedule.load_state_dict(ckpt["gamma_schedule"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None:
            if ckpt.get("ema_state_dict") is None:
                raise UserError("the checkpoint has no weight average to continue; resume without --ema_decay")
            self.ema.load(ckpt["ema_state_dict"], ckpt["ema_updates"])
            # The average is what evaluation and the final checkpoint use: a damaged one must not train on.
            check_finite_parameters(self.ema.module, f"{self._resume_path()} (its weight average)")
        if self.dist.enabled:
            # Each rank draws its own quantisation noise; re-derive it from the resumed step.
            seed_everything(self.cfg.schedule.seed + self.dist.rank + 7919 * ckpt["progress"]["step"])
        else:
            set_rng_state(ckpt["rng"])
        self.progress = Progress(**ckpt["progress"])
        if self.progress.step > self.total_steps:
            # The loop would train nothing and the final save would record the longer run as this shorter one.
            length = (f"--steps {self.cfg.schedule.steps}" if self.cfg.schedule.steps is not None
                      else f"--epochs {self.cfg.schedule.epochs or DEFAULT_EPOCHS}")
            raise UserError(f"{self._resume_path()} has trained {self.progress.step} steps, more than the "
                            f"{self.total_steps} of {length}; resume with a longer run or start a new one")
        self._refit_schedule(ckpt.get("args", {}))

    def _refit_schedule(self, recorded: dict) -> None:
        """Apply a new --lr or run length on --resume: the schedule continues as if it had been set so from the start."""
        cfg, changes, current = self.cfg, [], self.cfg.flat()
        for name in RESUME_OVERRIDES:
            if name in recorded and recorded[name] != current[name]:
                changes.append(f"--{name} {current[name]} (was {recorded[name]})")
        if not changes:
            return
        scheduler = self.scheduler
        if isinstance(scheduler, torch.optim.lr_scheduler.OneCycleLR):
            self.scheduler = self._build_scheduler()  # its phases are fixed at construction
            self.scheduler.last_epoch = self.progress.step - 1
            self.scheduler.step()
        elif isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
            scheduler.base_lrs = self._group_lrs()
            for group, base in zip(self.optimizer.param_groups, self._group_lrs()):
                group["lr"], group["initial_lr"] = base * self.multistep_factor(scheduler.last_epoch), base
        elif isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR):
            # The recursive cosine update continues exactly from the closed-form value at the current epoch.
            scheduler.T_max, scheduler.base_lrs = max(1, self.total_epochs), self._group_lrs()
            for group, lr, initial in zip(self.optimizer.param_groups, scheduler._get_closed_form_lr(), self._group_lrs()):
                group["lr"], group["initial_lr"] = lr, initial
        else:
            for group, lr in zip(self.optimizer.param_groups, self._group_lrs()):
                group["lr"] = lr
        if self.main:
            print(f"resuming at step {self.progress.step} with {', '.join(changes)}; the {cfg.schedule.sched} schedule now "
                  f"spans {self.total_steps} steps")

    # ------------------------------------------------------------------ one step
    def _check_outputs(self, out: dict[str, Any]) -> None:
        if not self.cfg.precision.overflow_check:
            return
        tensors = {"x_hat": out["x_hat"], **{f"likelihoods[{k}]": v for k, v in out["likelihoods"].items()}}
        for name, tensor in tensors.items():
            tensor = tensor.detach()
            if not torch.isfinite(tensor).all():
                self._diverged(f"{name} has NaN/Inf")
            peak = tensor.abs().max().item()
            if peak > self.cfg.precision.overflow_tol:
                self._diverged(f"max |{name}| = {peak:.3g} exceeds --overflow_tol {self.cfg.precision.overflow_tol:g}")

    def _diverged(self, what: str) -> None:
        last = self.save_dir / self.names["last"]
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written before it"
        raise TrainingDiverged(
            f"training stopped at step {self.progress.step + 1}: {what}; {kept} (try a lower --lr, "
            "--lr_warmup_steps, --max_grad_norm or --local_fp32)")

    def _warmup_factor(self) -> float:
        warm = self.cfg.schedule.lr_warmup_steps
        return min(1.0, (self.progress.step + 1) / warm) if warm > 0 else 1.0

    def train_step(self, x: torch.Tensor) -> dict[str, float]:
        """One optimizer step (plus the Balanced logit update and the aux step); returns the logged terms."""
        if self.qat_controller is not None:
            self.qat_controller.on_step(self.progress.step)
        first: dict[str, Any] = {}

        def task_losses(model: nn.Module, batch: torch.Tensor) -> list[torch.Tensor]:
            out = model(batch)
            terms = self.criterion(out, batch)
            if not first:  # the training forward; a Balanced re-forward of the same batch follows
                self._check_outputs(out)
                if not torch.isfinite(terms["loss"]):
                    self._diverged(f"the loss is {terms['loss'].item()}")
                first.update(terms)
            return terms["tasks"]

        factor = self._warmup_factor()
        scheduled = [group["lr"] for group in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, scheduled):
            group["lr"] = lr * factor
        lr_factor = self._schedule_factor(scheduled) * factor
        if self.cfg.optim.w_lr_sched == "follow":
            # Adam on the logits steps about w_lr whatever the size of delta, so under a constant w_lr the task
            # weights keep wandering after the model's lr has decayed; following the schedule lets them settle.
            self.optimizer.w_lr = self.cfg.optim.w_lr * lr_factor
        if isinstance(self.gamma_schedule, FollowLRGamma):
            self.gamma_schedule.follow(lr_factor)
        try:
            training_step(self.ddp_model, self.optimizer, x, task_losses, update=self.update_rule,
                          clip_max_norm=self.cfg.schedule.max_grad_norm if self.cfg.schedule.max_grad_norm > 0 else None,
                          scaler=self.scaler if self.scaler.is_enabled() else None,
                          amp_dtype=self.amp_dtype if self.use_amp else None,
                          step_index=self.progress.step, **self.step_options)
        except TaskLossError as exc:
            raise UserError(str(exc)) from exc
        for group, lr in zip(self.optimizer.param_groups, scheduled):
            group["lr"] = lr
        row = {name: float(value.detach()) for name, value in first.items()
               if torch.is_tensor(value) and value.ndim == 0}
        row["lr"] = self.cfg.schedule.lr * self._schedule_factor(scheduled) * factor
        if self.aux_optimizer is not None:
            self.aux_optimizer.zero_grad(set_to_none=True)
            aux_loss = self.model.aux_loss()
            aux_loss.backward()
            self.aux_optimizer.step()
            row["aux_loss"] = float(aux_loss.detach())
        if self.ema is not None:  # after the aux step: the average includes the entropy bottleneck's quantiles
            self.ema.update(self.model)
        if self.scheduler is not None and self.steps_lr_per_step:
            self.scheduler.step()
        if isinstance(self.optimizer, TaskWeightedOptimizer):
            row.update(self.optimizer.task_weight_dict())
        return row

    # ------------------------------------------------------------------ validation
    def evaluated_model(self) -> nn.Module:
        """The model that validation, reconstructions and the convergence verdict judge: the average if on."""
        return self.ema.synced(self.model) if self.ema is not None else self.model

    def validate(self) -> dict[str, float]:
        """Mean validation metrics of the evaluated model; with an average, the raw weights' too (``raw_*``)."""
        val = self._validate(self.evaluated_model())
        if self.ema is not None:
            raw = self._validate(self.model)
            val.update({f"raw_{name}": raw[name] for name in ("loss", "psnr", "bpp_loss") if name in raw})
        return val

    @torch.no_grad()
    def _validate(self, model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        sums: dict[str, float] = {}
        count = 0
        for index in range(len(self.val_set)):
            x = self.val_set[index].unsqueeze(0).to(self.device)
            out = model(x)
            out["x_hat"] = out["x_hat"].clamp(0, 1)
            terms = self.criterion(out, x)
            metrics = {name: float(v) for name, v in terms.items() if torch.is_tensor(v) and v.ndim == 0}
            metrics["psnr"] = float(losses.psnr(out["x_hat"], x))
            metrics["ms_ssim"] = float(losses.ms_ssim(out["x_hat"], x))
            for name, value in metrics.items():
                sums[name] = sums.get(name, 0.0) + value
            count += 1
        model.train(was_training)
        return {name: total / count for name, total in sums.items()}

    def _end_of_epoch(self, epoch_done: int) -> dict[str, float] | None:
        """Per-epoch schedules; validation, best checkpoints and reconstructions every ``--val_every`` epochs."""
        val = self.validate() if epoch_done % self.val_every == 0 else None
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            if val is not None:
                self.scheduler.step(val["loss"])
        elif self.scheduler is not None and not self.steps_lr_per_step:
            self.scheduler.step()
        if self.gamma_schedule is not None:
            scale_rates = ([val[metric] for metric in finetune.SCALE_RATES.values()]
                           if val is not None and self.cfg.loss.hierarchical_tasks else None)
            self.gamma_schedule.step(val_loss=val["loss"] if val is not None else None, scale_rates=scale_rates)
        if self.recon is not None and epoch_done % self.recon_every == 0:
            self._write_recon(f"e{epoch_done - 1:03d}")  # seed 001: tag = 0-based epoch index
        if val is not None:
            self._record_validation(val)
        return val

    def epoch_index(self) -> int:
        """0-based index of the epoch the last step belonged to, as in train_log.csv and the recon folder names."""
        at_epoch_end = self.progress.batch_in_epoch == 0 and self.progress.step > 0
        return self.progress.epoch - 1 if at_epoch_end else self.progress.epoch

    def _validate_at_window_start(self) -> None:
        """Validate where the last 20 % of the run begins, so that convergence can be judged at the end."""
        if self.progress.step == self.convergence_start and self.progress.validated_at != self.progress.step:
            self._record_validation(self.validate())

    def _record_validation(self, val: dict[str, float]) -> None:
        self.progress.validated_at = self.progress.step
        row = {"step": self.progress.step, "epoch": self.epoch_index(), **{f"val_{k}": v for k, v in val.items()}}
        better_msssim = val["ms_ssim"] > self.progress.best_msssim
        better_loss = val["loss"] < self.progress.best_loss
        self.progress.best_msssim = max(self.progress.best_msssim, val["ms_ssim"])
        self.progress.best_loss = min(self.progress.best_loss, val["loss"])
        if self.main:
            # The row before the checkpoint that counts it: a run killed between the two resumes from the
            # previous checkpoint, which drops the row and validates again.
            self.val_log.write(row)
        ckpt = self.checkpoint()
        self.save(self.names["last"], ckpt)
        # Best files hold the model only (no optimizer state); when one validation improves both, one file is
        # written and the other name links to it.
        best = [self.names[name] for name, better in (("best_msssim", better_msssim), ("best_loss", better_loss))
                if better]
        if best:
            written = self.save(best[0], model_only(ckpt))
            if self.main:
                for name in best[1:]:
                    atomic_link(written, self.save_dir / name)
        if self.main:
            run_folder.keep_checkpoints(self.save_dir, ckpt, val, self.cfg.output.keep_last, self.cfg.output.keep_best,
                                        self.progress.step, self.epoch_index(), self.cfg.flat())
            self.wandb.log(row, self.progress.step, split="val")
            tqdm.write(f"epoch {self.epoch_index()} step {self.progress.step}: "
                       + ", ".join(f"{k} {v:.4f}" for k, v in val.items()))
        self._notify("on_validation", val)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, float]:
        """Train to ``total_steps``; returns the final validation metrics."""
        cfg, progress = self.cfg, self.progress
        if self.recon is not None and progress.step == 0:
            self.recon.write_origin()
            self._write_recon("pre_e000")
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=progress.step, desc="train", unit="step",
                   disable=not (self.main and cfg.output.progress), dynamic_ncols=True)
        val: dict[str, float] | None = None
        started = time.perf_counter()
        if self.main:
            files = {split: getattr(dataset, "files", None) for split, dataset in
                     (("train", self.train_set), ("val", self.val_set))}
            receipt.record_start(self.save_dir, self.cfg.flat(), files, progress.step)
        if 0 < progress.batch_in_epoch < self.sampler.batches_per_epoch:
            # Resumed from a checkpoint written at the step where the convergence window starts, before that
            # step's validation (--save_every_steps): validate now, as the uninterrupted run did.
            self._validate_at_window_start()
        while progress.step < self.total_steps:
            self.sampler.set_position(progress.epoch, progress.batch_in_epoch)
            if hasattr(self.train_set, "set_epoch"):
                self.train_set.set_epoch(progress.epoch)
            for x in self.loader:
                self._apply_unfreeze_schedule()
                self._notify("on_step_start")
                row = self.train_step(x.to(self.device, non_blocking=True))
                progress.step += 1
                progress.batch_in_epoch += 1
                self._notify("on_step_end", row)
                if self.main:
                    self.train_log.write({"step": progress.step, "epoch": progress.epoch, **row})
                    self.wandb.log(row, progress.step)
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
                if cfg.output.save_every_steps and progress.step % cfg.output.save_every_steps == 0:
                    self.save(self.names["last"])
                if progress.step in cfg.output.keep_steps and self.main:
                    run_folder.keep_step(self.save_dir, self.checkpoint(), progress.step, self.epoch_index(),
                                         self.cfg.flat())
                if progress.batch_in_epoch < self.sampler.batches_per_epoch:
                    self._validate_at_window_start()  # else after the epoch's own validation below
                if progress.step >= self.total_steps:
                    break
            if progress.batch_in_epoch >= self.sampler.batches_per_epoch:
                progress.epoch += 1
                progress.batch_in_epoch = 0
                began = time.perf_counter()
                val = self._end_of_epoch(progress.epoch)
                self._validate_at_window_start()
                self._notify("on_epoch_end", progress.epoch, val, time.perf_counter() - began)
            else:
                val = None
        bar.close()
        if progress.validated_at != progress.step:  # the last step is always validated
            val = self.validate()
            self._record_validation(val)
        self._finish()
        if self.main:
            tqdm.write(f"trained {progress.step} steps in {time.perf_counter() - started:.1f} s; "
                       f"checkpoints in {self.save_dir}")
            self.convergence = convergence.assess(self.val_log.rows(), self.total_steps, self.train_log.rows())
            atomic_write_text(self.save_dir / "convergence.json", json.dumps(self.convergence.to_dict(), indent=2))
            tqdm.write(self.convergence.summary())
            run_folder.write_readme(self.save_dir, self.cfg.flat(), self.recon.folder if self.recon else None)
        return val

    def _write_recon(self, tag: str) -> None:
        """Reconstruction PNGs under ``tag``, and on W&B a grid of inputs over reconstructions (``recon/<tag>``)."""
        outputs = self.recon.write(self.evaluated_model(), tag)
        if outputs:
            self.wandb.log_grid(f"recon/{tag}", [list(self.recon.subset), outputs], self.progress.step)

    def _apply_unfreeze_schedule(self) -> None:
        """Freeze or unfreeze the --unfreeze_at groups for the current epoch (DDP re-registers what trains)."""
        if self.parameter_plan.apply_epoch(self.progress.epoch) and self.progress.step > 0:
            if self.main:
                tqdm.write(f"epoch {self.progress.epoch}: training {', '.join(self.parameter_plan.training_groups())}")
            if self.dist.enabled:
                self.ddp_model = distributed.wrap_ddp(self.model, self.dist, self.device)

    def _notify(self, hook: str, *values) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *values)

    def _close_receipt(self, update_options: dict) -> None:
        """The receipt's end: real vs estimated bpp of the validation images and the aux losses, for the model as
        saved (``_finish`` built the raw model's tables; an average gets its own again, since syncing it copies the
        raw model's buffers)."""
        model = self.evaluated_model()
        if self.ema is not None:
            model.update(force=True, **update_options)
        names = [Path(file).name for file in getattr(self.val_set, "files", [])]
        images = [(names[index] if index < len(names) else f"val{index}", self.val_set[index].unsqueeze(0))
                  for index in range(len(self.val_set))]
        entropy_models = (receipt.aux_losses(model), receipt.outside_quantiles(model, images))
        try:
            bpp = receipt.bpp_gaps(evaluate_tensors(model, images))
        except UserError as error:  # the run's weights are saved; its receipt says why nothing could be coded
            warnings.warn(f"no real bitstream for the receipt: {error}", stacklevel=2)
            receipt.record_end(self.save_dir, {"skipped": str(error)}, *entropy_models, self.progress.step)
            return
        receipt.record_end(self.save_dir, bpp, *entropy_models, self.progress.step)
        suspect = receipt.suspect_gaps(bpp)
        if suspect:
            warnings.warn(receipt.gap_warning(suspect, f"validation images of {self.save_dir} (receipt.json)"),
                          stacklevel=2)

    def _finish(self) -> None:
        """Make the saved model ready for real bitstreams (CDF tables) without touching the resume state."""
        if self.qat_controller is not None:
            qat.finalize(self.model)
        ckpt = self.checkpoint()
        ckpt["finished"] = True  # what tells a finished run from an interrupted one (sweeps skip only these)
        options = {"update_quantiles": True} if not self.cfg.optim.eb_aux and self.quantiles else {}
        self.model.update(force=True, **options)
        ckpt["state_dict"] = self.model.state_dict()
        if self.ema is not None:
            average = self.ema.synced(self.model)
            average.update(force=True, **options)
            ckpt["ema_state_dict"] = average.state_dict()
        self.save(self.names["last"], ckpt)
        if self.main:
            self._close_receipt(options)
        if isinstance(self.optimizer, TaskWeightedOptimizer) and self.main:
            plot_task_weights(self.save_dir / "train_log.csv", self.save_dir / "task_weights.png")
        distributed.barrier(self.dist)
        if self.main:
            self.wandb.finish()
        distributed.shutdown(self.dist)

