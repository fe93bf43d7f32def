"""Phase 4 on tiny images: the Adam-vs-Balanced comparison end to end, its report, and checkpoint evaluation.

The comparison must produce BD values (a test fails when it does not), and every number in its tables is
recomputed here from the curve files it wrote, with the ``bjontegaard`` package directly.
"""
from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import sys

import bjontegaard
import numpy as np
import pytest
import torch
from PIL import Image

from baselines import compare
from common.errors import UserError
from tests.helpers import run_script, write_image_dirs

# As the demo: every λ fine-tuned from the shipped base model (baselines/pretrained/, `make pretrain`). With λ six
# orders of magnitude apart, a few steps move rate and quality the same way for either optimizer, so both curves
# are monotone and the BD values exist.
BASE = compare.REPO / "baselines" / "pretrained" / "bmshj2018-factorized-small.pt"
VARIABLES = {"MODEL": "bmshj2018-factorized-small", "PATCH": "32", "VAL_PATCH": "32", "BATCH": "2", "STEPS": "10",
             "LR": "1e-3", "LR_WARMUP_STEPS": "0", "LAMBDAS": "0.00001,10", "JOBS": "2", "VAL_EVERY": "2",
             "TITLE": "tiny comparison", "START": str(BASE), "SEEDS": "0"}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("phase4")
    train, test = write_image_dirs(root, size=64, n_train=4, n_test=2)
    variables = {**VARIABLES, "DATA": str(train), "TEST_DATA": str(test), "OUT": str(root / "runs"),
                 "CMP_DIR": str(root / "cmp")}
    result = run_script("phase4/run_bdrate.sh", variables, "--progress", "false")
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    return root / "cmp", variables, result


def _curve(path):
    data = json.loads(path.read_text())["results"]
    return np.array(data["bpp"]), np.array(data["psnr-rgb"])


def test_balanced_vs_adam_is_computed_from_the_curve_files(study):
    folder, _, result = study
    summary = json.loads((folder / "summary.json").read_text())
    rows = {row["pair"]: row for row in summary["bd_per_seed"]}
    pair = rows["balanced vs adam"]
    assert pair["note"] == "" or "overlap" in pair["note"], pair["note"]
    rate_a, psnr_a = _curve(folder / "curves/adam_seed0.json")
    rate_b, psnr_b = _curve(folder / "curves/balanced_seed0.json")
    expected = bjontegaard.bd_rate(rate_a, psnr_a, rate_b, psnr_b, method="pchip", require_matching_points=False,
                                   min_overlap=0)
    assert pair["bd_rate_pchip_%"] == pytest.approx(expected, rel=1e-12)
    assert pair["bd_psnr_pchip_dB"] == pytest.approx(
        bjontegaard.bd_psnr(rate_a, psnr_a, rate_b, psnr_b, method="pchip", require_matching_points=False,
                            min_overlap=0), rel=1e-12)
    with open(folder / "bd.csv", newline="") as handle:
        from_csv = {row["pair"]: row for row in csv.DictReader(handle)}
    assert float(from_csv["balanced vs adam"]["bd_rate_pchip_%"]) == pytest.approx(expected, rel=1e-12)
    assert "balanced vs adam" in result.stdout and f"{expected:+.2f}" in result.stdout


def test_points_are_the_evaluated_curves_with_their_convergence_verdicts(study):
    folder, _, _ = study
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["lambdas"] == [1e-05, 10.0] and summary["arms"]["adam"] == "--optimizer adam"
    assert summary["test_set"] == {"name": "test", "split": None, "num_images": 2}
    assert f"torch CPU kernels {torch.backends.cpu.get_cpu_capability()}" in summary["machine"]
    for arm in ("adam", "balanced"):
        curve = json.loads((folder / f"curves/{arm}_seed0.json").read_text())
        assert curve["points"] == ["lambda=1e-05", "lambda=10"] and curve["test_set"] == summary["test_set"]
        points = [p for p in summary["points"] if p["arm"] == arm]
        assert [p["bpp"] for p in points] == curve["results"]["bpp"]
        for point in points:
            run = folder / arm / "seed0" / f"lambda_{point['lambda']:g}"
            assert point["convergence"] == json.loads((run / "convergence.json").read_text())
    assert {a for a in summary["anchors"]} == {"JPEG", "WebP"}
    assert [c["check"] for c in summary["checks"]][:2] == ["adam: monotone", "adam: λ moves the rate"]
    for name in ("rd.png", "points.csv", "recon/original.png", "recon/adam.png", "recon/jpeg.png",
                 "task_weights/balanced_seed0_lambda_10.csv"):
        assert (folder / name).is_file(), name
    assert not (folder / "task_weights" / "adam_seed0_lambda_10.csv").exists()


def test_rerun_skips_finished_runs_and_reproduces_the_numbers(study, tmp_path):
    folder, variables, _ = study
    bundle = tmp_path / "bundle"
    # The history of a λ this study does not have (an earlier ladder) must not survive into the report.
    (bundle / "task_weights").mkdir(parents=True)
    (bundle / "task_weights" / "balanced_seed0_lambda_0.5.csv").write_text("step,weight_distortion\n1,0.5\n")
    result = run_script("phase4/run_bdrate.sh", variables, "--progress", "false", "--bundle_dir", str(bundle))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("finished run found, skipped") == 4 and "training 0 runs" in result.stdout
    assert sorted(p.name for p in (bundle / "task_weights").iterdir()) == [
        "balanced_seed0_lambda_10.csv", "balanced_seed0_lambda_1e-05.csv"]
    first, second = (json.loads((f / "summary.json").read_text()) for f in (folder, bundle))
    assert first["bd_per_seed"] == second["bd_per_seed"] and first["points"] == second["points"]


def test_rerun_with_other_arm_flags_refuses_the_finished_runs(study, tmp_path):
    # Skipping a finished run trained with another γ would report its model as the new arm's.
    _, variables, _ = study
    result = run_script("phase4/run_bdrate.sh", {**variables, "GAMMA": "0.3"}, "--progress", "false",
                        "--bundle_dir", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "balanced/seed0/lambda_1e-05 holds a finished run trained with --gamma [0.03] (now [0.3])" in result.stderr
    assert not (tmp_path / "summary.json").exists()


def test_report_tables_figures_and_page(study, tmp_path):
    folder, _, _ = study
    proc = subprocess.run([sys.executable, "-m", "common.report", str(folder), "--out_dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=compare.REPO)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / folder.name
    summary = json.loads((folder / "summary.json").read_text())
    expected = next(e for e in summary["bd_summary"] if e["pair"] == "balanced vs adam")["bd_rate_pchip_%_mean"]
    with open(out / "bd.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["pair"] == "balanced vs adam")
    assert row["BD-rate (%)"] == f"{expected:+.2f}"
    assert f"{expected:+.2f}" in (out / "bd.md").read_text() and f"{expected:+.2f}" in (out / "bd.tex").read_text()
    for name in ("rd_psnr.png", "rd_psnr.pdf", "rd_ms-ssim.pdf", "task_weights_balanced.png", "points.tex"):
        assert (out / name).stat().st_size > 0, name
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 + 5 and "http" not in page.replace("http-equiv", "")
    _screenshot_shows_the_curves(out / "index.html", tmp_path / "shot.png")


def _screenshot_shows_the_curves(page, shot):
    """Render the page in headless Chromium and look for the first two matplotlib colours (the two arms)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (.ci/run installs Debian's chromium package)")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1200,1400", page.as_uri()],
                   capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    for name, colour in (("adam (tab:blue)", (31, 119, 180)), ("balanced (tab:orange)", (255, 127, 14))):
        close = (np.abs(pixels - np.array(colour)).sum(axis=-1) < 40).sum()
        assert close > 100, f"the screenshot shows no curve of {name}"


def test_eval_checkpoints(study, tmp_path):
    folder, variables, _ = study
    checkpoints = " ".join(str(folder / f"adam/seed0/lambda_{lam}/last.pt") for lam in ("1e-05", "10"))
    result = run_script("phase4/run_eval_checkpoints.sh", {**variables, "CHECKPOINTS": checkpoints,
                                                           "OUT": str(tmp_path), "NAME": "tiny"})
    assert result.returncode == 0, result.stderr[-2000:]
    curve = json.loads((tmp_path / "phase4/eval/tiny_custom.json").read_text())
    assert len(curve["results"]["bpp"]) == 2


def test_eval_checkpoints_needs_checkpoints(tmp_path):
    result = run_script("phase4/run_eval_checkpoints.sh", {"OUT": str(tmp_path)})
    assert result.returncode == 2 and result.stderr.strip() == "error: set CHECKPOINTS to one or more checkpoint files"


@pytest.mark.parametrize("argv,message", [
    (["--arm", "adam", "--arm", "b=--optimizer balanced"], "--arm must look like"),
    (["--arm", "a=--optimizer adam", "--arm", "a=--optimizer balanced"], "different names"),
    (["--arm", "a=--optimizer adam", "--arm", "b=--after c --qat true"], "--after c must name an arm given before it"),
    (["--arm", "a=--optimizer adam", "--arm", "b=--act relu --then"], "every stage between --then needs flags"),
    (["--arm", "a=--after b", "--arm", "b=--optimizer adam"], "the reference arm a cannot start --after"),
    (["--arm", "a=--optimizer adam", "--arm", "b=--optimizer balanced", "--lambda", "0.1"], "set per run"),
    (["--arm", "a=--optimizer adam", "--arm", "b=--optimizer balanced", "--start_from", "nowhere"],
     "starting model not found: nowhere/seed0/lambda_0.01/last.pt"),
    (["--arm", "a=--optimizer adam", "--arm", "b=--optimizer balanced --gamma x"], "--gamma: must be a finite number"),
    (["--arm", "a=--optimizer adam", "--arm", "b=--optimizer balanced", "--train_dataset", "nowhere"],
     "--train_dataset folder not found"),
])
def test_comparison_mistakes_are_one_line_before_any_training(argv, message, tmp_path, capsys):
    full = ["--out_dir", str(tmp_path / "x"), "--lambdas", "0.01", *argv]
    with pytest.raises((UserError, SystemExit)) as caught:
        compare.main(full)
    text = str(caught.value) if caught.type is UserError else capsys.readouterr().err
    assert message in text and not (tmp_path / "x").exists()


def test_pairs_are_summarised_over_seeds():
    rows = [{"pair": "b vs a", "seed": s, "bd_rate_pchip_%": v, "bd_psnr_pchip_dB": -v / 10, "quality_overlap_%": 80.0,
             "rate_overlap_%": 90.0, "note": ""} for s, v in ((0, -2.0), (1, -4.0), (2, -6.0))]
    rows.append({"pair": "c vs a", "seed": 0, "bd_rate_pchip_%": float("nan"), "bd_psnr_pchip_dB": float("nan"),
                 "quality_overlap_%": float("nan"), "rate_overlap_%": float("nan"), "note": "c is not monotone"})
    rows += [{**rows[-1], "pair": "d vs a", "seed": s, "note": f"short by {s}"} for s in (1, 2)]
    first, second, third = compare.summarize_pairs(rows)
    assert first["computed"] == 3 and first["bd_rate_pchip_%_mean"] == pytest.approx(-4.0)
    assert first["bd_rate_pchip_%_std"] == pytest.approx(2.0)  # sample standard deviation of -2, -4, -6
    assert second["computed"] == 0 and math.isnan(second["bd_rate_pchip_%_mean"]) and second["note"] == \
        "c is not monotone"
    assert third["note"] == "seed 1: short by 1 (and 1 more seeds, see bd.csv)"


def test_a_diverged_run_is_a_result_and_the_sweep_goes_on(tmp_path):
    # An arm whose lr blows the weights up diverges at every λ: the other arms are still trained and compared, the
    # bundle lists the diverged runs, and a rerun keeps them (only for the same flags) instead of training again.
    train, test = write_image_dirs(tmp_path, size=64, n_train=2, n_test=1)
    def argv(blowup_lr):
        return ["--out_dir", str(tmp_path / "cmp"), "--lambdas", "0.00001,10", "--anchors", "", "--jobs", "2",
                "--start_checkpoint", str(BASE), "--arm", "adam=--optimizer adam",
                "--arm", "cautious=--optimizer cautious_adam", "--arm", f"blowup=--optimizer adam --lr {blowup_lr}",
                "--model", "bmshj2018-factorized-small", "--steps", "2", "--batch_size", "2", "--patch_size", "32",
                "--val_patch_size", "32", "--val_every", "1", "--recon_every", "0", "--train_dataset", str(train),
                "--test_dataset", str(test)]

    assert compare.main(argv(1e30)) == 0
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    assert [(run["arm"], run["lambda"]) for run in summary["diverged"]] == [("blowup", 1e-05), ("blowup", 10.0)]
    assert all("training stopped at step" in run["message"] for run in summary["diverged"])
    assert {p["arm"] for p in summary["points"]} == {"adam", "cautious"}
    assert {row["pair"] for row in summary["bd_per_seed"]} == {"cautious vs adam"}
    check = next(c for c in summary["checks"] if c["check"] == "no run diverged")
    assert not check["ok"] and "blowup/seed0/λ=10" in check["detail"]
    assert not (tmp_path / "cmp" / "curves" / "blowup_seed0.json").exists()
    from common.report import render_study

    page = render_study(tmp_path / "cmp", tmp_path / "report").read_text()
    assert "no run diverged: blowup/seed0/λ=1e-05: training stopped at step" in page
    assert compare.main(argv(1e30)) == 0  # nothing to train again
    assert json.loads((tmp_path / "cmp" / "summary.json").read_text())["diverged"] == summary["diverged"]
    with pytest.raises(UserError, match=r"blowup/seed0/lambda_1e-05 holds a run that diverged with other flags"):
        compare.main(argv(1e29))


def test_evaluation_in_worker_processes_equals_evaluation_in_process(tmp_path):
    # The bundle's points do not depend on --jobs: two different models evaluated two at a time in spawned workers
    # (one thread each) give the bytes, PSNR and MS-SSIM of the same evaluation in this process at one thread,
    # bit for bit (same kernels, same thread count); only the timings differ.
    _, test = write_image_dirs(tmp_path, size=64, n_train=1, n_test=1)
    images = sorted(test.iterdir())
    checkpoints = {"bmshj2018": BASE, "hpcm": BASE.with_name("hpcm-tiny.pt")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        in_process = compare.evaluate_checkpoints(checkpoints, images, test, parallel=1)
    finally:
        torch.set_num_threads(threads)
    in_workers = compare.evaluate_checkpoints(checkpoints, images, test, parallel=2)
    assert in_process.keys() == in_workers.keys() == checkpoints.keys()
    for key, (rows, aggregate, pad_multiple) in in_process.items():
        other_rows, other_aggregate, other_pad = in_workers[key]
        assert pad_multiple == other_pad
        untimed = [{k: v for k, v in row.items() if "time" not in k} for row in rows]
        assert untimed == [{k: v for k, v in row.items() if "time" not in k} for row in other_rows]
        assert aggregate["bpp"] > 0 and aggregate["psnr-rgb"] == other_aggregate["psnr-rgb"]
    assert in_process["bmshj2018"][0][0]["bytes"] != in_process["hpcm"][0][0]["bytes"]


def test_staged_arms_and_arms_that_start_from_another(tmp_path):
    # An NPU recipe as one arm of stages (replaced layers, then all; distillation, then the R-D fine-tuning) and a
    # QAT arm that starts from another arm's final model: every stage starts from the one before, the distillation
    # stage gets no λ, and a rerun finds every stage finished.
    train, test = write_image_dirs(tmp_path, size=64, n_train=2, n_test=1)
    replaced = "--act relu --replace_parts encoder"
    argv = ["--out_dir", str(tmp_path / "cmp"), "--lambdas", "0.001,0.1", "--anchors", "", "--jobs", "2",
            "--start_checkpoint", str(BASE), "--arm", "gdn=--optimizer adam",
            "--arm", f"relu={replaced} --train_scope replaced --steps 1 --then {replaced} --train_scope all",
            "--arm", "upsample=--distill --decoder_upsample true --steps 1 --then --decoder_upsample true",
            "--arm", "relu_qat=--after relu --qat true --qat_scope encoder --qat_calib_steps 1 --qat_freeze_after 1",
            "--model", "bmshj2018-factorized-small", "--steps", "2", "--batch_size", "2", "--patch_size", "32",
            "--val_patch_size", "32", "--val_every", "1", "--recon_every", "0", "--train_dataset", str(train),
            "--test_dataset", str(test)]
    assert compare.main(argv) == 0
    runs = tmp_path / "cmp"
    first = torch.load(runs / "relu/seed0/lambda_0.1.stage1/last.pt", weights_only=True)
    second = torch.load(runs / "relu/seed0/lambda_0.1/last.pt", weights_only=True)
    assert first["args"]["train_scope"] == "replaced" and second["args"]["train_scope"] == "all"
    assert second["args"]["checkpoint"].endswith("lambda_0.1.stage1/last.pt") and second["step"] == 2
    distilled = torch.load(runs / "upsample/seed0/lambda_0.001.stage1/last.pt", weights_only=True)
    assert distilled["args"]["distill"] and distilled["args"]["lmbda"] != 0.001
    assert "teacher_ms_ssim" in (runs / "upsample/seed0/lambda_0.001.stage1/val_log.jsonl").read_text()
    quantised = torch.load(runs / "relu_qat/seed0/lambda_0.001/last.pt", weights_only=True)
    assert quantised["qat"] and quantised["args"]["checkpoint"] == str(runs / "relu/seed0/lambda_0.001/last.pt")
    summary = json.loads((runs / "summary.json").read_text())
    assert summary["arms"]["upsample"] == "--distill --decoder_upsample true --steps 1 --then --decoder_upsample true"
    assert {row["pair"] for row in summary["bd_per_seed"]} == {"relu vs gdn", "upsample vs gdn", "relu_qat vs gdn"}
    assert compare.main(argv) == 0


def test_the_arms_compared_at_fractions_of_their_budget(tmp_path):
    # A study whose runs keep their weights after step 1 of 3: baselines.budget evaluates each kept model (the same
    # numbers as evaluating that file directly), writes a bundle with statistics per kept step, and puts the steps
    # side by side with the final models (the study's own bundle, whose statistics it recomputes identically).
    from baselines import budget, stats
    from common.assembly import load_model
    from common.eval.evaluate import evaluate

    train, test = write_image_dirs(tmp_path, size=64, n_train=2, n_test=2)
    runs = tmp_path / "cmp"
    argv = ["--out_dir", str(runs), "--lambdas", "0.001,0.1", "--seeds", "0,1", "--anchors", "", "--jobs", "2",
            "--start_checkpoint", str(BASE), "--arm", "adam=--optimizer adam", "--arm", "cautious=--optimizer cautious_adam",
            "--model", "bmshj2018-factorized-small", "--steps", "3", "--batch_size", "2", "--patch_size", "32",
            "--val_patch_size", "32", "--val_every", "1", "--recon_every", "0", "--train_dataset", str(train),
            "--test_dataset", str(test)]
    assert compare.main([*argv, "--keep_steps", "1"]) == 0
    assert budget.main([str(runs), str(runs), "--eval_dataset", str(test), "--bootstrap", "0", "--jobs", "2"]) == 0
    document = json.loads((runs / "budget.json").read_text())
    assert document["steps"] == [1, 3] and document["total_steps"] == 3
    kept = runs / "cautious/seed1/lambda_0.1/checkpoints/step_00000001.pt"
    rows, aggregate = evaluate(load_model(checkpoint=str(kept)), sorted(test.iterdir()), root=test)
    step_curve = runs / "budget/step_00000001/curves/cautious_seed1.csv"
    with step_curve.open(newline="") as handle:
        written = [row for row in csv.DictReader(handle) if row["point"] == "lambda=0.1"]
    assert [float(row["bpp"]) for row in written] == pytest.approx([row["bpp"] for row in rows], rel=1e-12)
    first = next(row for row in document["rows"] if row["step"] == 1 and row.get("lambda") == 0.1
                 and row["arm"] == "cautious")
    final_stats = stats.analyse(runs, 0)
    final = next(row for row in document["rows"] if row["step"] == 3 and row.get("lambda") == 0.1
                 and row["arm"] == "cautious")
    expected = next(row for row in final_stats["points"] if row["arm"] == "cautious" and row["lambda"] == 0.1)
    assert final["psnr_mean"] == expected["psnr_mean"] and final["bpp_mean"] == expected["bpp_mean"]
    assert first["bpp_mean"] != final["bpp_mean"]
    assert json.loads((runs / "budget/step_00000001/stats.json").read_text())["reference"] == "adam"
    assert "| 1 (33.3333 %) | cautious |" in (runs / "budget.md").read_text()
    assert (runs / "budget.png").stat().st_size > 0
    shutil.rmtree(runs / "cautious/seed1/lambda_0.1/checkpoints")
    with pytest.raises(UserError, match=r"the runs kept different steps \(.*adam/seed0/lambda_0.001: \[1\], "
                                        r".*cautious/seed1/lambda_0.1: \[\]\)"):
        budget.main([str(runs), str(runs), "--eval_dataset", str(test)])
    shutil.rmtree(runs / "adam/seed0/lambda_0.001/checkpoints")
    with pytest.raises(UserError, match="adam/seed0/lambda_0.001 kept no weights along the way: train the study "
                                        "with --keep_steps"):
        budget.main([str(runs), str(runs), "--eval_dataset", str(test)])
