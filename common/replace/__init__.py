"""Architecture replacement recipes for bmshj2018-style models (seeds 000-003) and trainable scopes.

The whole recipe lives in one plain dict (the *replace config*) that training checkpoints store under
``"replace"``; :func:`apply_config` rebuilds the same architecture from it, both before training and
when a checkpoint is loaded.

Typical use (what ``common.train`` does)::

    parser = OneLineErrorParser(); add_arguments(parser); args = parser.parse_args()
    config = config_from_args(args)          # None when no replace flag was given
    model = apply_config(model, config)      # GDN -> ReLU/GDNishLite, deconv -> Upsample+Conv
    params = set_trainable(model, config)    # sets requires_grad, returns the main trainable params

Defaults follow the seeds: ``--replace_parts`` alone replaces GDN/IGDN by ReLU (seed 000); ``--act``
alone replaces in both transforms (seed 003's default ``all``); ``--train_scope`` defaults to
``replaced`` when something is replaced (seed 001: "only the replaced convs" by default), else ``all``.
"""
from __future__ import annotations

import ast
import copy
import math
from typing import TYPE_CHECKING

from torch import nn

from common.errors import UserError
from common.replace.blocks import ACT_TYPES, ECA, GDNishLiteDec, GDNishLiteEnc
from common.replace.registry import available_blocks, import_block_modules, register_block
from common.replace.scope import TRAIN_SCOPES, aux_parameters, set_trainable, trainable_names
from common.replace.transforms import (PARTS, UPSAMPLE_MODES, UpsampleConv, is_replaced, replace_decoder_deconv,
                                       replace_gdn, upconv_from_deconv)

if TYPE_CHECKING:
    from common.train.config import ReplaceConfig

__all__ = [
    "ECA", "GDNishLiteDec", "GDNishLiteEnc", "UpsampleConv", "apply_config", "architecture", "aux_parameters",
    "available_blocks", "build_student_from_teacher", "config_from_args", "is_replaced", "make_config",
    "register_block", "replace_decoder_deconv", "replace_gdn", "set_trainable", "trainable_names",
    "upconv_from_deconv",
]

ENC_DEFAULTS = {"t": 2.0, "k_dw": 3, "use_eca": True, "residual": True, "eca_kernel": 3, "init_identity": True,
                "act_type": "relu6", "bn": False}
ENC_T_MAX = 64.0  # --enc_t: a wider 1x1 expansion than this is a typo, and 1e30 would not allocate
DEC_DEFAULTS = {"k": 3, "g_min": 0.5, "g_max": 2.0, "residual": True, "act_type": "relu6", "use_bn": False,
                "init_identity": True}


def _parse_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise UserError(f"--act_opt expects KEY=VALUE with KEY a Python identifier, got {text!r}")
    lowered = value.strip().lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value


def make_config(replace_parts: str = "none", act: str | None = None, *, act_modules: list[str] | tuple = (),
                act_options: dict | None = None, enc: dict | None = None, dec: dict | None = None,
                decoder_upsample: bool = False, upsample_mode: str = "nearest", train_scope: str | None = None,
                train_igdn: bool = False, freeze_igdn: bool = False, unfreeze_all: bool = False) -> dict:
    """Validated replace config (plain types only). ``enc``/``dec`` override GDNishLite defaults."""
    import_block_modules(list(act_modules))
    if replace_parts not in PARTS:
        raise UserError(f"--replace_parts must be one of {', '.join(PARTS)}, got {replace_parts!r}")
    if act is None:
        act = "relu"
    if replace_parts != "none":
        available = available_blocks()
        if act not in available:
            raise UserError(f"unknown --act {act!r}; choose one of: {', '.join(available)} "
                            "(or register your own block and pass --act_module MODULE)")
    unknown = set(enc or {}) - set(ENC_DEFAULTS) | set(dec or {}) - set(DEC_DEFAULTS)
    if unknown:
        raise UserError(f"unknown GDNishLite option(s): {', '.join(sorted(unknown))}")
    enc = {**ENC_DEFAULTS, **(enc or {})}
    dec = {**DEC_DEFAULTS, **(dec or {})}
    if act == "gdnish":
        _check_gdnish(enc, dec)
    if upsample_mode not in UPSAMPLE_MODES:
        raise UserError(f"--upsample_mode must be one of {', '.join(UPSAMPLE_MODES)}, got {upsample_mode!r}")
    replaces = replace_parts != "none" or decoder_upsample
    if train_scope is None:
        train_scope = "replaced" if replaces else "all"
    if train_scope not in TRAIN_SCOPES:
        raise UserError(f"--train_scope must be one of {', '.join(TRAIN_SCOPES)}, got {train_scope!r}")
    if train_scope != "all" and not unfreeze_all and not replaces:
        raise UserError(f"--train_scope {train_scope} needs something replaced (--replace_parts, --act or "
                        "--decoder_upsample)")
    if train_igdn and freeze_igdn:
        raise UserError("--train_igdn and --freeze_igdn contradict each other; pass only one")
    return {
        "replace_parts": replace_parts, "act": act, "act_modules": list(act_modules),
        "act_options": dict(act_options or {}), "enc": enc, "dec": dec,
        "decoder_upsample": bool(decoder_upsample), "upsample_mode": upsample_mode, "train_scope": train_scope,
        "train_igdn": bool(train_igdn), "freeze_igdn": bool(freeze_igdn), "unfreeze_all": bool(unfreeze_all),
    }


def _check_gdnish(enc: dict, dec: dict) -> None:
    if not 0 < enc["t"] <= ENC_T_MAX:  # NaN too
        raise UserError(f"--enc_t must be > 0 and <= {ENC_T_MAX:g}, got {enc['t']}")
    for flag, value in (("--enc_kdw", enc["k_dw"]), ("--enc_eca_kernel", enc["eca_kernel"]),
                        ("--dec_k", dec["k"])):
        if value < 1 or value % 2 == 0:
            raise UserError(f"{flag} must be a positive odd integer, got {value}")
    if not 0.0 <= dec["g_min"] < dec["g_max"] < math.inf:
        raise UserError(f"need 0 <= --dec_gmin < --dec_gmax, got {dec['g_min']} and {dec['g_max']}")
    for part, options in (("enc", enc), ("dec", dec)):
        if options["act_type"] not in ACT_TYPES:
            raise UserError(f"--{part}_act must be one of {', '.join(ACT_TYPES)}, got {options['act_type']!r}")


def config_from_args(args: ReplaceConfig) -> dict | None:
    """Replace config from parsed flags, or None when no replacement/scope flag was given.

    Each block reads its own options: GDNishLite the --enc_*/--dec_* flags, a registered block --act_opt;
    an option the chosen block would ignore is refused. Given without --act, GDNishLite options choose
    --act gdnish, as in seed 003 (whose train_finetune_npu.py has GDNishLite as its only block).
    """
    act_options = dict(_parse_option(text) for text in args.act_opt)
    enc_flags = {"t": args.enc_t, "k_dw": args.enc_kdw, "use_eca": args.enc_eca, "residual": args.enc_residual,
                 "eca_kernel": args.enc_eca_kernel, "init_identity": args.enc_init_identity,
                 "act_type": args.enc_act, "bn": args.enc_bn}
    dec_flags = {"k": args.dec_k, "g_min": args.dec_gmin, "g_max": args.dec_gmax, "residual": args.dec_residual,
                 "act_type": args.dec_act, "use_bn": args.dec_bn, "init_identity": args.dec_init_identity}
    enc = {key: ENC_DEFAULTS[key] if value is None else value for key, value in enc_flags.items()}
    dec = {key: DEC_DEFAULTS[key] if value is None else value for key, value in dec_flags.items()}
    gdnish_options = any(value is not None for value in (*enc_flags.values(), *dec_flags.values()))
    act = args.act or ("gdnish" if gdnish_options and args.replace_parts != "none" else None)
    replace_parts = args.replace_parts or ("all" if act is not None else "none")
    block = (act or "relu") if replace_parts != "none" else None
    chosen = f"--act {block}" if block else "a run that replaces no GDN layer"
    if gdnish_options and block != "gdnish":
        raise UserError(f"the --enc_*/--dec_* options belong to --act gdnish, not to {chosen}; drop them")
    if act_options and block in (None, "relu", "gdnish"):
        raise UserError(f"--act_opt passes options to a block registered by --act_module; {chosen} takes none")
    scope = {"train_scope": getattr(args, "train_scope", None)}
    scope.update({flag: getattr(args, flag, False) for flag in ("train_igdn", "freeze_igdn", "unfreeze_all")})
    if (replace_parts == "none" and not args.decoder_upsample and scope["train_scope"] in (None, "all")
            and not (scope["train_igdn"] or scope["freeze_igdn"] or scope["unfreeze_all"])):
        if args.act is not None:
            raise UserError("--act has no effect with --replace_parts none; drop one of them")
        return None
    return make_config(replace_parts, act, act_modules=args.act_module, act_options=act_options, enc=enc,
                       dec=dec, decoder_upsample=args.decoder_upsample, upsample_mode=args.upsample_mode, **scope)


def block_options(config: dict) -> tuple[dict, dict]:
    """Keyword options for the encoder and decoder block factories of ``config['act']``."""
    if config["act"] == "gdnish":
        return dict(config["enc"]), dict(config["dec"])
    if config["act"] == "relu":
        return {}, {}
    return dict(config["act_options"]), dict(config["act_options"])


def apply_config(model: nn.Module, config: dict | None) -> nn.Module:
    """Rebuild the replaced architecture described by ``config`` on ``model`` (in place; returns it).

    New layers come from the blocks' own initialisation (identity for GDNishLite, a least-squares fit
    to the deconvolution for Upsample+Conv); a checkpoint's state dict is loaded afterwards.
    """
    if config is None:
        return model
    import_block_modules(config.get("act_modules", []))
    if config["replace_parts"] != "none":
        enc, dec = block_options(config)
        replace_gdn(model, config["replace_parts"], config["act"], enc, dec)
    if config["decoder_upsample"]:
        replace_decoder_deconv(model, config["upsample_mode"])
    return model


SCOPE_KEYS = ("train_scope", "train_igdn", "freeze_igdn", "unfreeze_all")


def with_scope(config: dict, scope_of: dict) -> dict:
    """``config``'s architecture with the trainable scope of ``scope_of`` (both replace configs)."""
    return {**config, **{key: scope_of[key] for key in SCOPE_KEYS}}


def architecture(config: dict | None) -> dict | None:
    """The part of a replace config that determines the architecture (not the trainable scope)."""
    if config is None or (config["replace_parts"] == "none" and not config["decoder_upsample"]):
        return None
    arch = {"decoder_upsample": config["decoder_upsample"]}
    if config["decoder_upsample"]:
        arch["upsample_mode"] = config["upsample_mode"]
    if config["replace_parts"] != "none":
        arch.update(replace_parts=config["replace_parts"], act=config["act"], options=block_options(config))
    return arch


def build_student_from_teacher(teacher: nn.Module, config: dict | None = None) -> nn.Module:
    """Seed 001: a copy of ``teacher`` with ``config`` applied (default: Upsample+Conv decoder, only the
    replaced convs trainable). The teacher is put in eval mode with every parameter frozen.
    """
    config = make_config(decoder_upsample=True) if config is None else config
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    student = apply_config(copy.deepcopy(teacher), config)
    set_trainable(student, config)
    return student.train()
