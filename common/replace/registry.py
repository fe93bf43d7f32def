"""Registry of GDN/IGDN replacement blocks selectable with ``--act NAME``.

A block is a pair of factories ``enc_factory(channels, **options) -> nn.Module`` (replaces GDN in the
encoder ``g_a``) and ``dec_factory(channels, **options) -> nn.Module`` (replaces IGDN in ``g_s``).
Built in: ``relu`` (``nn.ReLU(inplace=False)``) and ``gdnish`` (:class:`GDNishLiteEnc`/``Dec``).

Adding your own block needs no change to the trainer: put, in an importable module (say ``my_blocks.py``)::

    from common.replace import register_block
    register_block("myact", lambda c, **o: MyEnc(c, **o), lambda c, **o: MyDec(c, **o))

and train with ``--act myact --act_module my_blocks [--act_opt width=2.0 ...]``. The module name is stored
in the checkpoint's replace config, so evaluation and export import it again when they load the model.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from torch import nn

from common.errors import UserError
from common.replace.blocks import GDNishLiteDec, GDNishLiteEnc

BlockFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class Block:
    enc_factory: BlockFactory
    dec_factory: BlockFactory


_BLOCKS: dict[str, Block] = {}


def register_block(name: str, enc_factory: BlockFactory, dec_factory: BlockFactory) -> None:
    """Make ``--act name`` replace GDN by ``enc_factory(C, **options)`` and IGDN by ``dec_factory(C, **options)``."""
    if name in _BLOCKS and _BLOCKS[name] != Block(enc_factory, dec_factory):
        raise ValueError(f"replacement block {name!r} is already registered")
    _BLOCKS[name] = Block(enc_factory, dec_factory)


def available_blocks() -> list[str]:
    return sorted(_BLOCKS)


def import_block_modules(modules: list[str]) -> None:
    """Import user modules that call :func:`register_block` (``--act_module``)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UserError(f"cannot import --act_module {module!r} ({exc}); make it importable from the "
                            "current directory or PYTHONPATH") from exc


def get_block(name: str) -> Block:
    if name not in _BLOCKS:
        raise UserError(f"unknown --act {name!r}; choose one of: {', '.join(available_blocks())} "
                        "(or register your own block and pass --act_module MODULE)")
    return _BLOCKS[name]


def _relu(channels: int) -> nn.Module:
    return nn.ReLU(inplace=False)


register_block("relu", _relu, _relu)
register_block("gdnish", GDNishLiteEnc, GDNishLiteDec)
