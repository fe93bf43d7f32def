"""The command line of ``python -m common.train``: the engine's own flags plus those of each library module."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from common.cli import DefaultsHelpFormatter, OneLineErrorParser, bool_flag, number, str2bool
from common.models.memory_format import MEMORY_FORMATS
from common.train.config import TrainConfig
from common.train.optimizers import OPTIMIZERS
from common.train.precision import LOCAL_FP32_MODES
from common.train.recipes import load_recipe

SCHEDULERS = ("none", "cosine", "onecycle", "plateau", "multistep")


def amp_mode(text: str) -> str:
    """``--amp``: auto, or any spelling of true/false that boolean flags accept, as ``"true"``/``"false"``."""
    if text.strip().lower() == "auto":
        return "auto"
    return str(str2bool(text)).lower()


# The official HPCM train.py names its models after their modules.
_OFFICIAL_MODEL_NAMES = {"HPCM_Base": "hpcm-base", "HPCM_Large": "hpcm-large"}


def _official_model_name(text: str) -> str:
    return _OFFICIAL_MODEL_NAMES.get(text, text)


class _ValidationBatchAction(argparse.Action):
    """``--test-batch-size`` of the official scripts: validation here is one image at a time, so only 1 fits."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value != 1:
            parser.error(f"{option_string} {value}: validation runs one image at a time (whole images of any "
                         "size); drop the flag or pass 1")


def _alias(group, dest: str, *names: str, **options) -> None:
    """Other spellings of a flag (the official HPCM train.py's), kept out of --help and of its error messages."""
    group.add_argument(*names, dest=dest, default=argparse.SUPPRESS, help=argparse.SUPPRESS, **options)


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model")
    model.add_argument("--model", default="bmshj2018-factorized", help="registry name")
    model.add_argument("--model_name", dest="model", type=_official_model_name, metavar="NAME",
                       help="the official HPCM train.py's spelling: HPCM_Base, HPCM_Large (or a registry name)")
    model.add_argument("--quality", type=int, default=None,
                       help="quality level of models that have one (bmshj2018-factorized: 1-8, default 1)")
    bool_flag(model, "--pretrained", False, "start from published weights found in the torch.hub cache")
    model.add_argument("--checkpoint", help="start from these weights (state dict or one of our checkpoints)")
    bool_flag(model, "--trust_checkpoint", False, "allow arbitrary pickled objects in checkpoint files")

    distill = parser.add_argument_group("distillation (seed 001)")
    bool_flag(distill, "--distill", False, "teacher = the --pretrained/--checkpoint weights, student = a copy with "
                                           "the replaced decoder (default --decoder_upsample); loss against the "
                                           "teacher's reconstruction")
    distill.add_argument("--distill_l1", type=number(float, minimum=0), default=1.0, help="λ1 of λ1·L1 + λ2·(1-MS-SSIM)")
    distill.add_argument("--distill_msssim", type=number(float, minimum=0), default=0.2, help="λ2 of λ1·L1 + λ2·(1-MS-SSIM)")
    distill.add_argument("--resume_student", metavar="CKPT",
                         help="fine-tune a distilled student against the ground truth: start from CKPT, write "
                              "ft_last.pt/ft_best.pt and recon_ft/")

    run = parser.add_argument_group("schedule")
    run.add_argument("--epochs", type=number(int, minimum=1), default=None,
                     help="epochs to train (default 10 unless --steps)")
    _alias(run, "epochs", "-e", type=number(int, minimum=1))
    run.add_argument("--steps", type=number(int, minimum=1), default=None, help="total optimizer steps (overrides --epochs)")
    run.add_argument("--batch_size", type=number(int, minimum=1), default=8)
    _alias(run, "batch_size", "-bs", "--batch-size", type=number(int, minimum=1))
    run.add_argument("--test-batch-size", "--test_batch_size", action=_ValidationBatchAction, type=number(int, minimum=1),
                     default=argparse.SUPPRESS,
                     help="accepted for the official HPCM train.py: validation runs one image at a time, so only "
                          "1 is allowed")
    run.add_argument("--lr", type=number(float, above=0), default=1e-4)
    _alias(run, "lr", "-lr", "--learning-rate", type=number(float, above=0))
    run.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default=None,
                     help="adam unless --use_balanced (options of each: ARCHITECTURE.md)")
    run.add_argument("--weight_decay", type=number(float, minimum=0), default=0.0)
    run.add_argument("--sched", choices=SCHEDULERS, default="none",
                     help="cosine/plateau step per epoch, onecycle per step, multistep per --lr_milestone_unit")
    run.add_argument("--onecycle_pct_start", type=number(float, above=0, below=1), default=0.1)
    run.add_argument("--lr_milestones", type=number(int, minimum=1), nargs="+", default=[], metavar="N",
                     help="--sched multistep: where the lr drops (official HPCM: 2750 2850 2950 epochs)")
    run.add_argument("--lr_factors", type=number(float, above=0), nargs="+", default=[], metavar="F",
                     help="--sched multistep: lr = --lr x F_k from milestone k on (official HPCM: 0.3 0.1 0.01)")
    run.add_argument("--lr_milestone_unit", choices=("epoch", "step"), default="epoch",
                     help="--sched multistep: milestones count epochs or optimizer steps")
    run.add_argument("--lr_warmup_steps", type=number(int, minimum=0), default=0, help="linear warm-up (not with onecycle)")
    _alias(run, "max_grad_norm", "--clip_max_norm", type=number(float))
    run.add_argument("--max_grad_norm", type=number(float), default=1.0, help="gradient clipping; <= 0 disables")
    run.add_argument("--ema_decay", type=number(float, minimum=0, below=1), default=0.0,
                     help="keep an exponential moving average of the weights with this decay (e.g. 0.999, as the "
                          "Balanced R-D reference) and make it the run's model; 0 = off")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    run.add_argument("--cuda", dest="device", action="store_const", const="cuda",
                     help="the official HPCM train.py's spelling of --device cuda")
    run.add_argument("--memory_format", choices=MEMORY_FORMATS, default="auto",
                     help="layout of the model's activations: auto = what the model declares for "
                     "the CPU (channels_last for HPCM-Base/-Large), PyTorch's default otherwise")

    tune = parser.add_argument_group("fine-tuning (seed 004; groups: python -m common.train.finetune MODEL)")
    bool_flag(tune, "--finetune", False, "start a new run (epoch 0, fresh schedule) from --checkpoint at --finetune_lr")
    tune.add_argument("--finetune_lr", type=number(float, above=0), default=1e-5, help="learning rate of --finetune")
    tune.add_argument("--group_lr", nargs="+", default=[], metavar="GROUP=MULT",
                      help="lr multiplier of a parameter group: analysis, synthesis, hyper, context, entropy")
    tune.add_argument("--context_lr_ratio", type=number(float, minimum=0), default=None,
                      help="seed 004's spelling of --group_lr context=R")
    bool_flag(tune, "--freeze_entropy", False, "keep the z entropy model (and its quantiles) as loaded")
    tune.add_argument("--unfreeze_at", nargs="+", default=[], metavar="GROUP=EPOCH",
                      help="keep GROUP frozen until EPOCH (progressive unfreezing)")
    bool_flag(tune, "--progressive_unfreeze", False, "seed 004's schedule: --unfreeze_at hyper=100 context=200")
    bool_flag(tune, "--scale_early_stopping", False,
              "freeze the task weight of each HPCM y scale once its validation rate has plateaued "
              "(hierarchical Balanced)")
    tune.add_argument("--early_stopping_patience", type=number(int, minimum=1), default=50, metavar="EPOCHS",
                      help="epochs a scale's rate must stay within --early_stopping_tol to count as plateaued")
    tune.add_argument("--early_stopping_tol", type=number(float, above=0), default=0.01,
                      help="relative band of a plateaued rate")

    precision = parser.add_argument_group("precision")
    precision.add_argument("--amp", type=amp_mode, default="auto", metavar="{true,false,auto}",
                           help="mixed precision; auto = on for CUDA, off for CPU")
    precision.add_argument("--amp_dtype", choices=("fp16", "bf16"), default="bf16")
    precision.add_argument("--local_fp32", choices=LOCAL_FP32_MODES, default="none",
                           help="modules that always run in FP32 under AMP")
    precision.add_argument("--local_fp32_custom", default="", help="class-name fragments for --local_fp32 custom")
    bool_flag(precision, "--overflow_check", True, "stop when forward outputs are non-finite or huge")
    precision.add_argument("--overflow_tol", type=number(float, above=0), default=1e8)

    entropy = parser.add_argument_group("entropy bottleneck")
    bool_flag(entropy, "--eb_aux", True, "train the EntropyBottleneck quantiles with the aux loss "
                                          "(false: re-solve them by bisection when the run ends)")
    entropy.add_argument("--eb_aux_lr", type=number(float, above=0), default=1e-3)
    _alias(entropy, "eb_aux_lr", "--aux-learning-rate", type=number(float, above=0))

    model.add_argument("--recipe", default=None, metavar="NAME|FILE",
                       help="take the flags of a training recipe (common/train/recipes/: "
                            "hpcm-base-mse, bmshj2018-factorized-ms-ssim, ...) as defaults; given flags win")

    out = parser.add_argument_group("outputs")
    out.add_argument("--save_dir", default="runs/train", help="run folder: checkpoints, logs, plots")
    _alias(out, "save_dir", "--save_path")
    out.add_argument("--recon_dir", default=None, help="reconstruction PNGs (default: SAVE_DIR/recon)")
    out.add_argument("--recon_subdir", default=None, metavar="NAME",
                     help="seed 001's spelling: reconstruction PNGs in SAVE_DIR/NAME")
    out.add_argument("--val_every", type=number(int, minimum=1), default=None,
                     help="validate (and write best_*.pt) every N epochs (default: every epoch, but no more often "
                          "than every 500 steps when epochs are short); the last step is always validated")
    out.add_argument("--recon_every", type=number(int, minimum=0), default=None,
                     help="save reconstructions every N epochs (0: never; default: with each validation)")
    out.add_argument("--recon_count", type=number(int, minimum=0), default=8, help="validation images to reconstruct")
    out.add_argument("--save_every_steps", type=number(int, minimum=0), default=0, help="also write last.pt every N steps")
    out.add_argument("--keep_last", type=number(int, minimum=0), default=0, metavar="K",
                     help="also keep the checkpoints of the last K validations (SAVE_DIR/checkpoints, with an info JSON)")
    out.add_argument("--keep_best", type=number(int, minimum=0), default=0, metavar="K",
                     help="also keep the weights of the K validations with the lowest loss (SAVE_DIR/checkpoints)")
    out.add_argument("--keep_steps", type=number(int, minimum=1), nargs="+", default=[], metavar="N",
                     help="also keep the weights after each of these steps (SAVE_DIR/checkpoints/step_N.pt, with an "
                          "info JSON): the model at fractions of its budget, as python -m baselines.budget reads them")
    out.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                     help="continue a run (default file: SAVE_DIR/last.pt)")
    bool_flag(out, "--overwrite", False, "start a new run in a SAVE_DIR that already holds one, replacing its "
                                         "checkpoints and logs")
    bool_flag(out, "--wandb", False, "log to Weights & Biases (offline unless WANDB_MODE is set)")
    out.add_argument("--wandb_project", default="lic-toolkit")
    bool_flag(out, "--progress", True, "show progress bars")


def build_parser() -> argparse.ArgumentParser:
    from common import flags

    parser = OneLineErrorParser(
        prog="python -m common.train",
        description="Train a learned image codec (bmshj2018-factorized, HPCM) with Adam or the Balanced "
                    "R-D optimizer. With no data flag it trains on the embedded sample photos.",
        formatter_class=DefaultsHelpFormatter)
    add_engine_arguments(parser)
    flags.add_data_arguments(parser.add_argument_group("data"))
    flags.add_loss_arguments(parser.add_argument_group("loss"))
    flags.add_replace_arguments(parser.add_argument_group("layer replacement (NPU recipes)"))
    flags.add_qat_arguments(parser.add_argument_group("quantization-aware training"))
    flags.add_optimizer_arguments(parser.add_argument_group("balanced R-D optimizer"))
    return parser


# What a resumed run never takes from its checkpoint: where the run is and how to open its files.
_NOT_RESTORED = ("resume", "overwrite", "save_dir", "trust_checkpoint")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The training flags; with ``--resume``, a flag not given takes the value the run was started with.

    ``python -m common.train --save_dir runs/x --resume`` continues runs/x as it was configured; flags given
    beside ``--resume`` override (the engine refuses any change but the learning rate, the run length and
    output options).
    """
    from common.checkpoint import load_file
    from common.train.engine import checkpoint_names

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.recipe is not None:
        parser.set_defaults(**load_recipe(args.recipe, set(vars(args))).flags)
        args = parser.parse_args(argv)
    if args.resume is None:
        return args
    path = Path(args.save_dir) / checkpoint_names(args)["last"] if args.resume == "auto" else Path(args.resume)
    if not path.is_file():
        return args  # the engine says what is missing
    recorded = load_file(path, trust=args.trust_checkpoint)
    recorded = recorded.get("args") if isinstance(recorded, dict) else None
    if not isinstance(recorded, dict):
        return args  # not one of our training checkpoints: the engine says so
    parser.set_defaults(**{name: value for name, value in recorded.items()
                           if name in vars(args) and name not in _NOT_RESTORED})
    return parser.parse_args(argv)


def parse_config(argv: Sequence[str] | None = None) -> TrainConfig:
    """The run's typed configuration from command-line flags (see :func:`parse_args` for ``--resume``)."""
    return TrainConfig.from_flat(vars(parse_args(argv)))
