"""Rebuild a model from any checkpoint the toolkit meets: our training checkpoints, raw or zoo state dicts.

Our training checkpoints (``format == "lic-toolkit/1"``) record the model name and kwargs, the replace
config and the QAT config next to the weights, so the exact architecture is rebuilt before the weights
load (strictly). A run trained with ``--ema_decay`` delivers its weight average: ``ema_state_dict`` is
loaded when present (``raw=True`` loads the raw weights instead). A raw state dict of a replaced model (e.g. from the seeds' own scripts) needs the replace
config from the caller (``replace=``, i.e. the ``--replace_parts``/``--act`` flags).
"""
from __future__ import annotations

import warnings
from pathlib import Path

from torch import nn

from common import qat
from common.checkpoint import extract_state_dict, load_file
from common.errors import UserError
from common.models import build
from common.replace import apply_config, architecture

CHECKPOINT_FORMAT = "lic-toolkit/1"
DEFAULT_MODEL = "bmshj2018-factorized"
# Keyword arguments that describe where weights came from, not the architecture.
_SOURCE_KWARGS = ("pretrained", "checkpoint", "trust_checkpoint")


def is_training_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


def _load_strict(model: nn.Module, state_dict: dict, path) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"{path} does not match the rebuilt architecture (check --model/--quality/--replace_parts/"
                        f"--act): {detail}") from exc


def _infer_quality(name: str, state_dict: dict, quality: int) -> int:
    """For bmshj2018-factorized, the smallest quality whose (N, M) matches the state dict's conv sizes."""
    if name != DEFAULT_MODEL or "g_a.0.weight" not in state_dict or "g_a.6.weight" not in state_dict:
        return quality
    from common.models.bmshj2018 import quality_of
    inferred = quality_of(state_dict["g_a.0.weight"].shape[0], state_dict["g_a.6.weight"].shape[0])
    return quality if inferred is None else inferred


def load_model(name: str | None = None, *, quality: int = 1, pretrained: bool = False, checkpoint: str | None = None,
               trust: bool = False, replace: dict | None = None, raw: bool = False) -> nn.Module:
    """Return the model (in eval mode) described by the arguments.

    - ``checkpoint`` is one of our training checkpoints: name, kwargs, replace and QAT configs come from it
      (``name``, if given, must agree; ``replace`` must be None).
    - ``checkpoint`` is a raw/zoo state dict: ``build(name, checkpoint=...)``; with ``replace`` the
      replaced architecture is rebuilt first (quality inferred from the conv sizes for bmshj2018); if the
      weights are those of the unreplaced model, they load first and the replacement follows (warning).
    - no checkpoint: ``build(name, quality=quality, pretrained=pretrained)``, then ``replace`` if given.
    """
    if checkpoint is None:
        model = build(name or DEFAULT_MODEL, quality=quality, pretrained=pretrained)
        return apply_config(model, replace).eval()
    if pretrained:
        raise UserError("give either pretrained weights or a checkpoint, not both")
    obj = load_file(checkpoint, trust=trust)
    if is_training_checkpoint(obj):
        return _from_training_checkpoint(obj, name, replace, checkpoint, raw)
    name = name or DEFAULT_MODEL
    if replace is None:
        try:
            return build(name, checkpoint=checkpoint, trust_checkpoint=trust).eval()
        except UserError as exc:
            raise UserError(f"{exc}; if these are weights of a replaced model, pass the --replace_parts/--act/"
                            "--decoder_upsample flags it was trained with") from exc
    state_dict = extract_state_dict(obj, checkpoint)
    model = apply_config(build(name, quality=_infer_quality(name, state_dict, quality)), replace)
    try:
        _load_strict(model, state_dict, checkpoint)
    except UserError as replaced_error:
        # Weights of the original architecture (e.g. a zoo GDN model): load them, then replace (seed 003's
        # "apply --replace_parts before export"); the new layers keep their own initialisation.
        try:
            model = apply_config(build(name, checkpoint=checkpoint, trust_checkpoint=trust), replace)
        except UserError:
            raise replaced_error from None
        warnings.warn(f"{checkpoint} holds weights of the unreplaced model; the replaced layers are freshly "
                      "initialised", stacklevel=2)
    return model.eval()


def _from_training_checkpoint(obj: dict, name: str | None, replace: dict | None, path, raw: bool = False) -> nn.Module:
    try:
        recorded_name = obj["model"]["name"]
        kwargs = {k: v for k, v in obj["model"].get("kwargs", {}).items() if k not in _SOURCE_KWARGS}
        state_dict = obj["state_dict"] if raw or obj.get("ema_state_dict") is None else obj["ema_state_dict"]
    except (KeyError, TypeError) as exc:
        raise UserError(f"{path} is a {CHECKPOINT_FORMAT} checkpoint without model name/kwargs/state_dict") from exc
    if name is not None and name != recorded_name:
        raise UserError(f"{Path(path).name} holds a {recorded_name} model, not {name}; drop --model or fix it")
    if replace is not None and architecture(replace) != architecture(obj.get("replace")):
        raise UserError(f"{Path(path).name} already records its architecture replacement; drop the "
                        "--replace_parts/--act flags")
    model = build(recorded_name, **kwargs)
    apply_config(model, obj.get("replace"))
    qat.prepare(model, obj.get("qat"))
    _load_strict(model, state_dict, path)
    if obj.get("qat"):
        qat.finalize(model)
    return model.eval()
