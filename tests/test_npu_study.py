"""Study 6's analysis: seed 001's distillation claim read from the logs, the claim verdicts, and the deployment
facts measured side by side from trained checkpoints."""
from __future__ import annotations

import json
import math

import pytest
import torch

from baselines import npu_claims
from benchmarks import npu_deploy
from common.checkpoint import atomic_save
from common.errors import UserError
from common.models import build
from common.replace import apply_config, make_config


def _write_stage(folder, rows):
    folder.mkdir(parents=True)
    with (folder / "val_log.jsonl").open("w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def test_the_distillation_claim_is_met_at_the_first_validation_that_meets_both_bounds(tmp_path):
    # Within 0.1 dB but MS-SSIM to the teacher below 0.995 does not count; both at step 30 does.
    rows = [{"step": 10, "val_psnr": 27.0, "val_teacher_psnr": 30.0, "val_teacher_ms_ssim": 0.90},
            {"step": 20, "val_psnr": 29.95, "val_teacher_psnr": 30.0, "val_teacher_ms_ssim": 0.994},
            {"step": 30, "val_psnr": 29.91, "val_teacher_psnr": 30.0, "val_teacher_ms_ssim": 0.995},
            {"step": 40, "val_psnr": 29.5, "val_teacher_psnr": 30.0, "val_teacher_ms_ssim": 0.99}]
    _write_stage(tmp_path / "upsample/seed0/lambda_0.01.stage1", rows)
    _write_stage(tmp_path / "upsample/seed1/lambda_0.01.stage1", rows[:1])
    met, never = npu_claims.distillation_rows(tmp_path)
    assert met["claim_met_at_step"] == 30 and met["final_gap_db"] == pytest.approx(-0.5)
    assert met["first_gap_db"] == pytest.approx(-3.0) and met["final_teacher_ms_ssim"] == 0.99
    assert never["claim_met_at_step"] is None and never["run"] == "upsample/seed1/lambda_0.01.stage1"
    with pytest.raises(UserError, match="no distillation stage"):
        npu_claims.distillation_rows(tmp_path / "nowhere")


@pytest.mark.parametrize("low, high, verdict", [(-0.1, 0.3, "kept"), (-0.5, -0.11, "lost"), (-0.5, 0.2, "inconclusive"),
                                                (math.nan, math.nan, "no value")])
def test_a_claim_is_kept_only_when_the_whole_interval_is_within_the_tolerance(low, high, verdict):
    assert npu_claims.kept_verdict(low, high) == verdict


def _checkpoint(path, replace):
    torch.manual_seed(0)
    model = apply_config(build("bmshj2018-factorized-tiny"), replace)
    model.update(force=True)
    path.parent.mkdir(parents=True)
    atomic_save({"format": "lic-toolkit/1", "model": {"name": "bmshj2018-factorized-tiny", "kwargs": {}},
                 "replace": replace, "qat": None, "state_dict": model.state_dict(), "step": 0, "epoch": 0}, path)


def test_deployment_facts_of_each_arm_side_by_side(tmp_path):
    _checkpoint(tmp_path / "gdn/seed0/lambda_0.01/last.pt", None)
    _checkpoint(tmp_path / "relu/seed0/lambda_0.01/last.pt", make_config("encoder", "relu"))
    checkpoints = npu_deploy.arm_checkpoints(tmp_path, 0, 0.01)
    assert list(checkpoints) == ["gdn", "relu"]
    arms = npu_deploy.measure_arms(checkpoints, 64, 32, repeats=2, threads=1, workdir=tmp_path)
    assert arms["gdn"]["decoder"]["latency_vs_gdn"] == 1.0
    assert arms["relu"]["encoder"]["outside_npu_set"] == [] and "Sqrt" in arms["gdn"]["encoder"]["outside_npu_set"]
    assert "ConvTranspose" in arms["relu"]["decoder"]["outside_npu_set"]
    for entry in arms.values():  # float graphs: onnxruntime reproduces PyTorch to float rounding
        assert entry["encoder"]["ok"] and entry["decoder"]["photo_max_abs_diff"] < 1e-4
        assert entry["decoder"]["photo_psnr_ort_vs_pytorch_db"] > 70  # an MSE under 1e-7
        assert entry["decoder"]["quantized_check"] is None
    table = npu_deploy.markdown({"seed": 0, "lambda": 0.01, "size": "64x32", "repeats": 2, "threads": 1,
                                 "machine": "here", "arms": arms})
    assert table.count("\n| gdn |") == 1 and "| relu | none | Concat, ConvTranspose" in table
    with pytest.raises(UserError, match="no gdn/seed1/lambda_0.01/last.pt"):
        npu_deploy.arm_checkpoints(tmp_path, 1, 0.01)
