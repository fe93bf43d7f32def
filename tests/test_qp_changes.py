"""baselines.qp_changes: the per-run table of QP weights and predicted vs realised log-loss changes."""
import csv

import pytest

from baselines import qp_changes
from common.errors import UserError


def test_summary_of_a_logged_run(tmp_path):
    rows = [{"step": step, "weight_distortion": w, "weight_rate": 1 - w, "pred_dlog_distortion": pd,
             "pred_dlog_rate": pr, "real_dlog_distortion": rd, "real_dlog_rate": rr}
            for step, (w, pd, pr, rd, rr) in enumerate([(0.1, -2e-3, -1e-3, -1e-3, 5e-4),
                                                         (0.2, -4e-3, -1e-3, -3e-3, -2e-3),
                                                         (0.3, -6e-3, -2e-3, -5e-3, 1e-3)], start=1)]
    with (tmp_path / "train_log.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = qp_changes.run_summary(tmp_path)
    assert summary["weight_distortion_median"] == pytest.approx(0.2)
    assert summary["pred_distortion_median"] == pytest.approx(-4e-3)
    assert summary["real_rate_median"] == pytest.approx(5e-4)
    assert summary["sign_agree_distortion_%"] == pytest.approx(100.0)
    assert summary["sign_agree_rate_%"] == pytest.approx(100 / 3)
    assert summary["pred_ratio_median"] == pytest.approx(3.0)  # medians of 2, 4, 3


def test_a_run_without_tracked_changes_is_one_line(tmp_path):
    (tmp_path / "train_log.csv").write_text("step,weight_distortion\n1,0.5\n")
    with pytest.raises(UserError, match="--qp_track_changes true"):
        qp_changes.run_summary(tmp_path)
