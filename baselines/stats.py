"""Intervals, power and interpolation methods for a study bundle of ``baselines.compare``.

``python -m baselines.stats results/study-arms [--bootstrap 2000] [--confidence 0.95]``

For every arm against the reference arm (the bundle's first arm), paired by seed (each seed's runs of both
arms share their starting model, data order and crops):

* the per-seed BD-rate with each interpolation method (``pchip``, ``cubic``, ``akima``);
* mean, sample SD, and the t-interval of the mean (Student's t with n - 1 degrees of freedom);
* a paired bootstrap interval of the mean BD-rate (pchip): seeds are resampled with replacement, and within
  each resample the test images too (the same images for every point and both arms), each seed's curves are
  rebuilt from the per-image results of ``curves/*.csv`` and its BD-rate recomputed;
* the verdict: ``better`` or ``worse`` when the t-interval excludes 0, ``inconclusive`` otherwise;
* the power line: the smallest |mean BD-rate| that a two-sided paired t-test at level 1 - confidence would
  detect with 80 % power given n seeds and the observed SD, and the seeds needed to detect 1 %.

Per point it adds the distortion task value l = λ·255²·MSE on the test images (MSE of [0, 1] images, averaged
over images), so the regime can be set beside the paper's (ELIC on Kodak: l about 0.1 to 0.6), and per arm
and λ the mean and the t-interval of bpp and PSNR over seeds (the figure ``rd_mean.png`` draws them).

Writes ``stats.json`` and ``stats.md`` into the bundle and prints the Markdown table.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from baselines.study import json_safe
from common.checkpoint import atomic_write_text
from common.cli import OneLineErrorParser, number, run_main
from common.errors import UserError
from common.rd import METHODS, bd_psnr, bd_rate

POWER = 0.8
DETECT_TARGET_PERCENT = 1.0
QUALITY_KEY = "psnr-rgb"


# ------------------------------------------------------------------------------------------ statistics
def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """(mean, sample SD, low, high) of the t-interval of the mean; NaN bounds for fewer than 2 values."""
    from scipy import stats

    data = np.asarray(values, dtype=np.float64)
    mean = float(data.mean()) if data.size else math.nan
    if data.size < 2:
        return mean, math.nan, math.nan, math.nan
    sd = float(data.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, data.size - 1)) * sd / math.sqrt(data.size)
    return mean, sd, mean - half, mean + half


def paired_t_power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample (paired) t-test of mean 0 at level ``alpha`` for a true mean ``effect``."""
    from scipy import stats

    df = n - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = effect / sd * math.sqrt(n)
    upper, lower = stats.nct.sf(critical, df, shift), stats.nct.cdf(-critical, df, shift)
    # scipy's noncentral t returns NaN far in a tail, where the probability is 0 (or 1 for the upper tail).
    upper = upper if not math.isnan(upper) else float(shift > critical)
    lower = lower if not math.isnan(lower) else 0.0
    return float(upper + lower)


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = POWER) -> float:
    """The smallest |true mean| that the paired t-test detects with probability ``power`` (NaN if n < 2)."""
    from scipy.optimize import brentq

    if n < 2 or not sd > 0:
        return math.nan
    highest = 200 * sd / math.sqrt(n)  # a noncentrality of 200: power 1 for any n >= 2
    return float(brentq(lambda effect: paired_t_power(effect, sd, n, alpha) - power, 1e-12 * sd, highest))


def seeds_needed(effect: float, sd: float, alpha: float = 0.05, power: float = POWER, most: int = 10_000) -> int | None:
    """Fewest seeds for which the paired t-test detects a true mean ``effect`` with ``power`` (None above ``most``)."""
    if not sd > 0:
        return None
    n = 2
    while n <= most:
        if paired_t_power(effect, sd, n, alpha) >= power:
            return n
        n = n + 1 if n < 64 else int(n * 1.1)
    return None


def verdict(low: float, high: float) -> str:
    """``better`` (negative BD-rate: fewer bits) or ``worse`` when the interval excludes 0, else ``inconclusive``."""
    if math.isnan(low) or math.isnan(high):
        return "no interval"
    if high < 0:
        return "better"
    if low > 0:
        return "worse"
    return "inconclusive"


# ------------------------------------------------------------------------------------------ the bundle
class Bundle:
    """The parts of a ``baselines.compare`` bundle the statistics need: arms, seeds, λ and per-image results."""

    def __init__(self, folder: Path):
        summary_path = folder / "summary.json"
        if not summary_path.is_file():
            raise UserError(f"{folder} holds no summary.json; give the folder of a baselines.compare bundle")
        try:
            summary = json.loads(summary_path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{summary_path} is not valid JSON ({exc.msg}, line {exc.lineno})") from exc
        missing = [key for key in ("arms", "seeds", "lambdas", "reference_arm") if not isinstance(summary, dict)
                   or key not in summary]
        if missing:
            raise UserError(f"{summary_path} has no {', '.join(missing)}: it is not a baselines.compare bundle")
        self.folder = folder
        self.summary = summary
        self.reference = summary["reference_arm"]
        self.seeds = [int(seed) for seed in summary["seeds"]]
        # The pairing is over seeds: an arm with a run that diverged (no curve for that seed) has no paired values.
        self.diverged = dict(Counter(run["arm"] for run in summary.get("diverged") or []))
        if self.reference in self.diverged:
            raise UserError(f"{summary_path}: the reference arm {self.reference} has runs that diverged; the paired "
                            "statistics need its curve at every seed")
        self.arms = [name for name in (arm["name"] if isinstance(arm, dict) else arm for arm in summary["arms"])
                     if name not in self.diverged]
        self.lambdas = [float(value) for value in summary["lambdas"]]
        # rows[(arm, seed)][λ] = {image: (bpp, psnr, ms-ssim)}
        self.rows: dict[tuple[str, int], dict[float, dict[str, tuple[float, float, float]]]] = {}
        for arm in self.arms:
            for seed in self.seeds:
                self.rows[(arm, seed)] = self._read_curve(arm, seed)
        images = {image for per_lambda in self.rows.values() for per_image in per_lambda.values()
                  for image in per_image}
        self.images = sorted(images)

    def _read_curve(self, arm: str, seed: int) -> dict[float, dict[str, tuple[float, float, float]]]:
        path = self.folder / "curves" / f"{arm}_seed{seed}.csv"
        if not path.is_file():
            raise UserError(f"{path} is missing: the bundle has no per-image results of arm {arm}, seed {seed}")
        per_lambda: dict[float, dict[str, tuple[float, float, float]]] = defaultdict(dict)
        with path.open(newline="") as handle:
            for row in csv.DictReader(handle):
                lmbda = float(row["point"].split("=", 1)[1])
                per_lambda[lmbda][row["image"]] = (float(row["bpp"]), float(row[QUALITY_KEY]),
                                                   float(row["ms-ssim-rgb"]))
        if sorted(per_lambda) != sorted(self.lambdas):
            raise UserError(f"{path} holds λ {sorted(per_lambda)}, the bundle {self.lambdas}")
        return dict(per_lambda)

    def curve(self, arm: str, seed: int, images: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(bpp, PSNR) per λ, each the mean over ``images`` (default: all; repeats count as often as given)."""
        images = self.images if images is None else images
        per_lambda = self.rows[(arm, seed)]
        bpp = [np.mean([per_lambda[lmbda][image][0] for image in images]) for lmbda in self.lambdas]
        psnr = [np.mean([per_lambda[lmbda][image][1] for image in images]) for lmbda in self.lambdas]
        return np.asarray(bpp), np.asarray(psnr)

    def ms_ssim(self, arm: str, seed: int) -> np.ndarray:
        """MS-SSIM (RGB) per λ, the mean over the test images."""
        per_lambda = self.rows[(arm, seed)]
        return np.asarray([np.mean([per_lambda[lmbda][image][2] for image in self.images]) for lmbda in self.lambdas])

    def distortion_task_value(self, arm: str, seed: int) -> list[float]:
        """l = λ·255²·MSE per λ, MSE averaged over the test images (from each image's PSNR)."""
        per_lambda = self.rows[(arm, seed)]
        return [lmbda * 255 ** 2 * float(np.mean([10 ** (-per_lambda[lmbda][image][1] / 10)
                                                   for image in self.images])) for lmbda in self.lambdas]


def _bd(reference: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray], method: str,
        measure=bd_rate) -> float:
    """``measure`` (BD-rate in %, or BD-PSNR in dB) of ``test`` against ``reference``; NaN where it has no value."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return measure(reference[0], reference[1], test[0], test[1], method=method)
    except (UserError, ValueError):
        return math.nan


def bootstrap_interval(bundle: Bundle, arm: str, draws: int, confidence: float, rng: np.random.Generator,
                       reference: str | None = None) -> tuple[float, float, int]:
    """Percentile interval of the mean pchip BD-rate over seeds and images resampled together; and how many
    resamples gave no BD value (a non-monotone curve or no overlap) and were left out."""
    means, failed = [], 0
    seeds, images = bundle.seeds, bundle.images
    reference = reference or bundle.reference
    for _ in range(draws):
        drawn_seeds = rng.choice(seeds, size=len(seeds), replace=True)
        drawn_images = list(rng.choice(images, size=len(images), replace=True))
        values = [_bd(bundle.curve(reference, int(seed), drawn_images),
                      bundle.curve(arm, int(seed), drawn_images), "pchip") for seed in drawn_seeds]
        if any(math.isnan(value) for value in values):
            failed += 1
            continue
        means.append(float(np.mean(values)))
    if not means:
        return math.nan, math.nan, failed
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high), failed


def arm_statistics(bundle: Bundle, arm: str, confidence: float, draws: int, rng: np.random.Generator,
                   reference: str | None = None) -> dict:
    """Per-seed BD-rates of ``arm`` against ``reference`` (default: the bundle's) with every method, their
    intervals, verdict and power."""
    reference = reference or bundle.reference
    entry: dict = {"arm": arm, "reference": reference, "seeds": bundle.seeds}
    alpha = 1 - confidence
    for method in METHODS:
        per_seed = [_bd(bundle.curve(reference, seed), bundle.curve(arm, seed), method)
                    for seed in bundle.seeds]
        good = [value for value in per_seed if not math.isnan(value)]
        mean, sd, low, high = t_interval(good, confidence)
        entry[method] = {"per_seed_%": per_seed, "n": len(good), "mean_%": mean, "sd_%": sd,
                         "t_low_%": low, "t_high_%": high, "verdict": verdict(low, high),
                         "detectable_%": detectable_effect(sd, len(good), alpha),
                         "seeds_for_1_%": seeds_needed(DETECT_TARGET_PERCENT, sd, alpha)}
        psnr_per_seed = [_bd(bundle.curve(reference, seed), bundle.curve(arm, seed), method, bd_psnr)
                         for seed in bundle.seeds]
        good_psnr = [value for value in psnr_per_seed if not math.isnan(value)]
        mean, sd, low, high = t_interval(good_psnr, confidence)
        # BD-PSNR needs the curves to share rates, BD-rate to share qualities: either may exist without the other.
        entry[method].update({"bd_psnr_per_seed_dB": psnr_per_seed, "bd_psnr_n": len(good_psnr),
                              "bd_psnr_mean_dB": mean, "bd_psnr_sd_dB": sd,
                              "bd_psnr_t_low_dB": low, "bd_psnr_t_high_dB": high})
    low, high, failed = (bootstrap_interval(bundle, arm, draws, confidence, rng, reference) if draws
                         else (math.nan,) * 2 + (0,))
    entry["pchip"].update({"bootstrap_low_%": low, "bootstrap_high_%": high, "bootstrap_draws": draws,
                           "bootstrap_failed": failed})
    return entry


def point_statistics(bundle: Bundle, confidence: float) -> list[dict]:
    """Per arm and λ: mean and t-interval over seeds of bpp, PSNR, MS-SSIM and the distortion task value l."""
    rows = []
    for arm in bundle.arms:
        curves = [bundle.curve(arm, seed) for seed in bundle.seeds]
        similarity = [bundle.ms_ssim(arm, seed) for seed in bundle.seeds]
        task_values = [bundle.distortion_task_value(arm, seed) for seed in bundle.seeds]
        for index, lmbda in enumerate(bundle.lambdas):
            row = {"arm": arm, "lambda": lmbda}
            for name, values in (("bpp", [curve[0][index] for curve in curves]),
                                 ("psnr", [curve[1][index] for curve in curves]),
                                 ("ms_ssim", [values[index] for values in similarity]),
                                 ("l", [values[index] for values in task_values])):
                mean, sd, low, high = t_interval(values, confidence)
                row.update({f"{name}_mean": mean, f"{name}_sd": sd, f"{name}_low": low, f"{name}_high": high})
            rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------ output
def markdown(document: dict) -> str:
    confidence = document["confidence"]
    percent = f"{confidence * 100:g} %"
    lines = [f"BD-rate against {document['reference']} (paired by seed, n = {len(document['seeds'])} seeds, "
             f"{len(document['images'])} test images); {percent} intervals; negative = fewer bits for the same PSNR",
             "",
             f"| arm | pchip mean ± SD | pchip {percent} t-interval | pchip {percent} bootstrap (seeds × images) "
             f"| cubic {percent} t-interval | akima {percent} t-interval | verdict (pchip) "
             f"| detectable at 80 % power | seeds to detect 1 % |",
             "|---|---|---|---|---|---|---|---|---|"]
    for entry in document["arms"]:
        pchip = entry["pchip"]

        def interval(stats: dict, low: str = "t_low_%", high: str = "t_high_%") -> str:
            return "–" if math.isnan(stats[low]) else f"[{stats[low]:+.2f}, {stats[high]:+.2f}] %"

        needed = pchip["seeds_for_1_%"]
        if pchip["n"] == 0:
            lines.append(f"| {_label(entry, document)} | no BD value (see bd.csv) | – | – | – | – | no interval | – | – |")
            continue
        lines.append(f"| {_label(entry, document)} | {pchip['mean_%']:+.2f} ± {pchip['sd_%']:.2f} % | {interval(pchip)} | "
                     f"{interval(pchip, 'bootstrap_low_%', 'bootstrap_high_%')} | {interval(entry['cubic'])} | "
                     f"{interval(entry['akima'])} | {pchip['verdict']} | "
                     f"{pchip['detectable_%']:.2f} % | {needed if needed is not None else '> 10000'} |")
    for arm, runs in (document.get("diverged_arms") or {}).items():
        lines.append(f"| {arm} | {runs} run(s) diverged (summary.json) | – | – | – | – | no interval | – | – |")
    lines += ["", f"BD-PSNR against {document['reference']} (paired by seed; positive = more dB at the same rate)",
              "", f"| arm | seeds with a value | pchip mean ± SD | pchip {percent} t-interval | cubic {percent} t-interval |",
              "|---|---|---|---|---|"]
    for entry in document["arms"]:
        pchip, cubic = entry["pchip"], entry["cubic"]
        if not pchip.get("bd_psnr_n"):
            continue
        lines.append(f"| {_label(entry, document)} | {pchip['bd_psnr_n']} of {len(document['seeds'])} | "
                     f"{pchip['bd_psnr_mean_dB']:+.3f} ± {pchip['bd_psnr_sd_dB']:.3f} dB | "
                     f"{_db_interval(pchip)} | {_db_interval(cubic)} |")
    lines += ["", f"Per arm and λ: mean over seeds ({percent} t-interval); l = λ·255²·MSE on the test images", "",
              "| arm | λ | bpp | PSNR dB | MS-SSIM | l |", "|---|---|---|---|---|---|"]
    for row in document["points"]:
        similarity = (f"{row['ms_ssim_mean']:.4f} [{row['ms_ssim_low']:.4f}, {row['ms_ssim_high']:.4f}]"
                      if "ms_ssim_mean" in row else "–")
        lines.append(f"| {row['arm']} | {row['lambda']:g} | {row['bpp_mean']:.4f} "
                     f"[{row['bpp_low']:.4f}, {row['bpp_high']:.4f}] | {row['psnr_mean']:.2f} "
                     f"[{row['psnr_low']:.2f}, {row['psnr_high']:.2f}] | {similarity} | {row['l_mean']:.3f} |")
    return "\n".join(lines) + "\n"


def _label(entry: dict, document: dict) -> str:
    """The arm, with what it is compared against where that is not the bundle's reference."""
    return entry["arm"] if entry["reference"] == document["reference"] else f"{entry['arm']} vs {entry['reference']}"


def _db_interval(stats: dict) -> str:
    low, high = stats["bd_psnr_t_low_dB"], stats["bd_psnr_t_high_dB"]
    return "–" if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}] dB"


def plot_mean_curves(document: dict, path: Path, title: str) -> None:
    """Each arm's mean curve over seeds with its t-interval in both axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    for arm in dict.fromkeys(row["arm"] for row in document["points"]):
        rows = [row for row in document["points"] if row["arm"] == arm]
        bpp = np.array([row["bpp_mean"] for row in rows])
        psnr = np.array([row["psnr_mean"] for row in rows])
        xerr = np.array([[row["bpp_mean"] - row["bpp_low"], row["bpp_high"] - row["bpp_mean"]] for row in rows]).T
        yerr = np.array([[row["psnr_mean"] - row["psnr_low"], row["psnr_high"] - row["psnr_mean"]] for row in rows]).T
        axes.errorbar(bpp, psnr, xerr=xerr, yerr=yerr, marker="o", markersize=3, capsize=2, label=arm)
    axes.set_xlabel("bpp (real bitstreams)")
    axes.set_ylabel("PSNR (dB)")
    axes.set_title(f"{title}\nmean over {len(document['seeds'])} seeds, bars: "
                   f"{document['confidence'] * 100:g} % t-interval", fontsize=9)
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=130)
    plt.close(figure)


def analyse(folder: Path, draws: int = 2000, confidence: float = 0.95, seed: int = 0,
            pairs: Sequence[tuple[str, str]] = ()) -> dict:
    """Every statistic of the module docstring for the bundle in ``folder``; ``pairs``: (arm, reference) compared
    as well, beside every arm against the bundle's reference (e.g. a recipe after QAT against the same recipe)."""
    bundle = Bundle(folder)
    if len(bundle.seeds) < 2:
        raise UserError(f"{folder} has {len(bundle.seeds)} seed; intervals over seeds need at least 2")
    for pair in pairs:
        unknown = [name for name in pair if name not in bundle.arms]
        if unknown:
            raise UserError(f"--pair {':'.join(pair)}: {', '.join(unknown)} is not an arm of {folder} with a curve at "
                            f"every seed ({', '.join(bundle.arms)})")
    rng = np.random.default_rng(seed)
    return {"bundle": str(folder), "reference": bundle.reference, "seeds": bundle.seeds, "lambdas": bundle.lambdas,
            "images": bundle.images, "confidence": confidence, "bootstrap_seed": seed,
            "arms": [arm_statistics(bundle, arm, confidence, draws, rng) for arm in bundle.arms
                     if arm != bundle.reference]
            + [arm_statistics(bundle, arm, confidence, draws, rng, reference) for arm, reference in pairs],
            "diverged_arms": bundle.diverged,
            "points": point_statistics(bundle, confidence)}


def write(folder: Path, document: dict) -> str:
    """Write ``document`` into the bundle ``folder`` as stats.json and stats.md; returns the markdown."""
    text = markdown(document)
    atomic_write_text(folder / "stats.json", json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n")
    atomic_write_text(folder / "stats.md", text)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m baselines.stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="folder of a baselines.compare bundle (summary.json, curves/)")
    parser.add_argument("--bootstrap", type=number(int, minimum=0, maximum=100_000), default=2000,
                        help="bootstrap resamples (0: none; default 2000)")
    parser.add_argument("--confidence", type=number(float, above=0, below=1), default=0.95,
                        help="level of the intervals (default 0.95)")
    parser.add_argument("--seed", type=number(int, minimum=0), default=0,
                        help="seed of the bootstrap's random draws (default 0)")
    parser.add_argument("--pair", action="append", default=[], metavar="ARM:REFERENCE",
                        help="also compare ARM against REFERENCE, paired by seed (repeatable)")
    args = parser.parse_args(argv)
    folder = Path(args.bundle)
    pairs = []
    for text in args.pair:
        arm, sep, reference = text.partition(":")
        if not sep or not arm or not reference or arm == reference:
            raise UserError(f"--pair must look like ARM:REFERENCE with two different arms, got {text!r}")
        pairs.append((arm, reference))
    document = analyse(folder, args.bootstrap, args.confidence, args.seed, pairs)
    text = write(folder, document)
    title = Bundle(folder).summary.get("title", "")
    plot_mean_curves(document, folder / "rd_mean.png", title)
    print(text)
    print(f"written: {folder / 'stats.json'}, {folder / 'stats.md'}, {folder / 'rd_mean.png'}")
    return 0


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
