"""Paper-ready reports of R-D comparisons: tables (CSV, Markdown, LaTeX), figures (PNG, PDF), an HTML page.

``python -m common.report STUDY_DIR [STUDY_DIR ...] [--out_dir reports]`` renders each study bundle that
``python -m baselines.compare`` wrote (``summary.json`` and its side files) into ``<out_dir>/<study>/``:

* ``bd.{csv,md,tex}``: BD-rate and BD-PSNR of every pair, mean ± standard deviation over seeds, overlaps;
* ``points.{csv,md,tex}``: every R-D point with its convergence verdict;
* ``rd_psnr.{png,pdf}``, ``rd_ms-ssim.{png,pdf}``: the arms' curves with the live anchors of the study and the
  published curves of the same test set (VTM, BPG, JPEG, the HPCM paper) when it is a published one;
* ``task_weights_<arm>.{png,pdf}``: the task weights of every weighted run over its steps;
* ``index.html``: one self-contained page (every image embedded, no network) with the provenance, the
  checks, the figures, the tables and the same crop of one test photo from every codec at matched bpp.

``python -m common.report --curves A.json B.json [...] --anchor REF.json --out_dir D`` does the tables and
figures for any set of CompressAI-format curve files instead.
"""
from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from common.errors import UserError
from common.paths import output_dir
from common.rd import (METRICS, RDCurve, bd_table, draw_curves, format_markdown, load_curve, new_figure,
                       set_title, test_set_mismatch, trimmed)

# Published curves drawn beside a study on a published test set, when that folder has them.
PUBLISHED_ANCHORS = ("vtm", "bpg_444_x265_ycbcr", "jpeg", "paper-hpcm-base_mse")
# The keys of a bundle's summary.json that a report reads (baselines.study.write_bundle writes them all).
SUMMARY_KEYS = ("arms", "seeds", "lambdas", "test_set", "anchors", "points", "bd_summary", "command", "git_commit",
                "wall_time_s", "machine")


# ------------------------------------------------------------------------------------------ tables
def bd_frame(summary: dict) -> pd.DataFrame:
    rows = []
    for entry in summary["bd_summary"]:
        rows.append({"pair": entry["pair"], "seeds": entry["computed"],
                     "BD-rate (%)": _pm(entry, "bd_rate_pchip_%", 2), "BD-PSNR (dB)": _pm(entry, "bd_psnr_pchip_dB", 3),
                     "overlap quality (%)": _number(entry["quality_overlap_%_mean"], 0),
                     "overlap rate (%)": _number(entry["rate_overlap_%_mean"], 0), "note": entry["note"] or ""})
    return pd.DataFrame(rows)


def points_frame(summary: dict) -> pd.DataFrame:
    rows = []
    for point in summary["points"]:
        conv = point["convergence"]
        rows.append({"arm": point["arm"], "seed": point["seed"], "λ": f"{point['lambda']:g}",
                     "bpp": f"{point['bpp']:.4f}", "PSNR (dB)": f"{point['psnr-rgb']:.3f}",
                     "MS-SSIM": f"{point['ms-ssim-rgb']:.4f}", "converged": "yes" if point["converged"] else "no",
                     "val PSNR change (dB)": _number(conv.get("psnr_change_db"), 3),
                     "val bpp change (%)": _number(100 * conv["bpp_change_relative"]
                                                   if conv.get("bpp_change_relative") is not None else None, 2)})
    return pd.DataFrame(rows)


def _pm(entry: dict, key: str, digits: int) -> str:
    mean, std = entry.get(f"{key}_mean"), entry.get(f"{key}_std")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} ± {std:.{digits}f}"


def _number(value, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def write_tables(frame: pd.DataFrame, stem: Path, caption: str) -> list[Path]:
    """``stem``.csv, .md and .tex of one table."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(stem.with_suffix(".csv"), index=False)
    stem.with_suffix(".md").write_text(format_markdown(frame.to_dict("records")) + "\n")
    styler = frame.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
    latex = styler.to_latex(caption=caption.replace("%", r"\%"), hrules=True, position="htbp")
    stem.with_suffix(".tex").write_text(latex.replace("±", r"$\pm$").replace("λ", r"$\lambda$"))
    return [stem.with_suffix(s) for s in (".csv", ".md", ".tex")]


# ------------------------------------------------------------------------------------------ figures
def _save(figure, stem: Path) -> list[Path]:
    figure.tight_layout()
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for path in paths:
        figure.savefig(path)
    return paths


def rd_figure(curves: Sequence[RDCurve], anchors: Sequence[RDCurve], stem: Path, metric: str, title: str) -> list[Path]:
    """The R-D figure of :func:`common.rd.draw_curves` as PNG and PDF."""
    figure, axes = new_figure()
    draw_curves(axes, curves, metric, anchors, title)
    return _save(figure, stem)


def task_weight_figure(files: Sequence[Path], stem: Path, title: str) -> list[Path]:
    """Task weights over steps of several runs (one colour per task, one line style per run)."""
    figure, axes = new_figure()
    styles = ["-", "--", ":", "-."]
    colours: dict[str, str] = {}
    for index, path in enumerate(files):
        frame = pd.read_csv(path)
        for column in (c for c in frame.columns if c.startswith("weight_")):
            task = column[len("weight_"):]
            line, = axes.plot(frame["step"], frame[column], linestyle=styles[index % len(styles)], linewidth=1.2,
                              color=colours.get(task), label=f"{task} ({_run_label(path)})")
            colours.setdefault(task, line.get_color())
    axes.set_xlabel("step")
    axes.set_ylabel("task weight z")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=6, ncol=2)
    set_title(axes, title, fontsize=9)
    return _save(figure, stem)


def _run_label(path: Path) -> str:
    return path.stem.split("_", 1)[1].replace("_lambda_", ", λ=").replace("seed", "seed ")


# ------------------------------------------------------------------------------------------ studies
def study_curves(folder: Path, summary: dict) -> tuple[list[RDCurve], list[RDCurve]]:
    """(the arms' curves, the live anchors) of a bundle, the anchors trimmed as in the study's BD values. An arm
    and seed with a run that diverged has no curve (the checks and the points table say so)."""
    curves, anchors = [], []
    diverged = {(run["arm"], run["seed"]) for run in summary.get("diverged") or []}
    for arm in summary["arms"]:
        for seed in summary["seeds"]:
            if (arm, seed) in diverged:
                continue
            curves.append(load_curve(folder / "curves" / f"{arm}_seed{seed}.json"))
    for name, anchor in summary["anchors"].items():
        metrics = {"psnr-rgb": anchor["psnr-rgb"], "ms-ssim-rgb": anchor["ms-ssim-rgb"]}
        anchors.append(RDCurve(f"{name} (live)", anchor["bpp"], metrics, test_set=summary["test_set"]))
    return curves, anchors


def published_anchors(test_set: dict) -> list[RDCurve]:
    """Published curves measured on the same test set as the study (none for a private or sample set)."""
    from baselines import PUBLISHED_DIR, published_datasets

    found = []
    for dataset in published_datasets():
        for name in PUBLISHED_ANCHORS:
            path = PUBLISHED_DIR / dataset / f"{name}.json"
            if not path.is_file():
                continue
            curve = load_curve(path)
            probe = RDCurve("study", [1.0], test_set=test_set)
            if curve.test_set and curve.test_set.get("name") == test_set.get("name") and \
                    test_set_mismatch(curve, probe) is None:
                curve.name = f"{curve.name} (published)"
                found.append(curve)
    return found


def study_summary(folder: Path) -> dict:
    """A bundle's ``summary.json`` with every key a report reads; anything else is a one-line error."""
    from baselines.study import SUMMARY, load_summary

    summary, path = load_summary(folder), folder / SUMMARY
    if not isinstance(summary, dict):
        raise UserError(f"{path} holds a JSON {type(summary).__name__}, not a study summary (an object): pass the "
                        "--out_dir of a python -m baselines.compare run")
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise UserError(f"{path} is not a study summary: it lacks {', '.join(missing)}; pass the --out_dir of a "
                        "python -m baselines.compare run")
    for point in summary.get("points", []):
        for key in ("bpp", "psnr-rgb"):
            value = point.get(key)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"{path}: the point of arm {point.get('arm')}, seed {point.get('seed')}, λ "
                                f"{point.get('lambda')} has {key} {value!r}, not a finite number; evaluate that "
                                "run again (python -m baselines.compare with the same flags re-evaluates it)")
    return summary


def render_study(folder: str | Path, out_dir: str | Path) -> Path:
    """Write every table, figure and the HTML page of one study bundle; returns the page."""
    folder, out_dir = Path(folder), Path(out_dir)
    summary = study_summary(folder)
    title = summary.get("title") or folder.name
    curves, anchors = study_curves(folder, summary)
    psnr = [v for c in curves for v in c.values("psnr-rgb")]
    anchors += [trimmed(c, min(psnr), max(psnr)) for c in published_anchors(summary["test_set"])
                if "psnr-rgb" in c.metrics]
    files = {"bd": write_tables(bd_frame(summary), out_dir / "bd", f"{title}: BD-rate and BD-PSNR"),
             "points": write_tables(points_frame(summary), out_dir / "points", f"{title}: R-D points")}
    figures = {}
    for metric in METRICS:
        figures[metric] = rd_figure(curves, anchors, out_dir / f"rd_{metric}", metric,
                                    f"{title} ({summary['test_set']['name']}, real bitstreams)")
    weights = sorted((folder / "task_weights").glob("*.csv")) if (folder / "task_weights").is_dir() else []
    weight_figures = {}
    for arm in summary["arms"]:
        runs = [p for p in weights if p.stem.startswith(f"{arm}_seed{summary['seeds'][0]}_")]
        if runs:
            weight_figures[arm] = task_weight_figure(runs, out_dir / f"task_weights_{arm}",
                                                     f"{arm}: task weights (seed {summary['seeds'][0]})")
    if (folder / "stats.json").is_file():
        files["intervals"] = write_tables(intervals_frame(json.loads((folder / "stats.json").read_text())),
                                          out_dir / "intervals", f"{title}: BD-rate intervals over seeds")
        if (folder / "rd_mean.png").is_file():
            figures["mean over seeds"] = [folder / "rd_mean.png"]
    page = out_dir / "index.html"
    page.write_text(_html(summary, title, files, figures, weight_figures, folder / "recon"))
    return page


def intervals_frame(stats: dict) -> pd.DataFrame:
    """One row per arm of a bundle's ``stats.json`` (``python -m baselines.stats``): the BD-rate intervals, and the
    BD-PSNR intervals where the bundle's statistics have them (bundles analysed before they were added do not)."""

    def interval(entry: dict, low: str, high: str) -> str:
        value = entry.get(low)
        return "" if value is None or math.isnan(value) else f"[{entry[low]:+.2f}, {entry[high]:+.2f}]"

    rows = []
    for arm in stats["arms"]:
        pchip = arm["pchip"]
        rows.append({"arm": arm["arm"], "vs": arm["reference"], "seeds": pchip["n"],
                     "pchip mean %": pchip["mean_%"], "pchip SD %": pchip["sd_%"],
                     "pchip 95 % t": interval(pchip, "t_low_%", "t_high_%"),
                     "pchip bootstrap": interval(pchip, "bootstrap_low_%", "bootstrap_high_%"),
                     "cubic 95 % t": interval(arm["cubic"], "t_low_%", "t_high_%"),
                     "akima 95 % t": interval(arm["akima"], "t_low_%", "t_high_%"),
                     "verdict": pchip["verdict"], "detectable at 80 % power %": pchip["detectable_%"],
                     "BD-PSNR pchip 95 % t dB": interval(pchip, "bd_psnr_t_low_dB", "bd_psnr_t_high_dB"),
                     "BD-PSNR cubic 95 % t dB": interval(arm["cubic"], "bd_psnr_t_low_dB", "bd_psnr_t_high_dB")})
    return pd.DataFrame(rows)


def _embed(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _bpp_text(bpp: float | None) -> str:
    return "" if bpp is None else f"{bpp:.3f} bpp"


def _html(summary: dict, title: str, tables: dict, figures: dict, weight_figures: dict, recon_dir: Path) -> str:
    esc = html.escape
    bd = pd.read_csv(tables["bd"][0]).fillna("").to_html(index=False, border=0, classes="table")
    points = pd.read_csv(tables["points"][0]).fillna("").to_html(index=False, border=0, classes="table")
    checks = "".join(f"<li class='{'ok' if c['ok'] else 'no'}'><b>{'✓' if c['ok'] else '✗'}</b> "
                     f"{esc(c['check'])}: {esc(c['detail'])}</li>" for c in summary.get("checks", []))
    figure_html = "".join(f"<figure><img alt='R-D {metric}' src='{_embed(paths[0])}'></figure>"
                          for metric, paths in figures.items())
    weights_html = "".join(f"<figure><img alt='task weights {esc(arm)}' src='{_embed(paths[0])}'></figure>"
                           for arm, paths in weight_figures.items()) or "<p>No run of this study weights tasks.</p>"
    recon_html = "<p>No reconstructions in this bundle.</p>"
    manifest_path = recon_dir / "recon.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        cells = "".join(f"<figure class='crop'><img alt='{esc(e['label'])}' src='{_embed(recon_dir / e['file'])}'>"
                        f"<figcaption>{esc(e['label'])}<br>{_bpp_text(e['bpp'])}</figcaption></figure>"
                        for e in manifest["entries"])
        recon_html = (f"<p>Centre crop of <code>{esc(manifest['image'])}</code>; each codec at the point whose bpp on "
                      f"this image is closest to {manifest['target_bpp']:.3f} bpp (the reference arm at its middle "
                      f"λ).</p><div class='crops'>{cells}</div>")
    intervals = ""
    if "intervals" in tables:
        intervals = ("<h2>BD-rate intervals over seeds (paired by seed; an interval containing 0 is inconclusive)</h2>"
                     + pd.read_csv(tables["intervals"][0]).fillna("").to_html(index=False, border=0, classes="table"))
    test_set = summary["test_set"]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
.table {{ border-collapse: collapse; font-size: 0.85em; }} .table td, .table th {{ padding: 3px 8px; border-bottom: 1px solid #ddd; }}
figure {{ display: inline-block; margin: 0.5em; }} figure img {{ max-width: 520px; }}
.crops figure img {{ width: 192px; image-rendering: pixelated; }} figcaption {{ font-size: 0.8em; text-align: center; }}
li.ok b {{ color: #1a7f37; }} li.no b {{ color: #cf222e; }} code {{ font-size: 0.85em; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>Test set: <b>{esc(str(test_set.get('name')))}</b> ({test_set.get('num_images')} images), real rANS bitstreams.
Arms: {', '.join(f'<b>{esc(a)}</b> <code>{esc(f)}</code>' for a, f in summary['arms'].items())}.
λ: {', '.join(f'{v:g}' for v in summary['lambdas'])}; seeds: {', '.join(map(str, summary['seeds']))}.</p>
<p>Command: <code>{esc(summary['command'])}</code><br>git commit {esc(summary['git_commit'])};
{summary['wall_time_s']:.0f} s on {esc(summary['machine'])}.</p>
<h2>R-D curves</h2>{figure_html}
<h2>BD-rate and BD-PSNR</h2>{bd}{intervals}
<h2>Checks</h2><ul>{checks}</ul>
<h2>Reconstructions at matched bpp</h2>{recon_html}
<h2>Task weights</h2>{weights_html}
<h2>R-D points</h2>{points}
</body></html>
"""


# ------------------------------------------------------------------------------------------ curve files
def render_curves(curve_paths: Sequence[str], anchor_path: str, out_dir: str | Path, title: str = "") -> list[Path]:
    """Tables and figures for plain curve files: BD of each against ``anchor_path``."""
    out_dir = Path(out_dir)
    anchor = load_curve(anchor_path)
    curves = [load_curve(p) for p in curve_paths]
    frame = pd.DataFrame(bd_table(anchor, curves))
    written = write_tables(frame, out_dir / "bd", title or "BD-rate")
    for metric in METRICS:
        usable = [c for c in curves if METRICS[metric][0] in c.metrics or "ms-ssim-rgb" in c.metrics]
        if usable:
            written += rd_figure(usable, [anchor], out_dir / f"rd_{metric}", metric, title or "R-D")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    from common.cli import OneLineErrorParser

    parser = OneLineErrorParser(prog="python -m common.report",
                                description="Tables, figures and an HTML page from comparison bundles or curves.")
    parser.add_argument("studies", nargs="*", help="folders written by python -m baselines.compare")
    parser.add_argument("--out_dir", default="reports", help="reports go to OUT_DIR/<study name>/")
    parser.add_argument("--curves", nargs="+", help="CompressAI-format curve files (instead of studies)")
    parser.add_argument("--anchor", help="with --curves: the reference curve of the BD values")
    parser.add_argument("--title", default="", help="with --curves: title of the tables and figures")
    args = parser.parse_args(argv)
    if bool(args.curves) == bool(args.studies):
        raise UserError("give study folders, or --curves with --anchor (not both)")
    if args.curves and not args.anchor:
        raise UserError("--curves needs --anchor")
    output_dir(args.out_dir, "--out_dir")
    if args.curves:
        for path in render_curves(args.curves, args.anchor, args.out_dir, args.title):
            print(f"wrote {path}")
        return 0
    for study in args.studies:
        page = render_study(study, Path(args.out_dir) / Path(study).resolve().name)
        print(f"wrote {page.parent}/ (open {page} in a browser)")
    return 0


def cli() -> None:
    """The ``lic-report`` command (installed by ``make setup``): ``main`` with one-line errors."""
    from common.cli import run_main

    run_main(main)


if __name__ == "__main__":
    cli()
