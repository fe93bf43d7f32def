"""Training recipes: TOML files of flag values and the λ ladder a reference trains with.

``python -m common.train --recipe hpcm-base-mse --lambda 0.0067 -tr_d D -te_d T`` takes every flag of the
recipe as its default (flags given on the command line win); ``python -m baselines.sweep --recipe NAME``
also takes the recipe's λ ladder. A recipe is a name from ``common/train/recipes/`` or a path to such a
file: ``description``, ``lambdas`` and a ``[flags]`` table keyed by flag name (``lmbda`` is ``--lambda``).
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError

RECIPE_DIR = Path(__file__).with_name("recipes")


@dataclass(frozen=True)
class TrainingRecipe:
    name: str
    description: str
    lambdas: tuple[float, ...]
    flags: dict


def available() -> list[str]:
    return sorted(path.stem for path in RECIPE_DIR.glob("*.toml"))


def load_recipe(name_or_path: str, known_flags: set[str]) -> TrainingRecipe:
    """The recipe ``name_or_path``; a flag that ``known_flags`` (flag dests) lacks is refused with one line."""
    path = Path(name_or_path)
    if not path.is_file():
        path = RECIPE_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise UserError(f"--recipe {name_or_path}: no such file, and not a recipe name; the recipes are: "
                        f"{', '.join(available())}")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"--recipe {path}: not valid TOML ({exc})") from None
    flags = data.get("flags", {})
    unknown = sorted(set(flags) - known_flags)
    if unknown:
        raise UserError(f"--recipe {path}: unknown flag(s) {', '.join(unknown)}")
    lambdas = tuple(float(value) for value in data.get("lambdas", ()))
    return TrainingRecipe(path.stem, str(data.get("description", "")), lambdas, dict(flags))
