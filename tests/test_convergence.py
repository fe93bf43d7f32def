"""The convergence verdict every run prints: the criterion itself, and where the engine validates for it."""
from __future__ import annotations

import json

import pytest

from common.train import convergence
from common.train.engine import Trainer
from tests.test_engine import image_dirs, train_args  # noqa: F401 - module fixture

TOTAL = 100


def rows(*values):
    """Validation rows from the window start (80) to the last step (100), from (psnr, bpp) pairs."""
    steps = [80, 90, 100] if len(values) == 3 else [80, 100]
    return [{"step": s, "val_psnr": p, "val_bpp_loss": b} for s, (p, b) in zip(steps, values)]


def test_window_starts_at_the_last_fifth():
    assert convergence.window_start(100) == 80 and convergence.window_start(10) == 8
    assert convergence.window_start(3) == 2 and convergence.window_start(1) == 0


@pytest.mark.parametrize("values,converged", [
    (((30.00, 0.500), (30.05, 0.502), (30.09, 0.503)), True),   # spread 0.09 dB and 0.6 %
    (((30.00, 0.500), (30.15, 0.500), (30.05, 0.500)), False),  # ends 0.05 dB apart, but the window spans 0.15
    (((30.00, 0.500), (30.05, 0.500), (29.88, 0.500)), False),  # spread 0.17 dB
    (((30.00, 0.500), (30.01, 0.503), (30.02, 0.506)), False),  # bpp spans 1.2 % of its final value
    (((30.00, 0.500), (30.00, 0.506), (30.00, 0.500)), False),  # back where it started, 1.2 % away in between
])
def test_criterion_judges_the_whole_window(values, converged):
    verdict = convergence.assess(rows(*values), TOTAL)
    assert verdict.converged is converged and verdict.validations == 3
    assert verdict.psnr_change_db == pytest.approx(values[-1][0] - values[0][0])
    assert verdict.psnr_spread_db == pytest.approx(max(p for p, _ in values) - min(p for p, _ in values))
    assert verdict.bpp_change_relative == pytest.approx((values[-1][1] - values[0][1]) / values[-1][1])
    assert ("NOT settled" in verdict.summary()) is not converged


@pytest.mark.parametrize("lr_in_window, what", [(0.05, "settled at the end of the schedule (lr at most 5.0 %"),
                                                (0.5, "settled with the lr up to 50 % of its peak")])
def test_the_verdict_names_the_learning_rate_in_its_window(lr_in_window, what):
    train_rows = [{"step": step, "lr": 1e-3 if step < 80 else 1e-3 * lr_in_window} for step in range(1, 101)]
    verdict = convergence.assess(rows((30.0, 0.5), (30.0, 0.5)), TOTAL, train_rows)
    assert verdict.lr_window_fraction == pytest.approx(lr_in_window) and what in verdict.summary()


def test_rows_before_the_window_do_not_count_and_two_validations_are_needed():
    early = [{"step": 50, "val_psnr": 10.0, "val_bpp_loss": 9.0}]
    assert convergence.assess(early + rows((30.0, 0.5), (30.0, 0.5)), TOTAL).converged
    missing_start = [{"step": 100, "val_psnr": 30.0, "val_bpp_loss": 0.5}]
    verdict = convergence.assess(early + missing_start, TOTAL)
    assert not verdict.converged and verdict.psnr_change_db is None and "not assessed" in verdict.summary()


def test_losses_without_a_rate_are_judged_on_psnr():
    plain = [{"step": 80, "val_psnr": 30.0}, {"step": 100, "val_psnr": 30.05}]
    verdict = convergence.assess(plain, TOTAL)
    assert verdict.converged and verdict.bpp_change_relative is None


def test_engine_validates_at_the_window_start_and_writes_the_verdict(image_dirs, tmp_path, capsys):  # noqa: F811
    # 6 images at batch 2: 3 steps an epoch; every 2nd epoch validates (steps 6, 12); the window of a 14-step run
    # starts at step 11 (mid-epoch) and the last step is always validated.
    trainer = Trainer(train_args(image_dirs, tmp_path, "--steps", "14", "--val_every", "2"))
    trainer.fit()
    steps = [row["step"] for row in trainer.val_log.rows()]
    assert steps == [6, 11, 12, 14]
    saved = json.loads((tmp_path / "convergence.json").read_text())
    assert saved == trainer.convergence.to_dict() and saved["window_start"] == 11 and saved["validations"] == 3
    assert convergence.assess(trainer.val_log.rows(), 14, trainer.train_log.rows()).to_dict() == saved
    assert 0 < saved["lr_window_fraction"] <= 1
    assert trainer.convergence.summary() in capsys.readouterr().out


def test_no_double_validation_when_an_epoch_ends_at_the_window_start(image_dirs, tmp_path):  # noqa: F811
    trainer = Trainer(train_args(image_dirs, tmp_path, "--steps", "15", "--val_every", "1"))
    trainer.fit()
    assert [row["step"] for row in trainer.val_log.rows()] == [3, 6, 9, 12, 15]
