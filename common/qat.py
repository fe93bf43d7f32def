"""Light quantization-aware training (seed 002 §3') on ``torch.ao.quantization`` fake-quant modules.

Every Conv2d / ConvTranspose2d / Linear inside the chosen transforms is wrapped by :class:`FakeQuantLayer`:
its weight goes through an INT8 fake-quantizer (per-output-channel symmetric, scale max|w|/127, by
default) and its output through a UINT8 affine fake-quantizer whose range an observer learns (EMA or
min/max). The entropy model is never touched (it has no conv layers); with ``--qat_exclude_entropy``
(default) the hyperprior transforms ``h_a``/``h_s`` of hyperprior models are left in float too.

Phases, driven by :meth:`QATController.on_step` (the engine calls it before every training step):

- calibration, steps ``[0, qat_calib_steps)``: activation and weight observers update;
- freeze, steps ``[qat_calib_steps, qat_freeze_after)``: activation scales fixed, weight scales follow
  the weights as they train;
- eval-ready, steps ``>= qat_freeze_after``: every scale fixed (the deployment scales).

Fake quantization stays on in every phase ("freeze", not "disable", in the seed's table); layers keep
training. ``--qat_disable_observer_step N`` (N >= 0) stops every observer from step N on, whatever the
phase. In ``eval()`` mode observers never update (validation batches do not move the scales), and
``--qat_eval_fakequant false`` makes eval-mode forwards run in float.

QAT under AMP is allowed but not recommended (a warning is issued); fake quantization itself always
runs in float32.
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.ao.quantization import (FakeQuantize, MinMaxObserver, MovingAverageMinMaxObserver,
                                   PerChannelMinMaxObserver)

from common.errors import UserError

if TYPE_CHECKING:
    from common.train.config import QATConfig

QAT_SCOPES = {"encoder": ("g_a",), "decoder": ("g_s",), "all": ("g_a", "g_s")}
HYPER_TRANSFORMS = ("h_a", "h_s")
ACT_OBSERVERS = ("ema", "minmax")
EMA_AVERAGING_CONSTANT = 0.01
QUANTIZABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
DEFAULTS = {"scope": "all", "exclude_entropy": True, "calib_steps": 2000, "freeze_after": 8000,
            "act_observer": "ema", "w_per_channel": True, "disable_observer_step": -1, "eval_fakequant": True}


def make_config(**overrides) -> dict:
    """Validated QAT config (plain types) from :data:`DEFAULTS` and ``overrides``."""
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise UserError(f"unknown QAT option(s): {', '.join(sorted(unknown))}")
    config = {**DEFAULTS, **overrides}
    if config["scope"] not in QAT_SCOPES:
        raise UserError(f"--qat_scope must be one of {', '.join(QAT_SCOPES)}, got {config['scope']!r}")
    if config["act_observer"] not in ACT_OBSERVERS:
        raise UserError(f"--qat_act_observer must be ema or minmax, got {config['act_observer']!r}")
    if config["calib_steps"] < 1:
        raise UserError(f"--qat_calib_steps must be >= 1 (activation ranges need data), got {config['calib_steps']}")
    if config["freeze_after"] < config["calib_steps"]:
        raise UserError(f"--qat_freeze_after ({config['freeze_after']}) must be >= --qat_calib_steps "
                        f"({config['calib_steps']})")
    return config


def config_from_args(args: QATConfig) -> dict | None:
    """QAT config from parsed flags, or None without ``--qat``."""
    if not args.qat:
        return None
    return make_config(scope=args.qat_scope, exclude_entropy=args.qat_exclude_entropy,
                       calib_steps=args.qat_calib_steps, freeze_after=args.qat_freeze_after,
                       act_observer=args.qat_act_observer, w_per_channel=args.qat_w_per_channel,
                       disable_observer_step=args.qat_disable_observer_step,
                       eval_fakequant=args.qat_eval_fakequant)


def _restricted_symmetric_qparams(observer) -> tuple[Tensor, Tensor]:
    # scale = max|w| / 127: weights use [-127, 127] (restricted range, as NPUs do) inside the [-128, 127]
    # range ONNX requires. With max|w| / 127.5 (PyTorch's default) the most negative weight of every
    # channel would sit exactly on a rounding tie, which runtimes break differently.
    amax = torch.maximum(-observer.min_val, observer.max_val)
    scale = torch.clamp(amax / 127.0, min=observer.eps.item())
    return scale, torch.zeros_like(scale, dtype=torch.int64)


class RestrictedSymmetricObserver(MinMaxObserver):
    """Per-tensor symmetric weight observer with scale max|w| / 127."""

    def calculate_qparams(self):
        return _restricted_symmetric_qparams(self)


class RestrictedSymmetricPerChannelObserver(PerChannelMinMaxObserver):
    """Per-channel symmetric weight observer with scale max|w_c| / 127."""

    def calculate_qparams(self):
        return _restricted_symmetric_qparams(self)


def weight_fake_quant(layer: nn.Module, per_channel: bool) -> FakeQuantize:
    """INT8 symmetric weight fake-quantizer (values in [-127, 127]); channel axis = output channels."""
    if per_channel:
        ch_axis = 1 if isinstance(layer, nn.ConvTranspose2d) else 0
        return FakeQuantize(observer=RestrictedSymmetricPerChannelObserver, quant_min=-128, quant_max=127,
                            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=ch_axis)
    return FakeQuantize(observer=RestrictedSymmetricObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
                        qscheme=torch.per_tensor_symmetric)


def activation_fake_quant(observer: str) -> FakeQuantize:
    """UINT8 affine per-tensor activation fake-quantizer."""
    if observer == "ema":
        return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                            qscheme=torch.per_tensor_affine, averaging_constant=EMA_AVERAGING_CONSTANT)
    return FakeQuantize(observer=MinMaxObserver, quant_min=0, quant_max=255, dtype=torch.quint8,
                        qscheme=torch.per_tensor_affine)


class FakeQuantLayer(nn.Module):
    """A Conv2d/ConvTranspose2d/Linear with fake-quantized weight and output."""

    def __init__(self, layer: nn.Module, act_observer: str = "ema", w_per_channel: bool = True,
                 eval_fakequant: bool = True):
        super().__init__()
        if not isinstance(layer, QUANTIZABLE):
            raise TypeError(f"cannot fake-quantize {type(layer).__name__}")
        self.layer = layer
        device = layer.weight.device
        self.weight_fake_quant = weight_fake_quant(layer, w_per_channel).to(device)
        self.output_fake_quant = activation_fake_quant(act_observer).to(device)
        self.eval_fakequant = eval_fakequant
        # Phase flags set by the controller; eval mode overrides them (see train()).
        self.observe_weights = True
        self.observe_activations = True
        with torch.no_grad():  # weight scales are known before any data is seen
            self.weight_fake_quant(layer.weight.detach())

    def train(self, mode: bool = True) -> "FakeQuantLayer":
        super().train(mode)
        self._apply_observer_flags()
        return self

    def set_phase(self, observe_weights: bool, observe_activations: bool) -> None:
        self.observe_weights = observe_weights
        self.observe_activations = observe_activations
        self._apply_observer_flags()

    def _apply_observer_flags(self) -> None:
        for fq, on in ((self.weight_fake_quant, self.observe_weights),
                       (self.output_fake_quant, self.observe_activations)):
            if on and self.training:
                fq.enable_observer()
            else:
                fq.disable_observer()

    def _linear_op(self, x: Tensor, weight: Tensor) -> Tensor:
        layer = self.layer
        if isinstance(layer, nn.Conv2d):
            return layer._conv_forward(x, weight, layer.bias)
        if isinstance(layer, nn.ConvTranspose2d):
            return F.conv_transpose2d(x, weight, layer.bias, layer.stride, layer.padding, layer.output_padding,
                                      layer.groups, layer.dilation)
        return F.linear(x, weight, layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training or self.eval_fakequant):
            return self.layer(x)
        out = self._linear_op(x, self.weight_fake_quant(self.layer.weight))
        if out.dtype == torch.float32:
            return self.output_fake_quant(out)
        # Fake quantization kernels need float32 (AMP hands them fp16/bf16).
        return self.output_fake_quant(out.float()).to(out.dtype)


def fake_quant_layers(model: nn.Module) -> list[FakeQuantLayer]:
    return [m for m in model.modules() if isinstance(m, FakeQuantLayer)]


def _wrap(parent: nn.Module, config: dict) -> int:
    count = 0
    for name, child in parent.named_children():
        if isinstance(child, QUANTIZABLE):
            setattr(parent, name, FakeQuantLayer(child, config["act_observer"], config["w_per_channel"],
                                                 config["eval_fakequant"]))
            count += 1
        elif not isinstance(child, FakeQuantLayer):
            count += _wrap(child, config)
    return count


def prepare(model: nn.Module, config: dict | None) -> nn.Module:
    """Wrap the layers selected by ``config`` with fake quantization (in place; returns ``model``)."""
    if config is None:
        return model
    transforms = QAT_SCOPES[config["scope"]]
    if config["scope"] == "all" and not config["exclude_entropy"]:
        transforms += HYPER_TRANSFORMS
    count = 0
    for attr in transforms:
        part = getattr(model, attr, None)
        if isinstance(part, nn.Module):
            count += _wrap(part, config)
    if count == 0:
        raise UserError(f"--qat_scope {config['scope']} found no Conv/Linear layer to quantize in "
                        f"{type(model).__name__}")
    return model


class QATController:
    """Drives the observer phases of a prepared model; call :meth:`on_step` before every training step."""

    def __init__(self, model: nn.Module, config: dict):
        self.model = model
        self.config = config
        self.layers = fake_quant_layers(model)
        if not self.layers:
            raise ValueError("model has no fake-quantized layer; call common.qat.prepare first")

    def phase(self, step: int) -> str:
        if step < self.config["calib_steps"]:
            return "calibration"
        if step < self.config["freeze_after"]:
            return "freeze"
        return "eval-ready"

    def observers_at(self, step: int) -> tuple[bool, bool]:
        """(weight observers on, activation observers on) at ``step``."""
        stop = self.config["disable_observer_step"]
        if stop >= 0 and step >= stop:
            return False, False
        phase = self.phase(step)
        return phase != "eval-ready", phase == "calibration"

    def on_step(self, global_step: int) -> str:
        """Set the observer state for ``global_step``; returns the phase name (for logging)."""
        observe_weights, observe_activations = self.observers_at(global_step)
        for layer in self.layers:
            layer.set_phase(observe_weights, observe_activations)
        return self.phase(global_step)

    def finalize(self) -> nn.Module:
        return finalize(self.model)


def finalize(model: nn.Module) -> nn.Module:
    """Freeze every observer for deployment (scales final, fake quantization on); the engine then calls
    ``model.update(force=True)``. Warns when an activation range was never observed."""
    unobserved = []
    for name, module in model.named_modules():
        if isinstance(module, FakeQuantLayer):
            module.set_phase(False, False)
            if torch.isinf(module.output_fake_quant.activation_post_process.min_val).any():
                unobserved.append(name)
    if unobserved:
        warnings.warn(f"activation ranges never observed for {', '.join(unobserved)}: they still use scale 1; "
                      "run at least one training step in the calibration phase", stacklevel=2)
    return model


def snap_weights(model: nn.Module) -> nn.Module:
    """Replace every fake-quantized layer's weight by its quantized value (integer codes times scale), in place.

    What an exported graph should store: a runtime that quantizes the float weight itself rounds
    ``w / scale`` where PyTorch's fake quantizer rounds ``w * (1 / scale)``, and a weight at a half step gets
    another code (seen in a trained model: one weight of 4800 at -4.5000005 steps moved one output channel by up
    to 4 steps). Snapped weights are whole multiples of their scale, so every runtime gives the same codes;
    PyTorch's eval-mode outputs do not change (fake quantization of a quantized weight returns it).
    """
    with torch.no_grad():
        for layer in fake_quant_layers(model):
            fake_quant = layer.weight_fake_quant
            observing = bool(fake_quant.observer_enabled[0])
            fake_quant.disable_observer()
            layer.layer.weight.copy_(fake_quant(layer.layer.weight))
            if observing:
                fake_quant.enable_observer()
    return model
