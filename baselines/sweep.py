"""λ sweep: one setting trained at every λ and evaluated with real bitstreams, by the study runner.

``python -m baselines.sweep --lambdas 0.0035,0.013,0.0483 --out_dir runs/sweep [train flags...]``

A sweep is a study of one arm (``baselines.compare``): the same runs, evaluation, bundle and resumability.
Every flag that ``python -m common.train`` knows is that arm's flags (``--optimizer balanced`` turns the
standard-Adam curve into the Balanced R-D one); ``--seed`` and ``--checkpoint`` become the study's seed and
starting model. With ``--warm_start_steps N`` a shared model is first trained with Adam for N steps at the
middle λ and every λ run fine-tunes from it: short CPU budgets reach a monotone curve that way, since training
time rather than λ otherwise limits quality (see ../shared/spec/README.md, "Convergence within a CPU budget").
``--start_checkpoint PATH`` starts every run from an existing model instead, e.g. the warm start of another
optimizer's sweep.

Outputs in ``--out_dir``: the run folders ``<name>/seed<k>/lambda_<λ>/``, ``warm_start/`` and the study bundle
(``summary.json``, ``curves/<name>_seed<k>.json`` in CompressAI's format with the test set and codec recorded,
``points.csv``, ``rd.png``, JPEG and WebP measured on the same images), which ``python -m common.report`` renders.
"""
from __future__ import annotations

import argparse
import shlex
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from common.checkpoint import load_file
from common.cli import OneLineErrorParser, number, parse_with_train_flags, run_main
from common.errors import UserError
from common.train.config import TrainConfig


def parse_lambdas(text: str) -> list[float]:
    try:
        values = sorted(float(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise UserError(f"--lambdas must be comma-separated numbers, got {text!r}") from exc
    if len(values) < 1 or any(v <= 0 for v in values):
        raise UserError(f"--lambdas needs positive values, got {text!r}")
    return values


DEFAULT_LAMBDAS = "0.0035,0.013,0.0483"


def sweep_lambdas(text: str | None, config: TrainConfig) -> list[float]:
    """--lambdas, else the ladder of the run's --recipe, else the default ladder."""
    from common.train.recipes import load_recipe

    if text is None and config.model.recipe:
        return list(load_recipe(config.model.recipe, set(config.flat())).lambdas)
    return parse_lambdas(text or DEFAULT_LAMBDAS)


def sweep_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="python -m baselines.sweep", add_help=False,
                                description="Train and evaluate one model per λ (other flags go to common.train).")
    parser.add_argument("--lambdas", default=None,
                        help=f"comma-separated λ values (default: the --recipe's ladder, else {DEFAULT_LAMBDAS})")
    parser.add_argument("--out_dir", default="runs/sweep")
    parser.add_argument("--name", default=None, help="the arm's name, of letters, digits, - and _ (default: model "
                                                     "and optimizer)")
    parser.add_argument("--warm_start_steps", type=number(int, minimum=0), default=0,
                        help="train a shared start model at the middle λ for this many steps first")
    parser.add_argument("--warm_start_lr", type=number(float, above=0), default=None, help="learning rate of the warm start")
    parser.add_argument("--start_checkpoint", default=None,
                        help="start every λ run from this checkpoint instead, e.g. another sweep's "
                             "warm_start/last.pt, so that two optimizers' curves share one starting model")
    parser.add_argument("--anchors", default="jpeg,webp",
                        help="classic codecs measured on the same images ('' for none; default: jpeg,webp)")
    parser.add_argument("--eval_dataset", default=None,
                        help="images for the real-bitstream evaluation (default: --test_dataset or the "
                             "embedded test samples)")
    return parser


def finished(run_dir: Path, total_steps: int | None) -> bool:
    """Whether the run's checkpoint says it ended (and, with ``--steps``, after at least that many steps)."""
    path = run_dir / "last.pt"
    if not path.is_file():
        return False
    ckpt = load_file(path)
    return bool(ckpt.get("finished")) and (total_steps is None or ckpt["progress"]["step"] >= total_steps)


def run_config(config: TrainConfig, save_dir: Path, lmbda: float, *, checkpoint: str | None = None,
               steps: int | None = None, lr: float | None = None) -> TrainConfig:
    """``config`` for one λ run into ``save_dir``, resuming what has a checkpoint.

    ``checkpoint``, ``steps`` and ``lr`` replace the config's starting weights, run length and learning rate.
    """
    resume = (save_dir / "last.pt").is_file()
    # Resume what has a checkpoint; replace what a run that died before its first checkpoint left.
    output = replace(config.output, save_dir=str(save_dir), resume="auto" if resume else None, overwrite=not resume)
    schedule = replace(config.schedule, steps=steps or config.schedule.steps, lr=lr or config.schedule.lr)
    model = replace(config.model, checkpoint=checkpoint) if checkpoint else config.model
    return replace(config, loss=replace(config.loss, lmbda=lmbda), output=output, schedule=schedule, model=model)


def train_or_reuse(config: TrainConfig, done: bool) -> None:
    """Train the run of ``config`` (see :func:`run_config`), or check that the finished one in its folder
    (``done``) was trained with these flags."""
    from common.train.engine import Trainer, check_finished_run

    save_dir = Path(config.output.save_dir)
    if done:
        check_finished_run(save_dir, config)
        print(f"λ={config.loss.lmbda:g}: finished run found in {save_dir}, skipped")
    else:
        print(f"λ={config.loss.lmbda:g}: training into {save_dir}")
        Trainer(config).fit()


def study_argv(args: argparse.Namespace, train_argv: list[str], name: str, lambdas: Sequence[float],
               start: str | None) -> list[str]:
    """The ``baselines.compare`` arguments of the sweep: one arm holding every training flag, the seed and the
    starting model given as the study's."""
    flags, seeds = [], "0"
    tokens = iter(train_argv)
    for token in tokens:
        flag, sep, value = token.partition("=")
        if flag in ("--seed", "--checkpoint"):
            value = value if sep else next(tokens, "")
            if flag == "--seed":
                seeds = value
            elif start is not None:
                raise UserError("--checkpoint, --start_checkpoint and --warm_start_steps each choose the starting "
                                "model; pass one")
            else:
                start = value
            continue
        flags.append(token)
    return ["--out_dir", str(args.out_dir), "--arm", f"{name}={shlex.join(flags)}",
            "--lambdas", ",".join(repr(value) for value in lambdas), "--seeds", seeds, "--anchors", args.anchors,
            *(["--start_checkpoint", start] if start else []),
            *(["--eval_dataset", args.eval_dataset] if args.eval_dataset else []),
            "--title", f"{name}: λ sweep"]


def main(argv: Sequence[str] | None = None) -> int:
    from baselines import compare
    from common.train.optimizers import optimizer_name, with_optimizer
    from common.train.options import parse_config

    parsed = parse_with_train_flags(sweep_parser(), argv)
    if parsed is None:
        return 0
    args, train_argv = parsed
    if any(flag in train_argv for flag in ("--lambda", "--save_dir", "--resume")):
        raise UserError("--lambda, --save_dir and --resume are set by the sweep; use --lambdas and --out_dir")
    config = parse_config(train_argv)
    lambdas = sweep_lambdas(args.lambdas, config)
    out_dir = Path(args.out_dir)
    name = args.name or f"{config.model.model}-{optimizer_name(config.optim)}"

    if args.start_checkpoint and args.warm_start_steps > 0:
        raise UserError("--start_checkpoint and --warm_start_steps both choose the starting model; pass one")
    start = args.start_checkpoint
    if args.warm_start_steps > 0:
        warm_dir = out_dir / "warm_start"
        done = finished(warm_dir, args.warm_start_steps)
        if not done:
            print(f"warm start: {args.warm_start_steps} steps of Adam at λ={lambdas[len(lambdas) // 2]}")
        # The shared start is standard Adam whatever the swept optimizer (its flags go back to defaults).
        warm = replace(config, optim=with_optimizer(config.optim, "adam"), output=replace(config.output, recon_every=0))
        train_or_reuse(run_config(warm, warm_dir, lambdas[len(lambdas) // 2], steps=args.warm_start_steps,
                                  lr=args.warm_start_lr), done)
        start = str(warm_dir / "last.pt")
    return compare.main(study_argv(args, train_argv, name, lambdas, start))


def cli() -> None:
    """The ``lic-sweep`` command (installed by ``make setup``): ``main`` with one-line errors."""
    run_main(main)


if __name__ == "__main__":
    cli()
