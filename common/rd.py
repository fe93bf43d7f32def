"""Rate-distortion curves: CompressAI-format JSON, BD-rate / BD-PSNR, plots and tables.

A curve file looks like CompressAI's ``results/`` files and like what ``python -m common.eval`` writes::

    {"name": ..., "description": ..., "results": {"bpp": [...], "psnr-rgb": [...],
                                                   "ms-ssim-rgb": [...] or "ms-ssim-db-rgb": [...], ...}}

Bjøntegaard deltas are computed by the ``bjontegaard`` package (methods ``pchip``, ``akima``, ``cubic``;
``cubic`` is the VCEG-M33 polynomial fit). Before that, each curve is sorted by rate and checked to be
strictly monotone, because every interpolation method silently returns nonsense (or fails inside scipy)
on a curve whose quality does not increase with rate.

Curves may record the test set they were measured on (``"test_set": {"name", "split", "num_images"}``,
written by ``common.eval``, ``baselines.classic`` and the published files); a BD value between curves of
different test sets is refused, since it would compare different images.

Command line::

    python -m common.rd --anchor A.json --test B.json [C.json ...] [--metric psnr|ms-ssim]
                        [--method pchip|akima|cubic|all] [--plot out.png] [--csv out.csv] [--strict]

It draws every curve and tabulates every pair it can compute; a pair it cannot (a curve that is not
monotone, curves that do not overlap, different test sets) gets its row with the reason. It exits with
status 2 only when no pair could be computed, or with ``--strict`` when any could not.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import textwrap
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from common.errors import UserError

METHODS = ("pchip", "akima", "cubic")
# Minimum number of points each interpolation method needs (cubic fits a degree-3 polynomial).
_MIN_POINTS = {"pchip": 2, "akima": 2, "cubic": 4}

# CLI metric name -> (results key, axis label). BD values for MS-SSIM are computed on the dB scale,
# -10*log10(1 - MS-SSIM), as CompressAI's plots and the HPCM paper do.
METRICS = {
    "psnr": ("psnr-rgb", "PSNR-RGB [dB]"),
    "ms-ssim": ("ms-ssim-db-rgb", "MS-SSIM-RGB [dB]"),
}


def ms_ssim_to_db(value: float) -> float:
    """MS-SSIM on the dB scale used by CompressAI's plots: -10*log10(1 - MS-SSIM)."""
    if value >= 1.0:
        return math.inf
    return -10.0 * math.log10(1.0 - value)


@dataclass
class RDCurve:
    """One R-D curve: ``bpp`` and named metric lists of equal length (CompressAI keys)."""

    name: str
    bpp: list[float]
    metrics: dict[str, list[float]] = field(default_factory=dict)
    description: str = ""
    source: str = ""
    test_set: dict | None = None

    def values(self, key: str) -> list[float]:
        """Values of a results key; ``ms-ssim-db-rgb`` is derived from ``ms-ssim-rgb`` when absent."""
        if key in self.metrics:
            return list(self.metrics[key])
        if key == "ms-ssim-db-rgb" and "ms-ssim-rgb" in self.metrics:
            return [ms_ssim_to_db(v) for v in self.metrics["ms-ssim-rgb"]]
        available = ", ".join(sorted(self.metrics)) or "none"
        raise UserError(f"curve {self.label} has no {key!r} values (it has: {available})")

    @property
    def label(self) -> str:
        return f"{self.name!r}" + (f" ({self.source})" if self.source else "")


def curve_from_json(data: dict, source: str = "") -> RDCurve:
    """Build an :class:`RDCurve` from a parsed CompressAI-format JSON object."""
    where = source or "<json>"
    if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
        raise UserError(f"{where} is not a CompressAI-format R-D file (expected a 'results' object)")
    results = data["results"]
    if "bpp" not in results:
        raise UserError(f"{where} has no 'bpp' list in 'results'")
    bpp = _number_list(results["bpp"], "bpp", where)
    metrics = {}
    for key, values in results.items():
        if key == "bpp" or not isinstance(values, list):
            continue
        if len(values) != len(bpp):
            raise UserError(f"{where}: 'results.{key}' has {len(values)} values but 'bpp' has {len(bpp)}")
        metrics[key] = _number_list(values, key, where)
    test_set = data.get("test_set")
    if test_set is not None and not isinstance(test_set, dict):
        raise UserError(f"{where}: 'test_set' must be an object with name, split and num_images")
    return RDCurve(name=str(data.get("name", Path(where).stem)), bpp=bpp, metrics=metrics,
                   description=str(data.get("description", "")), source=source, test_set=test_set)


def _number_list(values, key: str, where: str) -> list[float]:
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: 'results.{key}' must be a list of numbers") from exc


def load_curve(path: str | os.PathLike) -> RDCurve:
    """Read a CompressAI-format JSON file; mistakes give a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"R-D curve file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from exc
    return curve_from_json(data, source=str(path))


def sorted_monotone(rate: Sequence[float], dist: Sequence[float], name: str = "curve") -> tuple[np.ndarray, np.ndarray]:
    """Sort a curve by rate and check that rate and quality both strictly increase.

    Raises :class:`UserError` naming the first offending pair of points, since BD tools fail (or give
    meaningless numbers) on non-monotone curves.
    """
    rate = np.asarray(rate, dtype=np.float64)
    dist = np.asarray(dist, dtype=np.float64)
    if rate.shape != dist.shape or rate.ndim != 1:
        raise UserError(f"{name}: rate and distortion must be 1-D lists of equal length "
                        f"(got {rate.size} and {dist.size} values)")
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(dist))):
        raise UserError(f"{name}: rate and distortion values must be finite numbers")
    if np.any(rate <= 0):
        raise UserError(f"{name}: every rate must be positive (BD-rate works on log rate)")
    order = np.argsort(rate, kind="stable")
    rate, dist = rate[order], dist[order]
    for i in range(1, rate.size):
        if rate[i] == rate[i - 1]:
            raise UserError(f"{name}: two points have the same rate {rate[i]:.6g}; BD-rate needs distinct rates")
        if dist[i] <= dist[i - 1]:
            raise UserError(f"{name} is not monotone: rate {rate[i - 1]:.4f} gives quality {dist[i - 1]:.4f} but "
                            f"the higher rate {rate[i]:.4f} gives {dist[i]:.4f}; BD-rate/BD-PSNR need quality "
                            "that increases with rate (retrain or drop the point)")
    return rate, dist


def _check_method(method: str, n_points: int, name: str) -> None:
    if method not in METHODS:
        raise UserError(f"unknown BD interpolation method {method!r}; choose one of: {', '.join(METHODS)}")
    if n_points < _MIN_POINTS[method]:
        raise UserError(f"{name} has {n_points} points; method {method!r} needs at least {_MIN_POINTS[method]}")


def _prepared(rate_anchor, dist_anchor, rate_test, dist_test, method):
    anchor = sorted_monotone(rate_anchor, dist_anchor, "anchor curve")
    test = sorted_monotone(rate_test, dist_test, "test curve")
    _check_method(method, anchor[0].size, "anchor curve")
    _check_method(method, test[0].size, "test curve")
    return anchor, test


def _overlap_or_error(lo_a, hi_a, lo_b, hi_b, axis: str) -> None:
    if min(hi_a, hi_b) <= max(lo_a, lo_b):
        raise UserError(f"the curves do not overlap in {axis} (anchor {lo_a:.4g}..{hi_a:.4g}, test "
                        f"{lo_b:.4g}..{hi_b:.4g}); the Bjøntegaard delta is undefined")


def bd_rate(rate_anchor: Sequence[float], dist_anchor: Sequence[float], rate_test: Sequence[float],
            dist_test: Sequence[float], method: str = "pchip", min_overlap: float = 0.75) -> float:
    """Bjøntegaard-delta rate in percent; negative means the test curve needs less rate.

    Curves may have different numbers of points and any point order. Integration runs over the overlap
    of the two quality ranges; the package warns when that overlap is below ``min_overlap`` of the union.
    """
    import bjontegaard

    (ra, da), (rt, dt) = _prepared(rate_anchor, dist_anchor, rate_test, dist_test, method)
    _overlap_or_error(da[0], da[-1], dt[0], dt[-1], "quality")
    return float(bjontegaard.bd_rate(ra, da, rt, dt, method=method, require_matching_points=False,
                                     min_overlap=min_overlap))


def bd_psnr(rate_anchor: Sequence[float], dist_anchor: Sequence[float], rate_test: Sequence[float],
            dist_test: Sequence[float], method: str = "pchip", min_overlap: float = 0.75) -> float:
    """Bjøntegaard-delta quality (dB for PSNR or MS-SSIM dB); positive means the test curve is better."""
    import bjontegaard

    (ra, da), (rt, dt) = _prepared(rate_anchor, dist_anchor, rate_test, dist_test, method)
    _overlap_or_error(ra[0], ra[-1], rt[0], rt[-1], "rate")
    return float(bjontegaard.bd_psnr(ra, da, rt, dt, method=method, require_matching_points=False,
                                     min_overlap=min_overlap))


def _metric_key(metric: str) -> str:
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    return METRICS[metric][0]


def quality_overlap(dist_anchor: Sequence[float], dist_test: Sequence[float]) -> float:
    """Overlap of the two quality ranges as a fraction of their union (the bjontegaard package's measure)."""
    lo, hi = max(min(dist_anchor), min(dist_test)), min(max(dist_anchor), max(dist_test))
    union = max(max(dist_anchor), max(dist_test)) - min(min(dist_anchor), min(dist_test))
    return max(hi - lo, 0.0) / union if union > 0 else 0.0


def rate_overlap(rate_anchor: Sequence[float], rate_test: Sequence[float]) -> float:
    """Overlap of the two rate ranges on the log scale BD-PSNR integrates over, as a fraction of their union."""
    return quality_overlap(np.log10(np.asarray(rate_anchor, dtype=np.float64)).tolist(),
                           np.log10(np.asarray(rate_test, dtype=np.float64)).tolist())


def test_set_label(test_set: dict | None) -> str:
    if not test_set:
        return "an unrecorded test set"
    split = f" ({test_set['split']})" if test_set.get("split") else ""
    count = f", {test_set['num_images']} images" if test_set.get("num_images") else ""
    return f"{test_set.get('name', '?')}{split}{count}"


def test_set_mismatch(anchor: RDCurve, test: RDCurve) -> str | None:
    """Why two curves cannot be compared because they were measured on different images, or None.

    Fields missing on either side (e.g. a curve without ``test_set``, or an unknown image count) are not
    held against the pair.
    """
    if not anchor.test_set or not test.test_set:
        return None
    for key in ("name", "split", "num_images"):
        mine, theirs = anchor.test_set.get(key), test.test_set.get(key)
        if mine is not None and theirs is not None and mine != theirs:
            return (f"different test sets: {anchor.name} was measured on {test_set_label(anchor.test_set)}, "
                    f"{test.name} on {test_set_label(test.test_set)}")
    return None


MIN_OVERLAP_PERCENT = 75.0


def bd_row(anchor: RDCurve, test: RDCurve, metric: str = "psnr", methods: Sequence[str] = ("pchip",)) -> dict:
    """BD-rate (%) and BD-quality (dB) of ``test`` against ``anchor`` with both overlaps and a note.

    When the pair cannot be computed the values are NaN and ``note`` says why; a low overlap (below 75 % of
    the union, the bjontegaard package's threshold) is computed but noted: the value describes only the
    overlapping part of the curves.
    """
    key = _metric_key(metric)
    row: dict = {"anchor": anchor.name, "test": test.name, "metric": key, "quality_overlap_%": math.nan,
                 "rate_overlap_%": math.nan}
    for method in methods:
        row[f"bd_rate_{method}_%"] = math.nan
        row[f"bd_{metric}_{method}_dB"] = math.nan
    row["note"] = ""
    try:
        mismatch = test_set_mismatch(anchor, test)
        if mismatch:
            raise UserError(mismatch)
        rate_a, dist_a, rate_t, dist_t = anchor.bpp, anchor.values(key), test.bpp, test.values(key)
        sorted_monotone(rate_a, dist_a, f"anchor {anchor.name}")
        sorted_monotone(rate_t, dist_t, f"test {test.name}")
    except UserError as exc:
        row["note"] = str(exc)
        return row
    row["quality_overlap_%"] = 100.0 * quality_overlap(dist_a, dist_t)
    row["rate_overlap_%"] = 100.0 * rate_overlap(rate_a, rate_t)
    notes = []
    # BD-rate integrates over the common quality range, BD-PSNR over the common rate range: either can exist
    # without the other.
    for column, function, label in (("bd_rate_{}_%", bd_rate, "BD-rate"), (f"bd_{metric}_{{}}_dB", bd_psnr,
                                                                          f"BD-{metric.upper()}")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                for method in methods:
                    row[column.format(method)] = function(rate_a, dist_a, rate_t, dist_t, method=method)
        except UserError as exc:
            notes.append(f"no {label}: {exc}")
    short = [f"{axis} overlap {row[f'{axis}_overlap_%']:.0f} %" for axis in ("quality", "rate")
             if row[f"{axis}_overlap_%"] < MIN_OVERLAP_PERCENT]
    if short and not notes:
        notes.append(f"{' and '.join(short)} (< {MIN_OVERLAP_PERCENT:.0f} %): the value describes only the "
                     "overlapping part of the curves")
    row["note"] = "; ".join(notes)
    return row


def computed(row: dict) -> bool:
    """Whether a :func:`bd_row` holds BD values (possibly with a low-overlap note)."""
    return any(k.startswith("bd_rate_") and not math.isnan(v) for k, v in row.items() if isinstance(v, float))


def bd_table(anchor: RDCurve, tests: Iterable[RDCurve], metric: str = "psnr",
             methods: Sequence[str] = ("pchip",)) -> list[dict]:
    """One :func:`bd_row` per test curve against ``anchor``."""
    return [bd_row(anchor, test, metric, methods) for test in tests]


def format_markdown(rows: Sequence[dict], digits: int = 4) -> str:
    """Render rows (dicts with the same keys) as a GitHub markdown table; NaN shows as an en dash."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(column, row[column], digits) for column in columns) + " |")
    return "\n".join(lines)


def _cell(column: str, value, digits: int) -> str:
    if not isinstance(value, float):
        return str(value)
    if math.isnan(value):
        return "–"
    return f"{value:.1f}" if column.endswith("overlap_%") else f"{value:+.{digits}f}"


def write_csv(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Write rows (dicts with the same keys) to a CSV file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)


def trimmed(curve: RDCurve, low: float, high: float, key: str = "psnr-rgb") -> RDCurve:
    """The points of a dense anchor ladder that span [low, high] in quality: one beyond each end, all between.

    The overlap measures of BD values are fractions of the union of both ranges, so an anchor that runs far
    beyond the compared curve would be judged a poor overlap for no reason. At least two points are kept.
    """
    order = np.argsort(curve.values(key))
    values = np.asarray(curve.values(key))[order]
    first = max(0, int(np.searchsorted(values, low, side="right")) - 1)
    last = min(len(values), int(np.searchsorted(values, high, side="left")) + 1)
    first, last = min(first, len(values) - 2), max(last, first + 2, 2)
    keep = order[first:last]
    metrics = {k: [v[i] for i in keep] for k, v in curve.metrics.items()}
    return RDCurve(curve.name, [curve.bpp[i] for i in keep], metrics, curve.description, curve.source, curve.test_set)


def new_figure():
    """A (figure, axes) pair on the Agg canvas, which needs no display: the size every R-D figure uses."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def draw_curves(axes, curves: Sequence[RDCurve], metric: str = "psnr", anchors: Sequence[RDCurve] = (),
                title: str = "") -> None:
    """Draw bpp against PSNR or MS-SSIM (dB): ``curves`` solid with markers, ``anchors`` dashed.

    Anchors (reference codecs, e.g. trimmed to the curves' quality range with :func:`trimmed`) without the
    metric are left out; a curve without it is an error. With anchors the axes are fitted to every drawn
    point. Every curve is drawn, monotone or not, in order of rate.
    """
    key = _metric_key(metric)
    drawn = list(curves)
    for curve in curves:
        curve.values(key)  # a one-line UserError naming the curve if it lacks the metric
    drawn += [a for a in anchors if key in a.metrics or (key == "ms-ssim-db-rgb" and "ms-ssim-rgb" in a.metrics)]
    for index, curve in enumerate(drawn):
        style = (dict(linestyle="-", marker="o", linewidth=1.6) if index < len(curves)
                 else dict(linestyle="--", marker="s", linewidth=1.0, alpha=0.8))
        order = np.argsort(curve.bpp, kind="stable")
        axes.plot(np.asarray(curve.bpp)[order], np.asarray(curve.values(key))[order], markersize=3.5,
                  label=curve.name, **style)
    if anchors and drawn:
        fit_axes(axes, drawn, key)
    axes.set_xlabel("Bit-rate [bpp]")
    axes.set_ylabel(METRICS[metric][1])
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", fontsize=8)
    set_title(axes, title)


def set_title(axes, title: str, fontsize: float = 10) -> None:
    """A figure title wrapped to the figure's width: a study's long title would otherwise run off it."""
    if title:
        axes.set_title(textwrap.fill(title, 70), fontsize=fontsize)


def plot_curves(curves: Sequence[RDCurve], path: str | os.PathLike, metric: str = "psnr",
                title: str = "", anchors: Sequence[RDCurve] = ()) -> Path:
    """:func:`draw_curves` into a PNG (or PDF, by the suffix); returns the path."""
    figure, axes = new_figure()
    draw_curves(axes, curves, metric, anchors, title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path


def check_figure_path(path: str | os.PathLike, flag: str) -> None:
    """A one-line error, before any work, when ``path``'s suffix names no format matplotlib writes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    formats = sorted(FigureCanvasAgg.get_supported_filetypes())
    if Path(path).suffix.lower().lstrip(".") not in formats:
        raise UserError(f"{flag} {path}: the suffix names the figure's format; use one of "
                        f"{', '.join('.' + fmt for fmt in formats)}")


def fit_axes(axes, curves: Sequence[RDCurve], key: str) -> None:
    """Axis limits around every point of ``curves`` with a 15 % margin."""
    rates = np.concatenate([np.asarray(c.bpp, dtype=float) for c in curves])
    values = np.concatenate([np.asarray(c.values(key), dtype=float) for c in curves])
    rate_margin = 0.15 * (rates.max() - rates.min()) or 0.1 * rates.max()
    value_margin = 0.15 * (values.max() - values.min()) or 1.0
    axes.set_xlim(max(0.0, rates.min() - rate_margin), rates.max() + rate_margin)
    axes.set_ylim(values.min() - value_margin, values.max() + value_margin)


def main(argv: Sequence[str] | None = None) -> int:
    from common.cli import OneLineErrorParser
    from common.paths import output_file

    parser = OneLineErrorParser(prog="python -m common.rd",
                                description="BD-rate / BD-PSNR of R-D curves against an anchor, with a plot.")
    parser.add_argument("--anchor", required=True, help="anchor curve (CompressAI-format JSON)")
    parser.add_argument("--test", required=True, nargs="+", help="one or more test curves (JSON)")
    parser.add_argument("--metric", choices=tuple(METRICS), default="psnr",
                        help="quality axis; ms-ssim uses the dB scale -10*log10(1-MS-SSIM) (default: psnr)")
    parser.add_argument("--method", choices=METHODS + ("all",), default="pchip",
                        help="interpolation of the bjontegaard package (default: pchip)")
    parser.add_argument("--plot", help="write an R-D plot of all curves to this file (.png, .pdf, .svg, ...: "
                                       "the suffix names the format)")
    parser.add_argument("--csv", help="write the BD table to this CSV file")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 2 when any pair cannot be computed (default: only when none can)")
    args = parser.parse_args(argv)
    for flag, value in (("--plot", args.plot), ("--csv", args.csv)):
        if value:
            output_file(value, flag)
    if args.plot:
        check_figure_path(args.plot, "--plot")

    anchor = load_curve(args.anchor)
    tests = [load_curve(p) for p in args.test]
    methods = METHODS if args.method == "all" else (args.method,)
    rows = bd_table(anchor, tests, metric=args.metric, methods=methods)
    if args.plot:
        plot_curves([anchor, *tests], args.plot, metric=args.metric)
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.csv:
        write_csv(rows, args.csv)
        print(f"wrote {args.csv}", file=sys.stderr)
    failed = [row for row in rows if not computed(row)]
    if len(failed) == len(rows):
        raise UserError(failed[0]["note"] if len(rows) == 1 else
                        "no BD value could be computed: " + "; ".join(row["note"] for row in failed))
    print(format_markdown(rows))
    if failed and args.strict:
        raise UserError(f"{len(failed)} of {len(rows)} pairs could not be computed (--strict)")
    return 0


def cli() -> None:
    """The ``lic-rd`` command (installed by ``make setup``): ``main`` with one-line errors."""
    from common.cli import run_main

    run_main(main)


if __name__ == "__main__":
    cli()
