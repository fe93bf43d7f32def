"""λ sweep: train one model per λ with the engine, evaluate each with real bitstreams, write an R-D curve.

``python -m baselines.sweep --lambdas 0.0035,0.013,0.0483 --out_dir runs/sweep [train flags...]``

Every flag that ``python -m common.train`` knows is passed through to each run (``--optimizer balanced``
turns the standard-Adam baseline into the Balanced R-D curve). With ``--warm_start_steps N`` a shared model
is first trained for N steps at the middle λ and every λ run fine-tunes from it: short CPU budgets reach a
monotone curve that way, since training time rather than λ otherwise limits quality
(see ../shared/spec/README.md, "Convergence within a CPU budget"). ``--start_checkpoint PATH`` starts every
run from an existing model instead, e.g. the warm start of another optimizer's sweep.

The sweep is resumable: finished runs are skipped, interrupted ones continue from their ``last.pt``.
Outputs in ``--out_dir``: ``lambda_<λ>/`` run folders, ``<name>.json`` (CompressAI format, one point per λ),
``<name>.csv`` (per image), ``<name>_rd.png`` and the printed table.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from common.assembly import load_model
from common.checkpoint import load_file
from common.cli import OneLineErrorParser, number, parse_with_train_flags, run_main
from common.data.images import list_images
from common.errors import UserError
from common.eval.evaluate import describe, evaluate, write_results
from common.rd import RDCurve, curve_from_json, plot_curves, sorted_monotone
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
    parser.add_argument("--name", default=None, help="curve name (default: model and optimizer)")
    parser.add_argument("--warm_start_steps", type=number(int, minimum=0), default=0,
                        help="train a shared start model at the middle λ for this many steps first")
    parser.add_argument("--warm_start_lr", type=number(float, above=0), default=None, help="learning rate of the warm start")
    parser.add_argument("--start_checkpoint", default=None,
                        help="start every λ run from this checkpoint instead, e.g. another sweep's "
                             "warm_start/last.pt, so that two optimizers' curves share one starting model")
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


def eval_images(args: argparse.Namespace, config: TrainConfig) -> tuple[list[Path], Path]:
    if args.eval_dataset or config.data.test_dataset:
        root = Path(args.eval_dataset or config.data.test_dataset)
    else:
        from common.data.samples import sample_dirs

        root = sample_dirs()[1]
    return list_images(root), root


def main(argv: Sequence[str] | None = None) -> int:
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
    start = {"checkpoint": args.start_checkpoint} if args.start_checkpoint else {}
    if args.warm_start_steps > 0:
        warm_dir = out_dir / "warm_start"
        done = finished(warm_dir, args.warm_start_steps)
        if not done:
            print(f"warm start: {args.warm_start_steps} steps of Adam at λ={lambdas[len(lambdas) // 2]}")
        # The shared start is standard Adam whatever the swept optimizer (its flags go back to defaults).
        warm = replace(config, optim=with_optimizer(config.optim, "adam"), output=replace(config.output, recon_every=0))
        train_or_reuse(run_config(warm, warm_dir, lambdas[len(lambdas) // 2], steps=args.warm_start_steps,
                                  lr=args.warm_start_lr), done)
        start = {"checkpoint": str(warm_dir / "last.pt")}

    for lmbda in lambdas:
        run_dir = out_dir / f"lambda_{lmbda:g}"
        train_or_reuse(run_config(config, run_dir, lmbda, **({} if (run_dir / "last.pt").is_file() else start)),
                       finished(run_dir, config.schedule.steps))

    images, root = eval_images(args, config)
    labels, aggregates, rows_per_point = [], [], []
    for lmbda in tqdm(lambdas, desc="real-bitstream evaluation", unit="model"):
        model = load_model(checkpoint=str(out_dir / f"lambda_{lmbda:g}" / "last.pt"))
        rows, aggregate = evaluate(model, images, root=root)
        labels.append(f"lambda={lmbda:g}")
        aggregates.append(aggregate)
        rows_per_point.append(rows)
    json_path, csv_path = write_results(out_dir / f"{name}.json", name,
                                        describe(False, "zero", model.eval_pad_multiple, model.eval_pad_multiple),
                                        labels, aggregates, rows_per_point)
    curve = curve_from_json({"name": name, "results": {k: [a[k] for a in aggregates] for k in aggregates[0]}})
    plot_path = plot_curves([curve], out_dir / f"{name}_rd.png", title=f"{name} on {root}")
    print_table(lambdas, aggregates)
    report_monotonicity(curve)
    print(f"results: {json_path}\nper image: {csv_path}\nR-D plot: {plot_path}\nruns: {out_dir}/lambda_*/")
    return 0


def print_table(lambdas: list[float], aggregates: list[dict]) -> None:
    print(f"\n{'lambda':>8} {'bpp':>8} {'bpp(est)':>9} {'PSNR':>8} {'MS-SSIM':>8} {'enc s':>7} {'dec s':>7}")
    for lmbda, agg in zip(lambdas, aggregates):
        print(f"{lmbda:>8g} {agg['bpp']:>8.4f} {agg['bpp_estimated']:>9.4f} {agg['psnr-rgb']:>8.3f} "
              f"{agg['ms-ssim-rgb']:>8.4f} {agg['encoding_time']:>7.3f} {agg['decoding_time']:>7.3f}")


def report_monotonicity(curve: RDCurve) -> None:
    try:
        sorted_monotone(curve.bpp, curve.values("psnr-rgb"), curve.name)
        print("R-D curve is monotone (PSNR rises with bpp): BD-rate against it is meaningful")
    except UserError as exc:
        print(f"warning: {exc}")


def cli() -> None:
    """The ``lic-sweep`` command (installed by ``make setup``): ``main`` with one-line errors."""
    run_main(main)


if __name__ == "__main__":
    cli()
