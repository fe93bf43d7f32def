"""A study's arms compared at fractions of their training budget, from the weights its runs kept along the way.

``python -m baselines.budget RUNS_DIR BUNDLE [--jobs 2] [--eval_dataset DIR] [--bootstrap N]`` reads a
``baselines.compare`` bundle whose runs were trained with ``--keep_steps`` (``<run>/checkpoints/step_N.pt``: the
weights, and weight average, after step N), evaluates every kept model with real bitstreams on the bundle's
evaluation images, and for each kept step writes a bundle of its own, ``BUNDLE/budget/step_N/`` (curves in
CompressAI's format, a summary.json, and ``baselines.stats``' paired BD-rates, intervals and power). The final
models are the bundle itself. ``BUNDLE/budget.json`` and ``budget.md`` put every step side by side: each arm's
BD-rate and BD-PSNR against the reference arm (pchip and cubic, t-intervals over seeds, verdict), and its mean
PSNR and bpp at each λ; ``budget.png`` draws the BD-rates over the budget with their intervals.

A model after 5 % of a schedule is not a model trained for 5 % of the steps: its learning rate was still high
and its weight average short. What this measures is the race, how far each optimizer got at each point of the
same schedule, which is what "reaches the same PSNR earlier" means.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

from baselines import stats
from baselines.study import json_safe, load_summary, run_dir
from common.checkpoint import atomic_write_text
from common.cli import OneLineErrorParser, number, run_main
from common.data.images import list_images
from common.errors import UserError
from common.train.run_folder import KEPT_DIR

STEP_PREFIX = "step_"


def kept_steps(runs_dir: Path, arms: Sequence[str], seeds: Sequence[int], lambdas: Sequence[float]) -> list[int]:
    """The steps every run of the grid kept weights after; a grid whose runs kept different steps is refused."""
    found = {}
    for arm in arms:
        for seed in seeds:
            for lmbda in lambdas:
                folder = run_dir(runs_dir, arm, seed, lmbda)
                found[folder] = sorted(int(path.stem[len(STEP_PREFIX):])
                                       for path in (folder / KEPT_DIR).glob(f"{STEP_PREFIX}*.pt"))
    (first, steps), *others = found.items()
    if not steps:
        raise UserError(f"{first} kept no weights along the way: train the study with --keep_steps")
    for folder, other in others:
        if other != steps:
            raise UserError(f"the runs kept different steps ({first}: {steps}, {folder}: {other}); rerun the study "
                            "with one --keep_steps for every run")
    return steps


def total_steps(runs_dir: Path, arm: str, seed: int, lmbda: float) -> int:
    """The run length the final models trained for, as the run recorded it."""
    path = run_dir(runs_dir, arm, seed, lmbda) / "convergence.json"
    if not path.is_file():
        raise UserError(f"{path} is missing: the run has not finished (rerun the study's command)")
    return int(json.loads(path.read_text())["total_steps"])


def evaluation_images(summary: dict, eval_dataset: str | None) -> tuple[list[Path], Path]:
    """The bundle's evaluation images (``--eval_dataset``, else the embedded test photos), checked against the
    names the bundle recorded."""
    if eval_dataset:
        root = Path(eval_dataset)
    else:
        from common.data.samples import sample_dirs

        root = sample_dirs()[1]
    images = list_images(root)
    names = [str(path.relative_to(root)) for path in images]
    if names != summary.get("eval_images"):
        raise UserError(f"{root} holds {names}, but the bundle was evaluated on {summary.get('eval_images')}: give the "
                        "bundle's evaluation folder with --eval_dataset")
    return images, root


def step_bundle(runs_dir: Path, bundle: Path, summary: dict, step: int, total: int, images: list[Path], root: Path,
                jobs: int, bootstrap: int) -> dict:
    """Evaluate the models kept after ``step`` into ``BUNDLE/budget/step_N/`` and return its statistics."""
    from baselines.compare import evaluate_runs

    folder = bundle / "budget" / f"{STEP_PREFIX}{step:08d}"
    arms = [SimpleNamespace(name=name) for name in summary["arms"]]
    evaluate_runs(runs_dir, arms, summary["seeds"], summary["lambdas"], images, root, summary["test_set"],
                  folder / "curves", jobs, checkpoint=f"{KEPT_DIR}/{STEP_PREFIX}{step:08d}.pt")
    document = {key: summary[key] for key in ("reference_arm", "arms", "lambdas", "seeds", "test_set", "eval_images",
                                              "image_sets", "diverged") if key in summary}
    document.update(title=f"{summary.get('title', '')}: after step {step} of {total} ({100 * step / total:g} %)",
                    step=step, total_steps=total, command=summary.get("command"), git_commit=summary.get("git_commit"))
    atomic_write_text(folder / "summary.json", json.dumps(json_safe(document), indent=2) + "\n")
    return write_stats(folder, bootstrap)


def write_stats(folder: Path, bootstrap: int) -> dict:
    """``baselines.stats`` of one bundle folder (stats.json, stats.md), as its command line writes them."""
    document = stats.analyse(folder, bootstrap)
    stats.write(folder, document)
    return document


def budget_rows(step: int, total: int, document: dict) -> list[dict]:
    """One row per arm: its BD values against the reference at ``step`` and its mean PSNR and bpp per λ."""
    rows = []
    points = {(row["arm"], row["lambda"]): row for row in document["points"]}
    for entry in document["arms"]:
        row = {"step": step, "fraction": step / total, "arm": entry["arm"], "reference": entry["reference"]}
        for method in ("pchip", "cubic"):
            values = entry[method]
            row.update({f"bd_rate_{method}_{key}": values[name] for key, name in
                        (("mean_%", "mean_%"), ("low_%", "t_low_%"), ("high_%", "t_high_%"), ("n", "n"),
                         ("verdict", "verdict"))})
            row.update({f"bd_psnr_{method}_{key}": values[name] for key, name in
                        (("mean_dB", "bd_psnr_mean_dB"), ("low_dB", "bd_psnr_t_low_dB"),
                         ("high_dB", "bd_psnr_t_high_dB"), ("n", "bd_psnr_n"))})
        row["detectable_%"] = entry["pchip"]["detectable_%"]
        rows.append(row)
    for (arm, lmbda), point in points.items():
        rows.append({"step": step, "fraction": step / total, "arm": arm, "lambda": lmbda,
                     "psnr_mean": point["psnr_mean"], "bpp_mean": point["bpp_mean"]})
    return rows


def _interval(row: dict, prefix: str, unit: str, digits: int) -> str:
    mean, low, high = row[f"{prefix}_mean_{unit}"], row[f"{prefix}_low_{unit}"], row[f"{prefix}_high_{unit}"]
    if mean is None or math.isnan(mean):
        return "no value"
    if low is None or math.isnan(low):
        return f"{mean:+.{digits}f} (one seed with a value)"
    return f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def markdown(document: dict) -> str:
    seeds = len(document["seeds"])
    lines = [f"{document['title']}", "",
             f"Each arm against {document['reference']} after each kept step (paired by seed, {seeds} seeds, 95 % "
             "t-intervals; BD-rate in %, negative = fewer bits for the same PSNR; BD-PSNR in dB; an interval that "
             "contains 0 is inconclusive). Each step's bundle and stats.md: budget/step_N/; the last row is the "
             "bundle's own final models.", "",
             "| step (of the budget) | arm | BD-rate pchip | verdict | BD-rate cubic | BD-PSNR pchip | BD-PSNR cubic "
             "| detectable at 80 % power |", "|---|---|---|---|---|---|---|---|"]
    compared = [row for row in document["rows"] if "reference" in row]
    for row in compared:
        detectable = row["detectable_%"]
        lines.append(f"| {row['step']} ({100 * row['fraction']:g} %) | {row['arm']} | "
                     f"{_interval(row, 'bd_rate_pchip', '%', 2)} (n = {row['bd_rate_pchip_n']}) | "
                     f"{row['bd_rate_pchip_verdict']} | {_interval(row, 'bd_rate_cubic', '%', 2)} | "
                     f"{_interval(row, 'bd_psnr_pchip', 'dB', 3)} (n = {row['bd_psnr_pchip_n']}) | "
                     f"{_interval(row, 'bd_psnr_cubic', 'dB', 3)} | "
                     f"{'–' if detectable is None or math.isnan(detectable) else f'{detectable:.2f} %'} |")
    lambdas = document["lambdas"]
    lines += ["", "Mean over seeds at each λ: PSNR dB / bpp on the test photos", "",
              "| step | arm | " + " | ".join(f"λ {lmbda:g}" for lmbda in lambdas) + " |",
              "|---|---|" + "---|" * len(lambdas)]
    points = {(row["step"], row["arm"], row["lambda"]): row for row in document["rows"] if "lambda" in row}
    for step in document["steps"]:
        for arm in document["arms"]:
            cells = [f"{points[(step, arm, lmbda)]['psnr_mean']:.2f} / {points[(step, arm, lmbda)]['bpp_mean']:.4f}"
                     for lmbda in lambdas]
            lines.append(f"| {step} | {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(document: dict, path: Path) -> None:
    """BD-rate (pchip) of each arm against the reference over the budget, with its t-interval (steps where fewer
    than two seeds have a value are left out: they have no interval)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    drawn = [row for row in document["rows"] if "reference" in row and row["bd_rate_pchip_n"] >= 2]
    for arm in sorted({row["arm"] for row in drawn}, key=document["arms"].index):
        rows = [row for row in drawn if row["arm"] == arm]
        means = [row["bd_rate_pchip_mean_%"] for row in rows]
        errors = [[mean - row["bd_rate_pchip_low_%"] for mean, row in zip(means, rows)],
                  [row["bd_rate_pchip_high_%"] - mean for mean, row in zip(means, rows)]]
        axis.errorbar([row["step"] for row in rows], means, yerr=errors, marker="o", capsize=3,
                      label=f"{arm} vs {document['reference']}")
    axis.axhline(0, color="grey", linewidth=0.8)
    if drawn:
        axis.set_xscale("log")
        axis.legend(fontsize=8)
    else:
        axis.text(0.5, 0.5, "no step where two or more seeds have a BD-rate", ha="center", transform=axis.transAxes)
    axis.set_xlabel("training step (log; steps where under 2 seeds have a value: not drawn)")
    axis.set_ylabel("BD-rate, pchip (%), 95 % t-interval")
    axis.set_title(document["title"], fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def analyse(runs_dir: Path, bundle: Path, jobs: int = 1, eval_dataset: str | None = None,
            bootstrap: int = 2000) -> dict:
    summary = load_summary(bundle)
    arms, seeds, lambdas = list(summary["arms"]), summary["seeds"], summary["lambdas"]
    diverged = {run["arm"] for run in summary.get("diverged") or []}
    complete = [arm for arm in arms if arm not in diverged]
    steps = kept_steps(runs_dir, complete, seeds, lambdas)
    total = total_steps(runs_dir, complete[0], seeds[0], lambdas[0])
    images, root = evaluation_images(summary, eval_dataset)
    rows = []
    for step in steps:
        print(f"step {step} of {total}: evaluating {len(complete) * len(seeds) * len(lambdas)} kept models", flush=True)
        rows += budget_rows(step, total, step_bundle(runs_dir, bundle, summary, step, total, images, root, jobs,
                                                     bootstrap))
    rows += budget_rows(total, total, stats.analyse(bundle, bootstrap))
    return {"title": summary.get("title", ""), "reference": summary["reference_arm"], "arms": arms, "seeds": seeds,
            "lambdas": lambdas, "steps": [*steps, total], "total_steps": total, "rows": rows}


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m baselines.budget", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", help="the study's run folders (baselines.compare --out_dir)")
    parser.add_argument("bundle", help="the study's bundle (baselines.compare --bundle_dir)")
    parser.add_argument("--jobs", type=number(int, minimum=1, maximum=64), default=1,
                        help="evaluations at a time (worker processes)")
    parser.add_argument("--eval_dataset", help="the bundle's evaluation images (default: the embedded test photos)")
    parser.add_argument("--bootstrap", type=number(int, minimum=0, maximum=100_000), default=2000,
                        help="bootstrap resamples of each step's statistics (0: none; default 2000)")
    args = parser.parse_args(argv)
    runs_dir, bundle = Path(args.runs_dir), Path(args.bundle)
    if not runs_dir.is_dir():
        raise UserError(f"{runs_dir} is not a folder of runs; give the study's --out_dir")
    document = analyse(runs_dir, bundle, args.jobs, args.eval_dataset, args.bootstrap)
    text = markdown(document)
    atomic_write_text(bundle / "budget.json", json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n")
    atomic_write_text(bundle / "budget.md", text)
    plot(document, bundle / "budget.png")
    print(text)
    print(f"written: {bundle / 'budget.json'}, {bundle / 'budget.md'}, {bundle / 'budget.png'}")
    return 0


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
