"""The study bundle that ``baselines.compare`` writes, and the table it prints.

A bundle is a folder of small files that holds everything a reader needs to check a comparison without
its checkpoints: ``summary.json`` (how it was made, every R-D point with its convergence verdict, every
BD pair per seed and summarised over seeds, the checks of the demo's targets), ``points.csv``, ``bd.csv``,
``curves/*.json`` (CompressAI format), ``rd.png``, ``task_weights/*.csv`` and ``recon/*.png``.
``python -m common.report`` renders it; :func:`load_summary` reads it back.
"""
from __future__ import annotations

import csv
import json
import math
import shlex
from pathlib import Path
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from common.checkpoint import atomic_write_text, load_file
from common.receipt import machine_description
from common.rd import RDCurve, plot_curves, sorted_monotone

SUMMARY = "summary.json"
REPO = Path(__file__).resolve().parent.parent
# The demo's targets (issue "Results a researcher can trust"): λ must move the rate at least this much.
MIN_RATE_SPREAD = 3.0
MIN_OVERLAP = 75.0
TASK_WEIGHT_ROWS = 200  # task-weight trajectories are subsampled to at most this many rows per run
RECON_CROP = 192


THEN, AFTER = "--then", "--after"


@dataclass(frozen=True)
class Arm:
    """One setting of the study: a name, the training flags of each of its stages (one stage for an optimizer
    setting; several for a recipe such as "train the replaced layers, then all"), and the arm whose final model
    of the same seed and λ it starts from (``after``; None: the study's start)."""

    name: str
    stages: tuple[tuple[str, ...], ...]
    after: str | None = None

    @property
    def flags(self) -> tuple[str, ...]:
        """The flags as given: stages joined by ``--then``, led by ``--after ARM`` where there is one."""
        joined = [flag for index, stage in enumerate(self.stages) for flag in ((THEN,) if index else ()) + stage]
        return ((AFTER, self.after) if self.after else ()) + tuple(joined)


@dataclass
class Point:
    """One evaluated model: its arm, seed and λ, its aggregate metrics and its convergence verdict."""

    arm: str
    seed: int
    lmbda: float
    metrics: dict
    convergence: dict
    train_seconds: float | None = None


def run_dir(out_dir: Path, arm: str, seed: int, lmbda: float) -> Path:
    """The folder of one run of a study: ``<out_dir>/<arm>/seed<k>/lambda_<λ>/``."""
    return out_dir / arm / f"seed{seed}" / f"lambda_{lmbda:g}"


def write_bundle(out_dir: Path, *, run_root: Path, args, argv: list[str], arms: Sequence[Arm], lambdas: Sequence[float],
                 seeds: Sequence[int], points: Sequence[Point], curves: dict[tuple[str, int], RDCurve],
                 anchors: Sequence[RDCurve], pairs: list[dict], summary: list[dict], images: list[Path],
                 root: Path, test_set: dict, wall_time: float, commit: str, image_sets: dict | None = None,
                 diverged: Sequence[dict] = ()) -> None:
    """Write every file of the bundle and print the table; see the module docstring. ``commit``: the
    :func:`git_commit` of the code that ran; ``diverged``: the runs that diverged (their arm has no curve for
    that seed)."""
    reference = arms[0].name
    checks = target_checks(arms, seeds, lambdas, points, curves, summary, reference, diverged)
    document = {
        "title": args.title,
        "command": "python -m baselines.compare " + shlex.join(argv),
        "git_commit": commit,
        "wall_time_s": round(wall_time, 1),
        "train_seconds_total": round(sum(p.train_seconds or 0.0 for p in points), 1),
        "machine": machine_description(),
        "reference_arm": reference,
        "arms": {arm.name: " ".join(arm.flags) for arm in arms},
        "lambdas": list(lambdas),
        "seeds": list(seeds),
        "test_set": test_set,
        "eval_images": [str(p.relative_to(root)) for p in images],
        "image_sets": image_sets,
        "start": start_provenance(args.start_checkpoint, args.start_from),
        "points": [{"arm": p.arm, "seed": p.seed, "lambda": p.lmbda,
                    **{k: p.metrics[k] for k in ("bpp", "bpp_estimated", "psnr-rgb", "ms-ssim-rgb")},
                    "converged": p.convergence["converged"], "convergence": p.convergence,
                    "train_seconds": p.train_seconds} for p in points],
        "anchors": {a.name: {"bpp": a.bpp, "psnr-rgb": a.values("psnr-rgb"),
                             "ms-ssim-rgb": a.values("ms-ssim-rgb"), "quality": a.metrics.get("quality")}
                    for a in anchors},
        "diverged": list(diverged),
        "bd_per_seed": pairs,
        "bd_summary": summary,
        "checks": checks,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / SUMMARY, json.dumps(json_safe(document), indent=2) + "\n")
    _write_csv(out_dir / "points.csv", [_point_row(p) for p in points])
    _write_csv(out_dir / "bd.csv", pairs)
    figure = plot_curves(_mean_curves(arms, seeds, curves), out_dir / "rd.png", anchors=anchors,
                         title=args.title or f"{' vs '.join(a.name for a in arms)} on {test_set['name']}")
    copy_task_weights(out_dir, run_root, arms, seeds, lambdas)
    # The reconstructions come from the first seed whose reference curve exists, for the arms that have one there.
    shown_seed = next(seed for seed in seeds if (reference, seed) in curves)
    recon = write_reconstructions(out_dir, run_root, [arm for arm in arms if (arm.name, shown_seed) in curves],
                                  shown_seed, lambdas, images, root, anchors, args.recon_image)
    print_report(document, out_dir, figure, recon)


def start_provenance(checkpoint: str | None, start_from: str | None) -> dict:
    """Where the runs started; for one of our checkpoints also how it was trained and whether it converged."""
    record = {"checkpoint": checkpoint, "from": start_from}
    if checkpoint:
        trained = load_file(checkpoint)
        if isinstance(trained, dict):
            record["training_flags"] = trained.get("args")
            record["steps"] = trained.get("step")
        # A run folder's verdict, or the sidecar that baselines.pretrain writes beside a shipped base model.
        for side in (Path(checkpoint).with_name("convergence.json"), Path(checkpoint).with_suffix(".json")):
            if side.is_file():
                found = json.loads(side.read_text())
                record["convergence"] = found.get("convergence", found)
                break
    return record


def json_safe(value):
    """JSON has no NaN or infinity: they become null (in nested dicts and lists too)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value


def _point_row(point: Point) -> dict:
    conv = point.convergence
    return {"arm": point.arm, "seed": point.seed, "lambda": point.lmbda, "bpp": point.metrics["bpp"],
            "bpp_estimated": point.metrics["bpp_estimated"], "psnr-rgb": point.metrics["psnr-rgb"],
            "ms-ssim-rgb": point.metrics["ms-ssim-rgb"], "converged": conv["converged"],
            "val_psnr_change_db": conv["psnr_change_db"], "val_bpp_change": conv["bpp_change_relative"]}


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _mean_curves(arms, seeds, curves: dict[tuple[str, int], RDCurve]) -> list[RDCurve]:
    """One curve per arm: the seed itself, or the mean over seeds of each λ point's bpp and metrics (over the seeds
    that have a curve; an arm that diverged at every seed has none)."""
    result = []
    for arm in arms:
        members = [curves[(arm.name, seed)] for seed in seeds if (arm.name, seed) in curves]
        if not members:
            continue
        if len(members) == 1:
            result.append(RDCurve(arm.name, members[0].bpp, members[0].metrics))
            continue
        keys = [k for k in ("psnr-rgb", "ms-ssim-rgb") if k in members[0].metrics]
        result.append(RDCurve(f"{arm.name} (mean of {len(members)} seeds)",
                              list(np.mean([c.bpp for c in members], axis=0)),
                              {k: list(np.mean([c.metrics[k] for c in members], axis=0)) for k in keys}))
    return result


# ------------------------------------------------------------------------------------------ targets
def target_checks(arms, seeds, lambdas, points, curves, summary, reference, diverged=()) -> list[dict]:
    """The demo's targets, each with whether it holds and the numbers behind it."""
    checks = []
    for arm in arms:
        for seed in seeds:
            if (arm.name, seed) not in curves:
                continue
            curve = curves[(arm.name, seed)]
            try:
                sorted_monotone(curve.bpp, curve.values("psnr-rgb"), curve.name)
                checks.append({"check": f"{curve.name}: monotone", "ok": True, "detail": "PSNR rises with bpp"})
            except Exception as exc:  # noqa: BLE001 - the reason is the detail
                checks.append({"check": f"{curve.name}: monotone", "ok": False, "detail": str(exc)})
            spread = max(curve.bpp) / min(curve.bpp)
            checks.append({"check": f"{curve.name}: λ moves the rate", "ok": spread >= MIN_RATE_SPREAD,
                           "detail": f"highest / lowest bpp = {spread:.2f} (target >= {MIN_RATE_SPREAD:g})"})
    unconverged = [p for p in points if not p.convergence["converged"]]
    checks.append({"check": "every run converged", "ok": not unconverged,
                   "detail": f"{len(points) - len(unconverged)} of {len(points)} runs"
                             + (": not " + ", ".join(f"{p.arm}/seed{p.seed}/λ={p.lmbda:g}" for p in unconverged)
                                if unconverged else "")})
    checks.append({"check": "no run diverged", "ok": not diverged,
                   "detail": "; ".join(f"{run['arm']}/seed{run['seed']}/λ={run['lambda']:g}: {run['message']}"
                                       for run in diverged) or f"{len(points)} runs finished"})
    for entry in summary:
        if not entry["computed"]:
            checks.append({"check": f"{entry['pair']}: BD computed", "ok": False, "detail": entry["note"]})
            continue
        low = [axis for axis in ("quality", "rate") if not entry[f"{axis}_overlap_%_mean"] >= MIN_OVERLAP]
        checks.append({"check": f"{entry['pair']}: overlap >= {MIN_OVERLAP:g} % in both axes", "ok": not low,
                       "detail": _overlap_detail(entry)})
        if entry["pair"].endswith("vs JPEG"):
            value = entry["bd_rate_pchip_%_mean"]
            checks.append({"check": f"{entry['pair']}: better than JPEG", "ok": value < 0,
                           "detail": f"BD-rate {value:+.2f} %"})
    return checks


def _overlap_detail(entry: dict) -> str:
    text = (f"quality {entry['quality_overlap_%_mean']:.0f} %, rate {entry['rate_overlap_%_mean']:.0f} %")
    if entry["pair"].endswith(("vs JPEG", "vs WebP")) and not entry["rate_overlap_%_mean"] >= MIN_OVERLAP and \
            entry["bd_rate_pchip_%_mean"] < -20:
        text += ("; a codec that needs far fewer bits than the anchor for the same PSNR cannot overlap it in both "
                 "axes: the anchor's ladder is matched to the quality range, so BD-rate (integrated over quality) "
                 "covers the curves and BD-PSNR only their common rates")
    return text


# ------------------------------------------------------------------------------------------ side files
def copy_task_weights(out_dir: Path, run_root: Path, arms, seeds, lambdas) -> None:
    """Subsampled task-weight trajectories of every run that logged them (Balanced and BalancedQP)."""
    target = out_dir / "task_weights"
    for stale in target.glob("*.csv"):  # a rerun with other arms or λ must not leave the old histories
        stale.unlink()
    for arm in arms:
        for seed in seeds:
            for lmbda in lambdas:
                log = run_dir(run_root, arm.name, seed, lmbda) / "train_log.csv"
                if not log.is_file():  # diverged before its first logged row
                    continue
                with log.open(newline="") as handle:
                    rows = list(csv.DictReader(handle))
                columns = ["step"] + [c for c in (rows[0] if rows else {}) if c.startswith(("weight_", "coef_"))]
                if len(columns) == 1:
                    continue
                keep = rows[::max(1, math.ceil(len(rows) / TASK_WEIGHT_ROWS))]
                if keep[-1] is not rows[-1]:
                    keep.append(rows[-1])
                target.mkdir(parents=True, exist_ok=True)
                with (target / f"{arm.name}_seed{seed}_lambda_{lmbda:g}.csv").open("w", newline="") as handle:
                    writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
                    writer.writeheader()
                    writer.writerows(keep)


def write_reconstructions(out_dir: Path, run_root: Path, arms, seed: int, lambdas, images: list[Path], root: Path,
                          anchors: Sequence[RDCurve], recon_image: str | None) -> dict:
    """The centre crop of one evaluation image from each arm and anchor, at the bpp closest to a target.

    The target is the reference arm's bpp on that image at the middle λ; every other arm uses its λ whose
    bpp on the image is closest, every anchor its quality that is closest. Returns the manifest also
    written to ``recon/recon.json``.
    """
    import torch

    from baselines.classic import encode
    from common.data.images import load_rgb, to_tensor
    from common.eval.evaluate import centred_padding, crop, pad
    from common.assembly import load_model

    names = [str(p.relative_to(root)) for p in images]
    if recon_image is not None and recon_image not in names:
        from common.errors import UserError

        raise UserError(f"--recon_image {recon_image} is not one of the evaluation images ({', '.join(names)})")
    name = recon_image or names[0]
    image = load_rgb(root / name)
    x = to_tensor(image).unsqueeze(0)
    height, width = x.shape[-2:]
    box = _centre_box(height, width)
    folder = out_dir / "recon"
    folder.mkdir(parents=True, exist_ok=True)
    _save_crop(x, box, folder / "original.png")
    manifest = {"image": name, "crop": box, "entries": [{"label": "original", "file": "original.png", "bpp": None}]}

    def learned(arm_name: str, lmbda: float):
        model = load_model(checkpoint=str(run_dir(run_root, arm_name, seed, lmbda) / "last.pt"))
        model.update(force=True)
        padding = centred_padding(height, width, model.eval_pad_multiple)
        with torch.no_grad():
            encoded = model.compress(pad(x, padding))
            decoded = model.decompress(encoded["strings"], encoded["shape"])["x_hat"].clamp(0, 1)
        from common.eval.evaluate import payload_bytes

        return crop(decoded, padding), payload_bytes(encoded["strings"]) * 8 / (height * width)

    reference = [learned(arms[0].name, lmbda) for lmbda in lambdas]
    target = reference[len(lambdas) // 2][1]
    manifest["target_bpp"] = target
    for arm_index, arm in enumerate(arms):
        candidates = reference if arm_index == 0 else [learned(arm.name, lmbda) for lmbda in lambdas]
        index = int(np.argmin([abs(bpp - target) for _, bpp in candidates]))
        x_hat, bpp = candidates[index]
        file = f"{arm.name}.png"
        _save_crop(x_hat, box, folder / file)
        manifest["entries"].append({"label": f"{arm.name} (λ={lambdas[index]:g})", "file": file, "bpp": bpp})
    for anchor in anchors:
        codec = anchor.name.lower()
        qualities = anchor.metrics.get("quality") or []
        best = None
        for quality in qualities:
            payload = encode(image, codec, int(quality))
            bpp = len(payload) * 8 / (height * width)
            if best is None or abs(bpp - target) < abs(best[1] - target):
                best = (payload, bpp, int(quality))
        if best is None:
            continue
        import io

        with Image.open(io.BytesIO(best[0])) as decoded:
            x_hat = to_tensor(decoded.convert("RGB")).unsqueeze(0)
        file = f"{codec}.png"
        _save_crop(x_hat, box, folder / file)
        manifest["entries"].append({"label": f"{anchor.name} (quality {best[2]})", "file": file, "bpp": best[1]})
    atomic_write_text(folder / "recon.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


def _centre_box(height: int, width: int) -> list[int]:
    side = min(RECON_CROP, height, width)
    top, left = (height - side) // 2, (width - side) // 2
    return [top, left, side, side]


def _save_crop(x, box: Sequence[int], path: Path) -> None:
    top, left, h, w = box
    array = (x[0, :, top:top + h, left:left + w].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(array).save(path)


# ------------------------------------------------------------------------------------------ console
def print_report(document: dict, out_dir: Path, figure: Path, recon: dict) -> None:
    seeds = document["seeds"]
    print(f"\n{document['title'] or 'comparison'}: {len(document['arms'])} arms x {len(seeds)} seed(s) x "
          f"{len(document['lambdas'])} λ on {document['test_set']['name']} "
          f"({document['test_set']['num_images']} images), real bitstreams")
    points = [["arm", "λ", "bpp", "PSNR dB", "MS-SSIM", "converged"]]
    for arm in document["arms"]:
        for lmbda in document["lambdas"]:
            rows = [p for p in document["points"] if p["arm"] == arm and p["lambda"] == lmbda]
            if not rows:  # diverged at every seed
                points.append([arm, f"{lmbda:g}", "diverged", "", "", ""])
                continue
            points.append([arm, f"{lmbda:g}", _mean_std([r["bpp"] for r in rows], 4),
                           _mean_std([r["psnr-rgb"] for r in rows], 2), _mean_std([r["ms-ssim-rgb"] for r in rows], 4),
                           f"{sum(r['converged'] for r in rows)}/{len(rows)}"])
    for name, anchor in document["anchors"].items():
        for quality, bpp, value, msssim in zip(anchor["quality"] or [None] * len(anchor["bpp"]), anchor["bpp"],
                                               anchor["psnr-rgb"], anchor["ms-ssim-rgb"]):
            points.append([name, f"q{int(quality)}" if quality else "", f"{bpp:.4f}", f"{value:.2f}", f"{msssim:.4f}",
                           ""])
    print()
    _print_columns(points)
    pairs = [["pair", "BD-rate %", "BD-PSNR dB", "overlap q/r %", "note"]]
    pairs += [[entry["pair"], _pm(entry, "bd_rate_pchip_%", 2), _pm(entry, "bd_psnr_pchip_dB", 3), _overlap(entry),
               entry["note"]] for entry in document["bd_summary"]]
    print()
    _print_columns(pairs)
    print("\nchecks:")
    for check in document["checks"]:
        print(f"  [{'ok' if check['ok'] else 'NO'}] {check['check']}: {check['detail']}")
    print(f"\nsummary: {out_dir / SUMMARY}\nR-D points: {out_dir / 'points.csv'} and {out_dir / 'curves'}/"
          f"\nBD pairs: {out_dir / 'bd.csv'}\nfigure: {figure}\nreconstructions at matched bpp "
          f"({recon['image']}, target {recon['target_bpp']:.3f} bpp): {out_dir / 'recon'}/\n"
          f"wall time: {document['wall_time_s']:.0f} s")


def _print_columns(rows: Sequence[Sequence[str]]) -> None:
    """Print rows as columns as wide as their widest cell: the first left-aligned, the last as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [cell.rjust(width) for cell, width in zip(row[1:-1], widths[1:])]
        print("  ".join(cells + [row[-1]]).rstrip())


def _mean_std(values: Sequence[float], digits: int) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values, ddof=1):.{digits}f}"


def _pm(entry: dict, key: str, digits: int) -> str:
    mean, std = entry[f"{key}_mean"], entry[f"{key}_std"]
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:+.{digits}f}"
    return f"{mean:+.{digits}f} ± {std:.{digits}f}"


def _overlap(entry: dict) -> str:
    q, r = entry["quality_overlap_%_mean"], entry["rate_overlap_%_mean"]
    if q is None or (isinstance(q, float) and math.isnan(q)):
        return "–"
    return f"{q:.0f}/{r:.0f}"


def load_summary(folder: str | Path) -> dict:
    """Read a bundle's ``summary.json``; a missing or broken file is a one-line error."""
    from common.errors import UserError

    path = Path(folder) / SUMMARY
    if not path.is_file():
        raise UserError(f"{path} not found: pass the --out_dir of a python -m baselines.compare run")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc})") from exc
