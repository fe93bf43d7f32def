"""Phase 3: hierarchical 5-task balancing on hpcm-tiny logs one weight per task, per-scale rates add up."""
from __future__ import annotations

import csv

from tests.helpers import run_script, write_image_dirs

TASKS = ("distortion", "rate_z", "rate_y_s1", "rate_y_s2", "rate_y_s3")


def test_hierarchical_run(tmp_path):
    train, test = write_image_dirs(tmp_path, size=64, n_train=2, n_test=1)
    variables = {"DATA": str(train), "TEST_DATA": str(test), "OUT": str(tmp_path / "runs"), "STEPS": "2",
                 "BATCH": "2"}
    result = run_script("phase3/run_hierarchical.sh", variables, "--num_workers", "0", "--progress", "false")
    assert result.returncode == 0, result.stderr[-2000:]
    with open(tmp_path / "runs/phase3/hierarchical/train_log.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for row in rows:
        weights = [float(row[f"weight_{task}"]) for task in TASKS]
        assert abs(sum(weights) - 1) < 1e-6
        scales = sum(float(row[key]) for key in ("bpp_z", "bpp_y_s1", "bpp_y_s2", "bpp_y_s3"))
        assert abs(scales - float(row["bpp_loss"])) < 1e-5 * max(1.0, float(row["bpp_loss"]))


def test_non_hpcm_model_is_refused(tmp_path):
    result = run_script("phase3/run_hierarchical.sh", {"MODEL": "bmshj2018-factorized", "OUT": str(tmp_path)})
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "needs an HPCM model" in result.stderr
