"""Hyperparameter search over training runs with optuna (SQLite storage: resumable, inspectable).

``python -m common.search --space gamma=log:0.0005:0.02 --space w_lr=log:0.005:0.1 --trials 12
--out_dir runs/search [--sampler tpe|grid] [train flags...]``

Each trial is one ``common.train`` run (all flags other than the search's own pass through) with the
sampled values set as flags; its objective is the final validation R-D loss (lower is better), so trials
at the same λ compare directly. A space is ``name=log:LOW:HIGH``, ``name=float:LOW:HIGH``,
``name=int:LOW:HIGH`` or ``name=choice:A,B,C``; with ``--sampler grid`` every space must be a choice list
and the study runs the full grid (the seed's phase-1 γ × w_lr search is a grid of 4 × 3).
Interrupted studies continue where they stopped (same ``--out_dir``); a finished study only reprints its
table. A resumed TPE study draws new values (its sampler seed counts the trials already in the study; processes
sharing a study add a random salt each).
``--storage URL`` takes any optuna RDB URL (default: ``sqlite:///OUT_DIR/study.db``): several processes or
machines given the same URL and ``--study_name`` work on one study (they may start together on an empty storage:
the one that loses the race to create optuna's tables loads them), and each stops once the study holds
``--trials`` finished trials (a trial another process has started still finishes). Results: the study, ``trials.csv``, ``trials.md`` (ranked) and the printed table.
"""
from __future__ import annotations

import argparse
import math
import random
import time
from pathlib import Path
from typing import Sequence

from common.cli import OneLineErrorParser, number, parse_with_train_flags, run_main
from common.paths import output_dir
from common.errors import UserError
from common.rd import format_markdown

KINDS = ("log", "float", "int", "choice")


def parse_space(text: str) -> tuple[str, str, list]:
    """``name=kind:args`` -> (name, kind, values)."""
    try:
        name, spec = text.split("=", 1)
        kind, rest = spec.split(":", 1)
    except ValueError as exc:
        raise UserError(f"--space {text!r}: expected name=kind:args, e.g. gamma=log:0.001:0.01") from exc
    if kind not in KINDS:
        raise UserError(f"--space {text!r}: kind must be one of {', '.join(KINDS)}")
    if kind == "choice":
        values = [v for v in rest.split(",") if v]
        if not values:
            raise UserError(f"--space {text!r}: give at least one choice")
        return name, kind, values
    try:
        low, high = (float(v) for v in rest.split(":"))
    except ValueError as exc:
        raise UserError(f"--space {text!r}: expected {kind}:LOW:HIGH") from exc
    if not low < high or (kind == "log" and low <= 0):
        raise UserError(f"--space {text!r}: need LOW < HIGH (and LOW > 0 for log)")
    return name, kind, [low, high]


def suggest(trial, name: str, kind: str, values: list) -> str:
    if kind == "choice":
        return str(trial.suggest_categorical(name, values))
    if kind == "int":
        return str(trial.suggest_int(name, int(values[0]), int(values[1])))
    return repr(trial.suggest_float(name, values[0], values[1], log=kind == "log"))


# What a database says when another process created the same tables, version rows or study between this
# process's check and its own creation (SQLite, PostgreSQL, MySQL), or held the write lock meanwhile.
_CREATION_RACE = ("already exists", "unique constraint failed", "duplicate key", "duplicate entry",
                  "database is locked")


def open_study(name: str, storage: str, attempts: int = 8):
    """Create the study, or load it when it exists, on a storage that other workers may be creating too.

    Workers started together on an empty storage race to create optuna's tables and the study: the loser's
    ``CREATE TABLE`` fails with ``table studies already exists`` (or its version row with a unique
    constraint). Each such failure is retried after a short random pause; by then the tables exist and the
    study is loaded. Any other failure, or the last attempt's, is the user's storage URL: one line.
    """
    import optuna

    pause = random.Random()
    for attempt in range(attempts):
        try:
            return optuna.create_study(study_name=name, storage=storage, direction="minimize", load_if_exists=True)
        except Exception as exc:  # noqa: BLE001 - any failure to open the user's storage URL (driver, dialect, access)
            if attempt + 1 < attempts and any(text in str(exc).lower() for text in _CREATION_RACE):
                time.sleep(0.05 * (attempt + 1) + 0.1 * pause.random())
                continue
            raise UserError(f"--storage {storage}: {' '.join(str(exc).split())[:200]}") from exc
    raise AssertionError("unreachable")


def search_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m common.search", add_help=False,
                                description="optuna search over common.train runs")
    parser.add_argument("--space", action="append", default=[], help="name=kind:args (repeatable)")
    parser.add_argument("--trials", type=number(int, minimum=1), default=None, help="number of trials (grid: the whole grid)")
    parser.add_argument("--sampler", choices=("tpe", "grid"), default="tpe")
    parser.add_argument("--out_dir", default="runs/search")
    parser.add_argument("--study_name", default="search")
    parser.add_argument("--search_seed", type=int, default=0, help="sampler seed")
    parser.add_argument("--storage", default=None, metavar="URL",
                        help="optuna RDB URL shared by every process of the study, e.g. "
                             "postgresql://user@host/db (default: sqlite:///OUT_DIR/study.db)")
    return parser


def run_study(args: argparse.Namespace, train_argv: list[str]):
    import optuna

    from common.train.engine import Trainer, TrainingDiverged, check_config
    from common.train.config import TrainConfig
    from common.train.options import parse_config

    spaces = [parse_space(text) for text in args.space]
    if not spaces:
        raise UserError("give at least one --space")
    names = [name for name, _, _ in spaces]
    clashes = [name for name in names if f"--{name}" in train_argv]
    if clashes or "--save_dir" in train_argv:
        raise UserError(f"searched flags and --save_dir are set by the search; remove {clashes or ['--save_dir']}")
    unknown = [name for name in names if name not in TrainConfig().flat()]
    if unknown:
        raise UserError(f"--space names no training flag: {', '.join(unknown)} (see python -m common.train --help)")
    # The pass-through flags with every value of each choice space (the other spaces at their first values) are
    # checked as a run checks them, before the first trial: a space the optimizer does not read (gamma with
    # --optimizer adam) would otherwise fail that trial inside optuna.
    first = {name: values[0] for name, _, values in spaces}
    for name, kind, values in spaces:
        for value in values if kind == "choice" else values[:1]:
            check_config(parse_config(train_argv + [f"--{key}={v}" for key, v in {**first, name: value}.items()]))
    out_dir = output_dir(args.out_dir, "--out_dir")
    if args.sampler == "grid" and any(kind != "choice" for _, kind, _ in spaces):
        raise UserError("--sampler grid needs choice spaces only (name=choice:a,b,c)")
    total = math.prod(len(values) for _, _, values in spaces) if args.sampler == "grid" else args.trials or 10
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = args.storage or f"sqlite:///{out_dir / 'study.db'}"
    study = open_study(args.study_name, storage)
    if args.sampler == "grid":
        study.sampler = optuna.samplers.GridSampler({name: values for name, _, values in spaces},
                                                    seed=args.search_seed)
    else:
        # Seeded by how many trials the study holds, so that a resumed process does not draw the values the
        # first one drew. Processes sharing a study (--storage) start together with the same counts and
        # usually the same --search_seed, so each also draws a salt of its own (such a study is not
        # reproducible anyway: its order depends on timing).
        salt = random.SystemRandom().randrange(2**31) if args.storage else 0
        study.sampler = optuna.samplers.TPESampler(
            seed=(args.search_seed + len(study.get_trials(deepcopy=False)) + salt) % 2**32)
    # A trial killed mid-run stays RUNNING in the database; it is counted as failed and run again. (With
    # several processes on one study, start them together: a late start would fail the others' running trials.)
    if args.storage is None:
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished_states))

    def objective(trial) -> float:
        values = [f"--{name}={suggest(trial, name, kind, v)}" for name, kind, v in spaces]
        run_dir = out_dir / f"trial_{trial.number:03d}"
        trial.set_user_attr("run_dir", str(run_dir))
        print(f"trial {trial.number}: {' '.join(values)}")
        try:
            val = Trainer(parse_config([*train_argv, *values, "--save_dir", str(run_dir),
                                                     "--overwrite"])).fit()
        except TrainingDiverged as exc:
            # One diverging setting is a result of the search, not the end of it.
            print(f"trial {trial.number} pruned: {exc}")
            raise optuna.TrialPruned(str(exc)) from exc
        for key in ("psnr", "ms_ssim", "bpp_loss"):
            if key in val:
                trial.set_user_attr(key, val[key])
        return val["loss"]

    if done < total:
        # Every process stops once the study as a whole holds ``total`` finished trials.
        study.optimize(objective, n_trials=total - done,
                       callbacks=[optuna.study.MaxTrialsCallback(total, states=finished_states)])
    return study


def main(argv: Sequence[str] | None = None) -> int:
    parsed = parse_with_train_flags(search_parser(), argv)
    if parsed is None:
        return 0
    args, train_argv = parsed
    study = run_study(args, train_argv)
    table = study.trials_dataframe(attrs=("number", "value", "params", "user_attrs", "state"))
    table = table.sort_values("value")
    path = Path(args.out_dir) / "trials.csv"
    table.to_csv(path, index=False)
    ranked = table.astype(object).where(table.notna(), float("nan"))
    (Path(args.out_dir) / "trials.md").write_text(format_markdown(ranked.to_dict("records")) + "\n")
    print(table.to_string(index=False))
    import optuna

    if not study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        raise UserError(f"no trial completed (see {path}); every setting diverged or failed")
    best = study.best_trial
    print(f"best trial {best.number}: loss {best.value:.4f} with {best.params}\ntable: {path}")
    for figure in plot_study(study, Path(args.out_dir)):
        print(f"figure: {figure}")
    return 0


def plot_study(study, out_dir: Path) -> list[Path]:
    """The figures a finished study supports: a loss heatmap over its first two parameters when they form a
    grid (every pair tried, as --sampler grid does), and the parameters' importance (fANOVA) when it can be
    estimated (two or more parameters, three or more completed trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    names = sorted({name for trial in complete for name in trial.params})
    written = []
    if len(names) >= 2:
        first, second = names[:2]
        rows = sorted({trial.params[first] for trial in complete}, key=float)
        columns = sorted({trial.params[second] for trial in complete}, key=float)
        losses = {(trial.params[first], trial.params[second]): trial.value for trial in complete}
        if len(losses) == len(rows) * len(columns) and len(rows) * len(columns) > 1:
            figure, axes = plt.subplots(figsize=(1.2 * len(columns) + 2.5, 0.8 * len(rows) + 1.8))
            grid = [[losses[(row, column)] for column in columns] for row in rows]
            image = axes.imshow(grid, cmap="viridis_r", aspect="auto")
            axes.set_xticks(range(len(columns)), [str(c) for c in columns])
            axes.set_yticks(range(len(rows)), [str(r) for r in rows])
            axes.set_xlabel(second)
            axes.set_ylabel(first)
            low, high = min(map(min, grid)), max(map(max, grid))
            for i, row in enumerate(grid):
                for j, value in enumerate(row):
                    dark = high > low and (value - low) / (high - low) > 0.5  # viridis_r: high losses are dark
                    axes.text(j, i, f"{value:.4g}", ha="center", va="center", fontsize=8,
                              color="white" if dark else "black")
            figure.colorbar(image, label="final validation loss (lower is better)")
            axes.set_title(f"{study.study_name}: validation loss per setting")
            written.append(out_dir / "heatmap.png")
            figure.savefig(written[-1], dpi=120, bbox_inches="tight")
            plt.close(figure)
    if len(names) >= 2 and len(complete) >= 3:
        importance = optuna.importance.get_param_importances(study)
        figure, axes = plt.subplots(figsize=(5, 0.5 * len(importance) + 1.5))
        axes.barh(list(importance), list(importance.values()), color="#4c72b0")
        axes.invert_yaxis()
        axes.set_xlabel("importance for the validation loss (fANOVA, sums to 1)")
        axes.set_title(f"{study.study_name}: parameter importance ({len(complete)} trials)")
        written.append(out_dir / "importance.png")
        figure.savefig(written[-1], dpi=120, bbox_inches="tight")
        plt.close(figure)
    return written


def cli() -> None:
    """The ``lic-search`` command (installed by ``make setup``): ``main`` with one-line errors."""
    run_main(main)


if __name__ == "__main__":
    cli()
