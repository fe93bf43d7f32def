"""The command-line flags of each library concern, shared by every CLI that needs them.

Each group fills one dataclass of :mod:`common.train.config` (flag dests are its field names, defaults its
defaults); the library itself never sees argparse. ``python -m common.train`` uses all of them
(:mod:`common.train.options`); evaluation and export use the data-size limit and the replacement flags.
"""
from __future__ import annotations

import argparse

from balanced_rd.gamma import GAMMA_STRATEGIES
from common.cli import MAX_CROP, bool_flag, number, str2bool
from common.data import DEFAULT_CACHE_MB, DEFAULT_PATCH_SIZE, DEFAULT_VAL_RATIO, default_num_workers
from common.data.images import DEFAULT_MAX_IMAGE_PIXELS
from common.losses import CRITERIA
from common.qat import ACT_OBSERVERS, EMA_AVERAGING_CONSTANT, QAT_SCOPES
from common.qat import DEFAULTS as QAT_DEFAULTS
from common.replace import (ACT_TYPES, DEC_DEFAULTS, ENC_DEFAULTS, ENC_T_MAX, PARTS, TRAIN_SCOPES, UPSAMPLE_MODES,
                            available_blocks)
from common.train.optimizers import SEED_SCALE_GAMMAS

# More DataLoader workers than this only exhausts memory (10^12 was accepted and forked until the kernel killed it).
MAX_NUM_WORKERS = 256


class _PatchSizeAction(argparse.Action):
    """``--patch_size 256`` or the seeds' ``--patch-size 256 256``; stores one int (square patches)."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) > 2 or len(set(values)) != 1:
            parser.error(f"{option_string}: give one size or two equal sizes (square patches), got "
                         f"{' '.join(map(str, values))}")
        setattr(namespace, self.dest, values[0])


def add_data_arguments(parser) -> None:
    """The data flags (:class:`common.train.config.DataConfig`)."""
    parser.add_argument("-tr_d", "--train_dataset", metavar="DIR",
                        help="folder of training images (recursive)")
    parser.add_argument("-te_d", "--test_dataset", metavar="DIR",
                        help="folder of validation images (recursive)")
    parser.add_argument("--coco_dir", metavar="DIR",
                        help="COCO 2017 root with train2017/ (+ val2017/), or coco_prepare's output "
                             "with --use_prepared true")
    bool_flag(parser, "--use_prepared", False, "--coco_dir holds coco_prepare crops (train/, val/)")
    parser.add_argument("--val_ratio", type=number(float, minimum=0, below=1), default=None, metavar="R",
                        help="validate on a deterministic hash split (fraction R) of the training images "
                             f"(if not given: the source's validation folder, else {DEFAULT_VAL_RATIO})")
    parser.add_argument("--max_images", type=number(int, minimum=1), default=None, metavar="N",
                        help="use at most N training-source images (a fixed pseudo-random subset)")
    parser.add_argument("--patch_size", "--patch-size", type=number(int, minimum=1, maximum=MAX_CROP), nargs="+", action=_PatchSizeAction,
                        default=DEFAULT_PATCH_SIZE, metavar="N",
                        help="square crop size (the seeds' COCO recipes use 224)")
    parser.add_argument("--val_patch_size", type=number(int, minimum=1, maximum=MAX_CROP), default=None, metavar="N",
                        help="side of the centre crops validated on (default: --patch_size); larger crops judge "
                             "a model trained on small patches more like whole-image evaluation")
    parser.add_argument("-n", dest="num_workers", type=number(int, minimum=0, maximum=MAX_NUM_WORKERS),
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # the official HPCM train.py's spelling
    parser.add_argument("--num_workers", "--num-workers", type=number(int, minimum=0, maximum=MAX_NUM_WORKERS),
                        default=default_num_workers(),
                        help=f"DataLoader worker processes (at most {MAX_NUM_WORKERS}: each is a process with its "
                             "own copy of the dataset's cache)")
    bool_flag(parser, "--strict", False, "stop at the first unreadable image instead of skipping it")
    add_pixel_limit_argument(parser)
    parser.add_argument("--cache_images_mb", type=number(float, minimum=0), default=DEFAULT_CACHE_MB, metavar="MB",
                        help="keep decoded training and validation images in memory up to this size, per "
                             "process (DataLoader workers each have their own); 0 decodes every time")


def add_pixel_limit_argument(parser) -> None:
    parser.add_argument("--max_image_pixels", type=number(int, minimum=1), default=None, metavar="N",
                        help=f"refuse images of more pixels, as possible decompression bombs (default: Pillow's "
                             f"{DEFAULT_MAX_IMAGE_PIXELS}); training skips them with a warning")


def add_loss_arguments(parser) -> None:
    """Add the loss flags to ``parser`` (an ArgumentParser or an argument group)."""
    parser.add_argument("--loss_type", choices=tuple(CRITERIA), default="mse",
                        help="mse: lambda*255^2*MSE + bpp; ms-ssim: lambda*(1-MS-SSIM) + bpp (CompressAI's and "
                             "HPCM's --metric ms-ssim); recon: a*L1 + (1-a)(1-MS-SSIM); rd: recon + lambda_bpp*bpp")
    parser.add_argument("--lambda", dest="lmbda", type=number(float, minimum=0), default=0.0130,
                        help="rate-distortion trade-off of --loss_type mse (ladder 0.0018 ... 0.0483) and ms-ssim "
                             "(2.4 ... 60.5)")
    parser.add_argument("--alpha_l1", type=number(float, minimum=0, maximum=1), default=0.4, help="L1 weight a of the recon loss")
    parser.add_argument("--lambda_bpp", type=number(float, minimum=0), default=0.01, help="bpp weight of --loss_type rd")
    bool_flag(parser, "--hierarchical_tasks", False,
              "balance 5 tasks (distortion + the rates of z and the 3 HPCM y scales) instead of 2")
    parser.add_argument("--use_hierarchical", dest="hierarchical_tasks", action="store_const", const=True,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)  # seed 004's phase 3/4 spelling


def _optional_bool(group, name: str, default: bool, help: str) -> None:
    group.add_argument(name, type=str2bool, nargs="?", const=True, default=None, metavar="{true,false}",
                       help=f"{help} (default: {str(default).lower()})")


def add_replace_arguments(parser: argparse.ArgumentParser, trainable_scopes: bool = True) -> None:
    """Add the replacement flags and, unless ``trainable_scopes`` is False (export, evaluation), the
    trainable-scope flags (names as in seeds 000-003)."""
    # A caller may pass its own argument group (argparse deprecates nesting groups).
    group = parser if isinstance(parser, argparse._ArgumentGroup) else parser.add_argument_group("architecture replacement (seeds 000-003)")
    group.add_argument("--replace_parts", choices=tuple(PARTS), default=None,
                       help="where GDN/IGDN are replaced: encoder (g_a), decoder (g_s), all, none "
                            "(default: all if --act is given, else none)")
    group.add_argument("--act", default=None,
                       help=f"replacement block: {', '.join(available_blocks())} or a block registered by "
                            "--act_module (default: relu if --replace_parts is given)")
    group.add_argument("--act_module", action="append", default=[], metavar="MODULE",
                       help="import MODULE first (it calls common.replace.register_block); repeatable")
    group.add_argument("--act_opt", action="append", default=[], metavar="KEY=VALUE",
                       help="keyword option passed to a custom block's factories; repeatable")
    # The GDNishLite options default to None so that a given one (even at its default value) chooses the block.
    enc, dec = ENC_DEFAULTS, DEC_DEFAULTS
    group.add_argument("--enc_t", type=number(float, above=0, maximum=ENC_T_MAX), help=f"GDNishLiteEnc 1x1 expansion ratio (default: {enc['t']})")
    group.add_argument("--enc_kdw", type=number(int, minimum=1), help=f"GDNishLiteEnc depthwise kernel (default: {enc['k_dw']})")
    _optional_bool(group, "--enc_eca", enc["use_eca"], "GDNishLiteEnc: ECA channel gate")
    _optional_bool(group, "--enc_residual", enc["residual"], "GDNishLiteEnc: residual connection")
    group.add_argument("--enc_eca_kernel", type=number(int, minimum=1), help=f"GDNishLiteEnc: ECA 1-D kernel width (default: "
                                                          f"{enc['eca_kernel']})")
    group.add_argument("--enc_act", choices=ACT_TYPES, help=f"GDNishLiteEnc activation (default: {enc['act_type']})")
    _optional_bool(group, "--enc_bn", enc["bn"], "GDNishLiteEnc: BatchNorm after the first two convs")
    _optional_bool(group, "--enc_init_identity", enc["init_identity"], "GDNishLiteEnc: identity init")
    group.add_argument("--dec_k", type=number(int, minimum=1), help=f"GDNishLiteDec depthwise kernel (default: {dec['k']})")
    group.add_argument("--dec_gmin", type=number(float, minimum=0), help=f"GDNishLiteDec lowest gain (default: {dec['g_min']})")
    group.add_argument("--dec_gmax", type=number(float, above=0), help=f"GDNishLiteDec highest gain (default: {dec['g_max']})")
    _optional_bool(group, "--dec_residual", dec["residual"], "GDNishLiteDec: residual connection")
    group.add_argument("--dec_act", choices=ACT_TYPES, help=f"GDNishLiteDec activation (default: {dec['act_type']})")
    _optional_bool(group, "--dec_bn", dec["use_bn"], "GDNishLiteDec: BatchNorm after the 1x1 conv")
    _optional_bool(group, "--dec_init_identity", dec["init_identity"], "GDNishLiteDec: identity init")
    bool_flag(group, "--decoder_upsample", False,
              "replace g_s ConvTranspose2d by Upsample(x2)+Conv2d(k5,p2) fitted to the deconv (seed 001)")
    group.add_argument("--upsample_mode", choices=UPSAMPLE_MODES, default="nearest",
                       help="interpolation of --decoder_upsample")
    if not trainable_scopes:
        return
    group.add_argument("--train_scope", choices=TRAIN_SCOPES, default=None,
                       help="replaced: replaced layers only; replaced+hyper: plus the entropy model; all "
                            "(default: replaced if anything is replaced, else all)")
    bool_flag(group, "--train_igdn", False, "also train the decoder IGDN layers (seed 001)")
    bool_flag(group, "--freeze_igdn", False, "freeze every GDN/IGDN layer (seed 001)")
    bool_flag(group, "--unfreeze_all", False, "train every layer (same as --train_scope all; seed 001)")


def add_qat_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the QAT flags of seed 002."""
    # A caller may pass its own argument group (argparse deprecates nesting groups).
    group = parser if isinstance(parser, argparse._ArgumentGroup) else parser.add_argument_group("quantization-aware training (seed 002)")
    bool_flag(group, "--qat", False, "insert INT8 fake quantization (weights per channel, activations per tensor)")
    group.add_argument("--qat_scope", choices=tuple(QAT_SCOPES), default=QAT_DEFAULTS["scope"],
                       help="transforms to fake-quantize (default: %(default)s)")
    bool_flag(group, "--qat_exclude_entropy", QAT_DEFAULTS["exclude_entropy"],
              "keep the entropy model and hyperprior transforms in float")
    # Step counts: calibration needs at least one step of data, and freezing comes after it (qat.make_config).
    group.add_argument("--qat_calib_steps", type=number(int, minimum=1), default=QAT_DEFAULTS["calib_steps"],
                       help="steps during which activation observers learn their ranges (default: %(default)s)")
    group.add_argument("--qat_freeze_after", type=number(int, minimum=1), default=QAT_DEFAULTS["freeze_after"],
                       help="step from which every observer is frozen, weight scales included (default: %(default)s)")
    group.add_argument("--qat_act_observer", choices=ACT_OBSERVERS, default=QAT_DEFAULTS["act_observer"],
                       help=f"activation range: ema (moving average, constant {EMA_AVERAGING_CONSTANT}) or "
                            "minmax (running extremes) (default: %(default)s)")
    bool_flag(group, "--qat_w_per_channel", QAT_DEFAULTS["w_per_channel"],
              "per-output-channel symmetric weight scales (else one scale per layer)")
    group.add_argument("--qat_disable_observer_step", type=int, default=QAT_DEFAULTS["disable_observer_step"],
                       help="if >= 0, stop every observer from this step on (default: %(default)s, off)")
    bool_flag(group, "--qat_eval_fakequant", QAT_DEFAULTS["eval_fakequant"],
              "keep fake quantization on in eval mode (validation sees INT8-like outputs)")


def _optional_float(value: str) -> float | None:
    if value.strip().lower() in {"none", "inf"}:
        return None
    try:
        return float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {value!r}") from exc


def add_optimizer_arguments(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add the Balanced R-D flags to ``group`` (a parser or one of its argument groups)."""
    bool_flag(group, "--use_balanced", False, "train with balanced_rd.Balanced (same as --optimizer balanced)")
    group.add_argument("--gamma", type=number(float, minimum=0), nargs="+", default=[0.003],
                       help="logit decay gamma: one value, or one per task (default: 0.003)")
    for scale, default in zip((1, 2, 3), SEED_SCALE_GAMMAS):
        group.add_argument(f"--gamma_s{scale}", type=number(float, minimum=0), default=None,
                           help=f"seed 004's phase 3: gamma of the scale-{scale} y rate of --hierarchical_tasks "
                                f"(default {default} when another --gamma_sN is given); distortion and z keep --gamma")
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
    group.add_argument("--scale_weights", type=number(float, above=0), nargs=3, default=None, metavar="W",
                       help="seed 004's phase 3: relative prior weights of the y scales s1 s2 s3 of "
                            "--hierarchical_tasks (e.g. 0.3 0.4 0.3; distortion and z keep theirs)")
    bool_flag(group, "--cautious", True, "sign-mask the model update (Cautious Adam); false = plain Adam")
    bool_flag(group, "--famo", True, "balanced: FAMO's task-weight update; false keeps the weights at their prior "
              "(uniform by default), i.e. the step minimises the fixed-weight log losses (an ablation arm)")
    group.add_argument("--max_mask_scale", type=_optional_float, default=10.0,
                       help="cap on the cautious rescaling 1/mean(mask); 'none' = uncapped (default: 10)")
    group.add_argument("--qp_eps", type=number(float, minimum=0), default=1e-6,
                       help="balanced_qp: relative ridge qp_eps·trace(Q)/K on the gradient Gram matrix Q (default: "
                            "1e-6). For 2 tasks it confines each weight to 1/2 ± 1/(2·sqrt(qp_eps(qp_eps + 2))) whatever "
                            "the gradients: 10 gives [0.4544, 0.5456], near-uniform weighting, not the QP")
    bool_flag(group, "--qp_track_changes", False,
              "balanced_qp: log each log loss's predicted (first-order, for the step taken) and realised change "
              "per step (pred_dlog_*, real_dlog_* in train_log; one more forward per step)")
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
