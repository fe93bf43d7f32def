"""Model assembly: the one place where train, eval, export and the drivers build or load a model.

A :class:`Recipe` is what rebuilds a model: the registry name and its architecture kwargs, the layer
replacements and the QAT config; :func:`assemble` builds it, and a training checkpoint records it (its
model part, :meth:`Recipe.record`) next to the weights. :func:`load_model` rebuilds a model from any
checkpoint the toolkit meets (our training checkpoints, raw or zoo state dicts) and
:func:`start_from_weights` gives a new run its starting model with the recipe it trains.

Our training checkpoints (``format == "lic-toolkit/1"``) record the model name and kwargs, the replace
config and the QAT config next to the weights, so the exact architecture is rebuilt before the weights
load (strictly). A run trained with ``--ema_decay`` delivers its weight average: ``ema_state_dict`` is
loaded when present (``raw=True`` loads the raw weights instead). A raw state dict of a replaced model (e.g. from the seeds' own scripts) needs the replace
config from the caller (``replace=``, i.e. the ``--replace_parts``/``--act`` flags).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from common import qat
from common.checkpoint import CHECKPOINT_FORMAT, extract_state_dict, load_file, load_state_dict
from common.errors import UserError
from common.models import build, entry
from common.replace import apply_config, architecture, with_scope

DEFAULT_MODEL = "bmshj2018-factorized"
# Keyword arguments that describe where weights came from, not the architecture.
_SOURCE_KWARGS = ("pretrained", "checkpoint", "trust_checkpoint")


def build_with_weights(name: str, *, pretrained: bool = False, checkpoint: str | None = None, trust: bool = False,
                       metric: str = "mse", **kwargs) -> nn.Module:
    """Model ``name`` with published weights (``pretrained``, of ``metric``) or those of a state-dict file.

    The registry's facts decide how: where the published weights are, how foreign key names convert, and
    for models whose size the weights decide, which model fits them (``kwargs`` are then unused). Weights
    load strictly; every failure is one line naming the file.
    """
    model_entry = entry(name)
    if pretrained and checkpoint:
        raise UserError("give either pretrained weights or --checkpoint, not both")
    if pretrained:
        if model_entry.published_weights is None:
            raise UserError(f"{name} has no published weights; pass its weights with --checkpoint PATH")
        path = model_entry.published_weights(kwargs.get("quality", 1), metric)
        if not path.is_file():
            raise UserError(f"pretrained weights not found: put {path.name} (from compressai's model zoo) in "
                            f"{path.parent}/ or pass --checkpoint PATH")
    else:
        path = Path(checkpoint)
    state = load_state_dict(path, trust=trust)
    if model_entry.convert_state_dict:
        state = model_entry.convert_state_dict(state)
    if model_entry.from_state_dict and not pretrained:
        try:
            return model_entry.from_state_dict(state)
        except UserError as exc:
            raise UserError(f"{path} does not fit {name}: {exc}") from exc
    model = model_entry.build(**kwargs)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{path} does not fit {name} ({' '.join(str(exc).split())[:300]})") from exc
    return model


def is_training_checkpoint(obj) -> bool:
    return isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT


@dataclass(frozen=True)
class Recipe:
    """What rebuilds a model: registry name, architecture kwargs, replace config, QAT config."""

    name: str
    kwargs: dict = field(default_factory=dict)
    replace: dict | None = None
    qat: dict | None = None

    def record(self) -> dict:
        """The model part of a training checkpoint (plain data: loads with ``weights_only=True``)."""
        return {"format": CHECKPOINT_FORMAT, "model": {"name": self.name, "kwargs": dict(self.kwargs)},
                "replace": self.replace, "qat": self.qat}

    @classmethod
    def read(cls, checkpoint: dict, path) -> "Recipe":
        """The recipe a training checkpoint records; a one-line error when it records none."""
        try:
            kwargs = {k: v for k, v in checkpoint["model"].get("kwargs", {}).items() if k not in _SOURCE_KWARGS}
            return cls(checkpoint["model"]["name"], kwargs, checkpoint.get("replace"), checkpoint.get("qat"))
        except (KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{path} is a {CHECKPOINT_FORMAT} checkpoint without model name/kwargs") from exc


def assemble(recipe: Recipe) -> nn.Module:
    """The model of ``recipe`` with fresh weights: architecture, then replacements, then QAT preparation."""
    model = apply_config(build(recipe.name, **recipe.kwargs), recipe.replace)
    return qat.prepare(model, recipe.qat) if recipe.qat else model


def _load_strict(model: nn.Module, state_dict: dict, path) -> None:
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise UserError(f"{path} does not match the rebuilt architecture (check --model/--quality/--replace_parts/"
                        f"--act): {detail}") from exc


def _architecture_kwargs(name: str, quality: int | None, state_dict: dict | None = None) -> dict:
    """``quality`` for models that have one: the state dict's own if the registry can tell it, else ``quality``."""
    model = entry(name)
    if not model.has_quality:
        return {}
    inferred = model.quality_of(state_dict) if state_dict is not None and model.quality_of else None
    return {"quality": inferred or quality or 1}


def check_finite_parameters(model: nn.Module, source) -> nn.Module:
    """``model`` itself; a one-line error naming the first parameter that holds NaN or infinity.

    Weights of a diverged run or a damaged file give non-finite latents, on which the entropy coder never
    finishes, and garbage everywhere else: they are refused where they are loaded, not where they fail.
    """
    for key, value in model.named_parameters():
        if not torch.isfinite(value).all():
            raise UserError(f"{source} holds non-finite values (NaN or inf) in {key}; the run that wrote it "
                            "diverged or the file is damaged: use an earlier checkpoint")
    return model


def load_model(name: str | None = None, *, quality: int | None = None, pretrained: bool = False, checkpoint: str | None = None,
               trust: bool = False, replace: dict | None = None, raw: bool = False) -> nn.Module:
    """Return the model (in eval mode) described by the arguments; its parameters are finite.

    - ``checkpoint`` is one of our training checkpoints: name, kwargs, replace and QAT configs come from it
      (``name``, if given, must agree; ``replace`` must be None).
    - ``checkpoint`` is a raw/zoo state dict: :func:`build_with_weights`; with ``replace`` the
      replaced architecture is rebuilt first (quality inferred from the conv sizes for bmshj2018); if the
      weights are those of the unreplaced model, they load first and the replacement follows (warning).
    - no checkpoint: the architecture at ``quality``, with its published weights if ``pretrained``, then ``replace``.
    """
    model = _rebuild(name, quality, pretrained, checkpoint, trust, replace, raw)
    return check_finite_parameters(model, checkpoint or "the published weights") if checkpoint or pretrained else model


def _rebuild(name: str | None, quality: int | None, pretrained: bool, checkpoint: str | None, trust: bool,
             replace: dict | None, raw: bool) -> nn.Module:
    """The model of :func:`load_model`, before its weights are checked."""
    if checkpoint is None:
        name = name or DEFAULT_MODEL
        if pretrained and not entry(name).published_weights:
            raise UserError(f"{name} has no published weights; pass its weights with --checkpoint PATH")
        model = (build_with_weights(name, pretrained=True, **_architecture_kwargs(name, quality)) if pretrained
                 else build(name, **_architecture_kwargs(name, quality)))
        return apply_config(model, replace).eval()
    if pretrained:
        raise UserError("give either pretrained weights or a checkpoint, not both")
    obj = load_file(checkpoint, trust=trust)
    if is_training_checkpoint(obj):
        return _from_training_checkpoint(obj, name, replace, checkpoint, raw)
    name = name or DEFAULT_MODEL
    if replace is None:
        try:
            return build_with_weights(name, checkpoint=checkpoint, trust=trust).eval()
        except UserError as exc:
            raise UserError(f"{exc}; if these are weights of a replaced model, pass the --replace_parts/--act/"
                            "--decoder_upsample flags it was trained with") from exc
    state_dict = extract_state_dict(obj, checkpoint)
    model = apply_config(build(name, **_architecture_kwargs(name, quality, state_dict)), replace)
    try:
        _load_strict(model, state_dict, checkpoint)
    except UserError as replaced_error:
        # Weights of the original architecture (e.g. a zoo GDN model): load them, then replace (seed 003's
        # "apply --replace_parts before export"); the new layers keep their own initialisation.
        try:
            model = apply_config(build_with_weights(name, checkpoint=checkpoint, trust=trust), replace)
        except UserError:
            raise replaced_error from None
        warnings.warn(f"{checkpoint} holds weights of the unreplaced model; the replaced layers are freshly "
                      "initialised", stacklevel=2)
    return model.eval()


def _from_training_checkpoint(obj: dict, name: str | None, replace: dict | None, path, raw: bool = False) -> nn.Module:
    recipe = Recipe.read(obj, path)
    if "state_dict" not in obj:
        raise UserError(f"{path} is a {CHECKPOINT_FORMAT} checkpoint without a state_dict")
    state_dict = obj["state_dict"] if raw or obj.get("ema_state_dict") is None else obj["ema_state_dict"]
    if name is not None and name != recipe.name:
        raise UserError(f"{Path(path).name} holds a {recipe.name} model, not {name}; drop --model or fix it")
    if replace is not None and architecture(replace) != architecture(recipe.replace):
        raise UserError(f"{Path(path).name} already records its architecture replacement; drop the "
                        "--replace_parts/--act flags")
    model = assemble(recipe)
    _load_strict(model, state_dict, path)
    if recipe.qat:
        qat.finalize(model)
    return model.eval()


def start_from_weights(name: str, quality: int | None, *, pretrained: bool, checkpoint: str | None, trust: bool,
                       replace: dict | None, qat_config: dict | None) -> tuple[nn.Module, dict | None, dict | None]:
    """A new run's starting model from published weights or a checkpoint, with the recipes it will train.

    Weights from one of our runs come with their own replace/QAT recipes (the flags may repeat them, not
    change them); otherwise the flags' replacement is applied to the loaded weights, then QAT. Returns the
    model and the replace and QAT configs it has.
    """
    model = load_model(name, quality=quality, pretrained=pretrained, checkpoint=checkpoint, trust=trust)
    inherited = load_file(checkpoint, trust=trust) if checkpoint else None
    applied = {key: inherited.get(key) if is_training_checkpoint(inherited) else None for key in ("replace", "qat")}
    if applied["replace"] and replace:
        # The recorded architecture stays; what trains is the new run's choice (e.g. --freeze_igdn).
        if architecture(replace) not in (None, architecture(applied["replace"])):
            raise UserError(f"{checkpoint} was trained with another replace recipe; drop --replace_parts/--act")
        applied["replace"] = with_scope(applied["replace"], replace)
    if applied["qat"] and qat_config and qat_config != applied["qat"]:
        raise UserError(f"{checkpoint} was trained with another qat recipe; drop --qat")
    if replace and not applied["replace"]:
        if applied["qat"]:
            raise UserError(f"{checkpoint} is a QAT model; layers cannot be replaced after QAT")
        model = apply_config(model, replace)
    if qat_config and not applied["qat"]:
        model = qat.prepare(model, qat_config)
    return model, applied["replace"] or replace, applied["qat"] or qat_config
