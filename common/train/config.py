"""Typed configuration of a training run: one dataclass per concern, composed in :class:`TrainConfig`.

The command line (:mod:`common.train.options`) fills these and is the only code that sees argparse; sweeps,
searches, phases and benchmarks build them directly, e.g. ``dataclasses.replace(cfg.loss, lmbda=0.0067)``.
Field names are the flag names (``--lambda`` is ``lmbda``), and each field's default is its flag's default
(a test checks that they agree). Checkpoints record :meth:`TrainConfig.flat` as plain data; a run restarts
from it with :meth:`TrainConfig.from_flat`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from common.data import DataConfig  # noqa: F401  (declared beside the code that reads it)


@dataclass
class ModelConfig:
    """The architecture and where its starting weights come from."""

    model: str = "bmshj2018-factorized"
    quality: int | None = None
    pretrained: bool = False
    checkpoint: str | None = None
    trust_checkpoint: bool = False
    recipe: str | None = None


@dataclass
class LossConfig:
    """The criterion (``LOSS_OPTIONS`` in :mod:`common.losses` says which fields each loss type reads)."""

    loss_type: str = "mse"
    lmbda: float = 0.013
    alpha_l1: float = 0.4
    lambda_bpp: float = 0.01
    hierarchical_tasks: bool = False


@dataclass
class OptimizerConfig:
    """The optimizer (a registry entry of :mod:`common.train.optimizers`), its options and the aux optimizer."""

    optimizer: str | None = None
    weight_decay: float = 0.0
    eb_aux: bool = True
    eb_aux_lr: float = 0.001
    use_balanced: bool = False
    gamma: list[float] = field(default_factory=lambda: [0.003])
    gamma_s1: float | None = None
    gamma_s2: float | None = None
    gamma_s3: float | None = None
    w_lr: float = 0.025
    w_lr_sched: str = "constant"
    min_losses: list[float] = field(default_factory=lambda: [-1.0])
    prior_weights: list[float] | None = None
    scale_weights: list[float] | None = None
    cautious: bool = True
    famo: bool = True
    max_mask_scale: float | None = 10.0
    qp_eps: float = 1e-06
    qp_track_changes: bool = False
    adaptive_gamma: bool = False
    gamma_strategy: str | None = None
    gamma_final_ratio: float = 0.2
    gamma_warmup_epochs: int = 0
    gamma_milestones: list[int] = field(default_factory=lambda: [1000, 2000, 2500])
    gamma_step_factor: float = 0.5
    gamma_min: float | None = None
    gamma_cv_window: int = 50
    weight_update_every: int = 1
    delta_subset: int = 0
    share_noise: bool = False


@dataclass
class ScheduleConfig:
    """Run length, batch, learning-rate schedule, clipping, weight average, seed, device and memory format."""

    epochs: int | None = None
    steps: int | None = None
    batch_size: int = 8
    lr: float = 0.0001
    sched: str = "none"
    onecycle_pct_start: float = 0.1
    lr_milestones: list[int] = field(default_factory=list)
    lr_factors: list[float] = field(default_factory=list)
    lr_milestone_unit: str = "epoch"
    lr_warmup_steps: int = 0
    max_grad_norm: float = 1.0
    ema_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    memory_format: str = "auto"


@dataclass
class FinetuneConfig:
    """Seed 004's fine-tuning tools (:mod:`common.train.finetune`): parameter groups with their own learning rates,
    frozen and progressively unfrozen groups, per-scale task-weight stopping and the fine-tune restart."""

    finetune: bool = False
    finetune_lr: float = 1e-05
    group_lr: list[str] = field(default_factory=list)
    context_lr_ratio: float | None = None
    freeze_entropy: bool = False
    unfreeze_at: list[str] = field(default_factory=list)
    progressive_unfreeze: bool = False
    scale_early_stopping: bool = False
    early_stopping_patience: int = 50
    early_stopping_tol: float = 0.01


@dataclass
class PrecisionConfig:
    """Mixed precision (``amp``: true, false or auto) and the overflow check."""

    amp: str = "auto"
    amp_dtype: str = "bf16"
    local_fp32: str = "none"
    local_fp32_custom: str = ""
    overflow_check: bool = True
    overflow_tol: float = 100000000.0


@dataclass
class ReplaceConfig:
    """Layer replacements and trainable scopes (:func:`common.replace.config_from_args`)."""

    replace_parts: str | None = None
    act: str | None = None
    act_module: list[str] = field(default_factory=list)
    act_opt: list[str] = field(default_factory=list)
    enc_t: float | None = None
    enc_kdw: int | None = None
    enc_eca: bool | None = None
    enc_residual: bool | None = None
    enc_eca_kernel: int | None = None
    enc_act: str | None = None
    enc_bn: bool | None = None
    enc_init_identity: bool | None = None
    dec_k: int | None = None
    dec_gmin: float | None = None
    dec_gmax: float | None = None
    dec_residual: bool | None = None
    dec_act: str | None = None
    dec_bn: bool | None = None
    dec_init_identity: bool | None = None
    decoder_upsample: bool = False
    upsample_mode: str = "nearest"
    train_scope: str | None = None
    train_igdn: bool = False
    freeze_igdn: bool = False
    unfreeze_all: bool = False


@dataclass
class QATConfig:
    """Quantization-aware training (:func:`common.qat.config_from_args`)."""

    qat: bool = False
    qat_scope: str = "all"
    qat_exclude_entropy: bool = True
    qat_calib_steps: int = 2000
    qat_freeze_after: int = 8000
    qat_act_observer: str = "ema"
    qat_w_per_channel: bool = True
    qat_disable_observer_step: int = -1
    qat_eval_fakequant: bool = True


@dataclass
class DistillConfig:
    """Seed 001's teacher-student distillation and the student's fine-tuning stage."""

    distill: bool = False
    distill_l1: float = 1.0
    distill_msssim: float = 0.2
    resume_student: str | None = None


@dataclass
class OutputConfig:
    """The run folder, validation and reconstruction cadence, resume and logging."""

    save_dir: str = "runs/train"
    recon_dir: str | None = None
    recon_subdir: str | None = None
    val_every: int | None = None
    recon_every: int | None = None
    recon_count: int = 8
    save_every_steps: int = 0
    keep_last: int = 0
    keep_best: int = 0
    keep_steps: list[int] = field(default_factory=list)
    resume: str | None = None
    overwrite: bool = False
    wandb: bool = False
    wandb_project: str = "lic-toolkit"
    progress: bool = True


@dataclass
class TrainConfig:
    """Everything a training run is configured by."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    tune: FinetuneConfig = field(default_factory=FinetuneConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    replace: ReplaceConfig = field(default_factory=ReplaceConfig)
    qat: QATConfig = field(default_factory=QATConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def flat(self) -> dict[str, Any]:
        """Every field of every section by its flag name (names are unique across sections)."""
        return {name: value for section in self.sections() for name, value in dataclasses.asdict(section).items()}

    def sections(self) -> list:
        return [getattr(self, f.name) for f in dataclasses.fields(self)]

    @classmethod
    def from_flat(cls, values: dict[str, Any]) -> "TrainConfig":
        """The config whose fields take ``values`` by flag name (the others keep their defaults); unknown names fail."""
        unknown = set(values) - set(cls().flat())
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        kwargs = {}
        for section in dataclasses.fields(cls):
            section_type = section.default_factory
            names = {f.name for f in dataclasses.fields(section_type)}
            kwargs[section.name] = section_type(**{name: values[name] for name in names if name in values})
        return cls(**kwargs)
