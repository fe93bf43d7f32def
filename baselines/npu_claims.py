"""What the NPU seeds claim, and what study 6 measured, side by side.

``python -m baselines.npu_claims RUNS_DIR BUNDLE`` reads the study's run folders and its bundle (after
``python -m baselines.stats``) and writes ``BUNDLE/claims.json`` and ``BUNDLE/claims.md``:

* **Distillation (seed 001)**: "the student comes within 0.1 dB PSNR of its teacher with MS-SSIM >= 0.995 after
  about 3-7 epochs". Every distillation stage logged, at each validation, the student's PSNR, the teacher's PSNR
  and the MS-SSIM between the student's and the teacher's reconstructions, on the validation photos. For each run:
  the first validation where both hold (steps and training images seen; the seed's epochs were over its own data
  set, so steps are what compares), or that it never did, and the gap at the end of the stage.
* **Replacements (seeds 000, 002, 003)**: "PSNR and MS-SSIM kept or improved" after fine-tuning, read here as: at
  the same rate as the GDN model fine-tuned alone (BD-PSNR, 95 % t-interval over seeds), and at each λ the PSNR and
  MS-SSIM against the GDN model's. A claim is "kept" only where the whole interval is at or above -0.1 dB (the
  seeds' own distillation tolerance), "lost" where the whole interval is below it, otherwise "inconclusive".
* **QAT (seed 002)**: what INT8 fake quantization costs each arm (its ``<arm>_qat vs <arm>`` pair).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

from baselines.study import json_safe
from common.checkpoint import atomic_write_text
from common.cli import OneLineErrorParser, run_main
from common.errors import UserError

PSNR_TOLERANCE_DB = 0.1  # seed 001: "PSNR difference <= 0.1 dB"
TEACHER_MS_SSIM = 0.995  # seed 001: "MS-SSIM >= 0.995"
DISTILL_ARM = "upsample"


def distillation_rows(runs_dir: Path, arm: str = DISTILL_ARM) -> list[dict]:
    """Seed 001's claim checked on every distillation stage of ``arm`` (``<run>.stage1/val_log.jsonl``)."""
    from common.train.logging import read_rows

    rows = []
    for log in sorted(runs_dir.glob(f"{arm}/seed*/lambda_*.stage1/val_log.jsonl")):
        records = [row for row in read_rows(log) if "val_teacher_psnr" in row]
        if not records:
            continue
        args = json.loads((log.parent / "convergence.json").read_text()) if (log.parent / "convergence.json").is_file() \
            else {}
        met = next((row for row in records if _meets(row)), None)
        last = records[-1]
        rows.append({"run": str(log.parent.relative_to(runs_dir)), "validations": len(records),
                     "stage_steps": args.get("total_steps", last["step"]),
                     "teacher_psnr_db": last["val_teacher_psnr"],
                     "first_gap_db": records[0]["val_psnr"] - records[0]["val_teacher_psnr"],
                     "first_teacher_ms_ssim": records[0]["val_teacher_ms_ssim"],
                     "final_gap_db": last["val_psnr"] - last["val_teacher_psnr"],
                     "final_teacher_ms_ssim": last["val_teacher_ms_ssim"],
                     "claim_met_at_step": met["step"] if met else None})
    if not rows:
        raise UserError(f"no distillation stage with teacher metrics under {runs_dir}/{arm}/: run make study-npu first")
    return rows


def _meets(row: dict) -> bool:
    return (row["val_psnr"] >= row["val_teacher_psnr"] - PSNR_TOLERANCE_DB
            and row["val_teacher_ms_ssim"] >= TEACHER_MS_SSIM)


def kept_verdict(low: float, high: float, tolerance: float = PSNR_TOLERANCE_DB) -> str:
    """"kept" when the whole BD-PSNR interval is at or above -tolerance, "lost" when all of it is below."""
    if math.isnan(low):
        return "no value"
    if low >= -tolerance:
        return "kept"
    if high < -tolerance:
        return "lost"
    return "inconclusive"


def replacement_rows(stats: dict) -> list[dict]:
    """Each arm's BD-PSNR and BD-rate against the reference, or QAT against its float arm, with a verdict."""
    rows = []
    for entry in stats["arms"]:
        pchip = {key: math.nan if value is None else value for key, value in entry["pchip"].items()}  # JSON null: NaN
        low, high = pchip.get("bd_psnr_t_low_dB", math.nan), pchip.get("bd_psnr_t_high_dB", math.nan)
        rows.append({"arm": entry["arm"], "against": entry["reference"], "seeds_with_value": pchip.get("bd_psnr_n", 0),
                     "seeds": len(entry["seeds"]),
                     "bd_psnr_mean_db": pchip.get("bd_psnr_mean_dB"), "bd_psnr_low_db": low, "bd_psnr_high_db": high,
                     "bd_rate_mean_%": pchip.get("mean_%"), "bd_rate_low_%": pchip.get("t_low_%"),
                     "bd_rate_high_%": pchip.get("t_high_%"), "verdict": kept_verdict(low, high)})
    return rows


def point_rows(stats: dict) -> list[dict]:
    """Per arm and λ: PSNR and MS-SSIM against the reference arm's at the same λ (means over seeds)."""
    points = {(row["arm"], row["lambda"]): row for row in stats["points"]}
    reference = stats["reference"]
    rows = []
    for (arm, lmbda), row in points.items():
        base = points.get((reference, lmbda))
        if arm == reference or base is None:
            continue
        rows.append({"arm": arm, "lambda": lmbda, "bpp": row["bpp_mean"], "reference_bpp": base["bpp_mean"],
                     "psnr_db": row["psnr_mean"], "psnr_change_db": row["psnr_mean"] - base["psnr_mean"],
                     "ms_ssim": row.get("ms_ssim_mean"),
                     "ms_ssim_change": (row["ms_ssim_mean"] - base["ms_ssim_mean"]) if "ms_ssim_mean" in row else None})
    return rows


def markdown(document: dict) -> str:
    lines = [f"Seed 001's distillation claim (student within {PSNR_TOLERANCE_DB} dB PSNR of its teacher and MS-SSIM to "
             f"the teacher >= {TEACHER_MS_SSIM}), on the validation photos", "",
             "| run | teacher PSNR dB | gap at first validation dB | gap at the end dB | MS-SSIM to teacher at the end "
             "| claim met at step |", "|---|---|---|---|---|---|"]
    for row in document["distillation"]:
        met = row["claim_met_at_step"]
        lines.append(f"| {row['run']} | {row['teacher_psnr_db']:.2f} | {row['first_gap_db']:+.2f} | "
                     f"{row['final_gap_db']:+.2f} | {row['final_teacher_ms_ssim']:.4f} | "
                     f"{met if met is not None else 'not within ' + str(row['stage_steps']) + ' steps'} |")
    lines += ["", "Seeds 000/002/003's claim (PSNR and MS-SSIM kept or improved), as BD-PSNR at the same rate (pchip, "
              "95 % t-interval over seeds); kept = the whole interval at or above "
              f"-{PSNR_TOLERANCE_DB} dB", "",
              "| arm | against | seeds with a BD-PSNR | BD-PSNR dB | 95 % interval dB | BD-rate % | 95 % interval % "
              "| verdict |", "|---|---|---|---|---|---|---|---|"]
    for row in document["replacements"]:
        if not row["seeds_with_value"] or math.isnan(row["bd_psnr_mean_db"]):
            lines.append(f"| {row['arm']} | {row['against']} | – | no value (no seed's curves give one: not "
                         "monotone or sharing no rates, bd.csv says which) | – | – | – | no value |")
            continue
        lines.append(f"| {row['arm']} | {row['against']} | {row['seeds_with_value']} of {row['seeds']} | "
                     f"{row['bd_psnr_mean_db']:+.3f} | "
                     f"{_interval(row['bd_psnr_low_db'], row['bd_psnr_high_db'], 3)} | {_number(row['bd_rate_mean_%'])} "
                     f"| {_interval(row['bd_rate_low_%'], row['bd_rate_high_%'], 2)} | {row['verdict']} |")
    lines += ["", f"Per λ against {document['reference']} at the same λ (means over seeds)", "",
              "| arm | λ | bpp (reference) | PSNR dB (change) | MS-SSIM (change) |", "|---|---|---|---|---|"]
    for row in document["points"]:
        lines.append(f"| {row['arm']} | {row['lambda']:g} | {row['bpp']:.4f} ({row['reference_bpp']:.4f}) | "
                     f"{row['psnr_db']:.2f} ({row['psnr_change_db']:+.2f}) | {row['ms_ssim']:.4f} "
                     f"({row['ms_ssim_change']:+.4f}) |")
    return "\n".join(lines) + "\n"


def _number(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:+.2f}"


def _interval(low: float, high: float, digits: int) -> str:
    return "–" if math.isnan(low) else f"[{low:+.{digits}f}, {high:+.{digits}f}]"


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m baselines.npu_claims", description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", help="the study's run folders (make study-npu: runs/studies/npu)")
    parser.add_argument("bundle", help="the study's bundle, analysed by python -m baselines.stats")
    args = parser.parse_args(argv)
    runs_dir, bundle = Path(args.runs_dir), Path(args.bundle)
    stats_path = bundle / "stats.json"
    if not stats_path.is_file():
        raise UserError(f"{stats_path} not found: run python -m baselines.stats {bundle} first")
    stats = json.loads(stats_path.read_text())
    document = {"reference": stats["reference"], "distillation": distillation_rows(runs_dir),
                "replacements": replacement_rows(stats), "points": point_rows(stats),
                "psnr_tolerance_db": PSNR_TOLERANCE_DB, "teacher_ms_ssim": TEACHER_MS_SSIM}
    text = markdown(document)
    atomic_write_text(bundle / "claims.json", json.dumps(json_safe(document), indent=2) + "\n")
    atomic_write_text(bundle / "claims.md", text)
    print(text)
    print(f"written: {bundle / 'claims.json'}, {bundle / 'claims.md'}")
    return 0


def cli() -> None:
    run_main(main)


if __name__ == "__main__":
    cli()
