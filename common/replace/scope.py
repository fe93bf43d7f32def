"""Which parameters train: ``--train_scope`` and seed 001's ``--train_igdn`` / ``--freeze_igdn`` / ``--unfreeze_all``."""
from __future__ import annotations

from compressai.layers import GDN
from torch import nn

from common.errors import UserError
from common.models import is_aux_parameter
from common.replace.transforms import PARTS, is_replaced

TRAIN_SCOPES = ("replaced", "replaced+hyper", "all")
# Entropy-model parts: the factorized prior's bottleneck and, in hyperprior models, the hyper transforms.
HYPER_PARTS = ("entropy_bottleneck", "h_a", "h_s", "gaussian_conditional")


def trainable_names(model: nn.Module, scope: str, replaced_transforms: tuple[str, ...] = (), train_igdn: bool = False,
                    freeze_igdn: bool = False, unfreeze_all: bool = False) -> set[str]:
    """Names of the parameters (aux ``quantiles`` included) that the given scope trains.

    ``replaced`` means the replaced blocks: the whole transforms whose GDN/IGDN were replaced
    (``replaced_transforms``, e.g. ``("g_a",)`` for ``--replace_parts encoder``; a ReLU has no weights, so
    the convolutions around it must adapt) plus every inserted layer elsewhere (the Upsample+Conv layers
    of ``--decoder_upsample``, alone trainable by default as in seed 001).
    """
    if scope not in TRAIN_SCOPES:
        raise UserError(f"--train_scope must be one of {', '.join(TRAIN_SCOPES)}, got {scope!r}")
    if train_igdn and freeze_igdn:
        raise UserError("--train_igdn and --freeze_igdn contradict each other; pass only one")
    names: set[str] = set()
    if scope == "all" or unfreeze_all:
        names = {name for name, _ in model.named_parameters()}
    else:
        names = {name for name, _ in model.named_parameters() if name.split(".", 1)[0] in replaced_transforms}
        for mod_name, module in model.named_modules():
            if is_replaced(module):
                names |= {f"{mod_name}.{n}" for n, _ in module.named_parameters()}
        if scope == "replaced+hyper":
            names |= {name for name, _ in model.named_parameters() if name.split(".", 1)[0] in HYPER_PARTS}
    gdn_names = {f"{mod_name}.{n}" for mod_name, module in model.named_modules() if isinstance(module, GDN)
                 for n, _ in module.named_parameters()}
    if train_igdn:
        names |= {n for n in gdn_names if n.startswith("g_s.")}
    if freeze_igdn:
        names -= gdn_names
    return names


def set_trainable(model: nn.Module, config: dict | None) -> list[nn.Parameter]:
    """Set ``requires_grad`` per ``config`` and return the trainable main-network parameters.

    ``config`` None (no replace flags) trains everything. EntropyBottleneck ``quantiles`` get
    ``requires_grad`` when the entropy model is in scope, but are left out of the returned list: they
    belong to the auxiliary optimizer.
    """
    if config is None:
        names = {name for name, _ in model.named_parameters()}
    else:
        names = trainable_names(model, config["train_scope"], PARTS[config["replace_parts"]], config["train_igdn"],
                                config["freeze_igdn"], config["unfreeze_all"])
    params = []
    for name, param in model.named_parameters():
        param.requires_grad_(name in names)
        if name in names and not is_aux_parameter(name):
            params.append(param)
    if not params:
        raise UserError("the chosen --train_scope leaves no parameter to train (nothing was replaced?); "
                        "use --train_scope all or replace something")
    return params


def aux_parameters(model: nn.Module) -> list[nn.Parameter]:
    """EntropyBottleneck ``quantiles`` left trainable by :func:`set_trainable` (for the aux optimizer;
    empty when the entropy model is frozen, in which case the aux loss must be skipped)."""
    return [param for name, param in model.named_parameters() if is_aux_parameter(name) and param.requires_grad]
