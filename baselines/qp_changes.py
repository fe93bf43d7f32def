"""What the QP weights did in BalancedQP runs trained with ``--qp_track_changes true``.

``python -m baselines.qp_changes RUN_DIR [RUN_DIR ...] [--csv out.csv]``

The QP chooses weights so that the *raw* balanced direction d lowers every log loss at the same first-order
rate. The model step is not d but Adam's (and the sign mask's) transform of it, so for each run this prints,
over its logged steps: the distortion weight (median and 5–95 % range), each log loss's predicted change for
the step actually taken (first order) and its realised change on the same batch (medians), how often the two
agree in sign, the ratio of the two tasks' predicted changes (the QP aims at 1 for d), and where the run ended
(last validation PSNR and bpp).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from common.cli import OneLineErrorParser, run_main
from common.errors import UserError


def run_summary(folder: Path) -> dict:
    """The figures of the module docstring for one run folder."""
    log = folder / "train_log.csv"
    if not log.is_file():
        raise UserError(f"{folder} has no train_log.csv; give the folder of a training run")
    with log.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    tasks = [key[len("pred_dlog_"):] for key in (rows[0] if rows else {}) if key.startswith("pred_dlog_")]
    if not tasks:
        raise UserError(f"{log} has no pred_dlog_* columns; train the run with --optimizer balanced_qp "
                        "--qp_track_changes true")
    summary: dict = {"run": str(folder), "steps": len(rows)}
    weights = np.array([float(row[f"weight_{tasks[0]}"]) for row in rows])
    summary[f"weight_{tasks[0]}_median"] = float(np.median(weights))
    summary[f"weight_{tasks[0]}_p05"], summary[f"weight_{tasks[0]}_p95"] = map(float, np.percentile(weights, [5, 95]))
    predicted = {task: np.array([float(row[f"pred_dlog_{task}"]) for row in rows]) for task in tasks}
    realised = {task: np.array([float(row[f"real_dlog_{task}"]) for row in rows if row.get(f"real_dlog_{task}")])
                for task in tasks}
    for task in tasks:
        summary[f"pred_{task}_median"] = float(np.median(predicted[task]))
        summary[f"real_{task}_median"] = float(np.median(realised[task])) if realised[task].size else float("nan")
        paired = min(predicted[task].size, realised[task].size)
        summary[f"sign_agree_{task}_%"] = float(100 * np.mean(np.sign(predicted[task][:paired])
                                                              == np.sign(realised[task][:paired])))
    if len(tasks) == 2:
        first, second = predicted[tasks[0]], predicted[tasks[1]]
        usable = np.abs(second) > 0
        summary["pred_ratio_median"] = float(np.median(first[usable] / second[usable]))
    verdict = folder / "convergence.json"
    if verdict.is_file():
        data = json.loads(verdict.read_text())
        summary["val_psnr_last"], summary["val_bpp_last"] = data.get("psnr_last"), data.get("bpp_last")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m baselines.qp_changes", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders trained with --qp_track_changes true")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    summaries = [run_summary(Path(folder)) for folder in args.runs]
    columns = list(dict.fromkeys(key for summary in summaries for key in summary))
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for summary in summaries:
        cells = [f"{value:.4g}" if isinstance(value, float) else str(value) for value in
                 (summary.get(column, "") for column in columns)]
        print("| " + " | ".join(cells) + " |")
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(summaries)
    return 0


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
