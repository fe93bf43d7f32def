"""Gamma schedules (formulas at chosen epochs), CLI flags and builders, task-weight plot."""
import csv
import math

import pytest
import torch
from PIL import Image
from torch import nn

from balanced_rd import Balanced, BalancedQP, make_gamma_schedule
from balanced_rd.gamma import AdaptiveGamma
from common.train.optimizers import build_gamma_schedule, build_optimizer, check_flags, step_options
from common.train.options import parse_config
from common.train.plots import plot_task_weights
from common.errors import UserError


def make_opt(gamma=0.01, n_tasks=2):
    return Balanced([nn.Parameter(torch.zeros(1))], lr=1e-3, n_tasks=n_tasks, gamma=gamma)


def walk(schedule, epochs):
    values = {0: schedule.optimizer.gamma}
    for epoch in range(1, max(epochs) + 1):
        values[epoch] = schedule.step()
    return [values[e] for e in epochs]


def test_constant_linear_cosine_formulas():
    assert walk(make_gamma_schedule("constant", make_opt()), [0, 7]) == [0.01, 0.01]
    linear = walk(make_gamma_schedule("linear", make_opt(), total_epochs=12, warmup_epochs=2), [0, 2, 7, 12, 15])
    assert linear == pytest.approx([0.01, 0.01, 0.006, 0.002, 0.002])
    cosine = walk(make_gamma_schedule("cosine", make_opt(), total_epochs=10, final_ratio=0.5), [0, 5, 10, 11])
    expected_mid = 0.01 * (0.5 + 0.5 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine == pytest.approx([0.01, expected_mid, 0.005, 0.005])


def test_follow_scales_gamma_by_the_lr_factor_it_is_given_whatever_the_epoch():
    schedule = make_gamma_schedule("follow", make_opt(torch.tensor([0.01, 0.03])))
    assert schedule.follow(0.1) == pytest.approx(torch.tensor([0.001, 0.003]))
    assert schedule.step() == pytest.approx(torch.tensor([0.001, 0.003]))  # an epoch ends: the factor stays
    assert schedule.follow(1.0) == pytest.approx(torch.tensor([0.01, 0.03]))
    with pytest.raises(UserError, match="--gamma_final_ratio is not used by the follow gamma schedule"):
        check_flags(parse_config(["--use_balanced", "--gamma_strategy", "follow", "--gamma_final_ratio", "0"]).optim)


def test_trainer_scales_w_lr_and_gamma_with_the_lr_schedule_when_told_to_follow(tmp_path):
    # Study 1's schedule in small: the lr drops ×0.1 at step 3 and ×0.01 at step 5, and both the logits' step
    # and their decay must drop with it, every step (not at epoch ends).
    from common.train.callbacks import Callback
    from common.train.engine import Trainer
    from tests.helpers import write_image_dirs

    class Record(Callback):
        def __init__(self):
            self.rows = []

        def on_step_end(self, trainer, row):
            self.rows.append((row["lr"], trainer.optimizer.w_lr, trainer.optimizer.gamma))

    train, test = write_image_dirs(tmp_path / "images", size=32, n_train=4, n_test=1)
    record = Record()
    Trainer(parse_config([
        "--model", "bmshj2018-factorized-tiny", "--train_dataset", str(train), "--test_dataset", str(test),
        "--patch_size", "32", "--batch_size", "2", "--steps", "6", "--lr", "1e-3", "--sched", "multistep",
        "--lr_milestones", "3", "5", "--lr_factors", "0.1", "0.01", "--lr_milestone_unit", "step",
        "--save_dir", str(tmp_path / "run"), "--recon_every", "0", "--progress", "false", "--num_workers", "0",
        "--optimizer", "balanced", "--gamma", "0.03", "--w_lr", "0.025", "--w_lr_sched", "follow",
        "--gamma_strategy", "follow"]), callbacks=[record]).fit()
    lrs = [lr for lr, _, _ in record.rows]
    assert lrs == pytest.approx([1e-3] * 3 + [1e-4] * 2 + [1e-5])
    for lr, w_lr, gamma in record.rows:
        assert w_lr == pytest.approx(0.025 * lr / 1e-3) and gamma == pytest.approx(0.03 * lr / 1e-3)


def test_step_and_hpcm_formulas():
    step = walk(make_gamma_schedule("step", make_opt(), milestones=[2, 4, 6], step_factor=0.5), [0, 1, 2, 4, 6, 9])
    assert step == pytest.approx([0.01, 0.01, 0.005, 0.0025, 0.002, 0.002])  # floored at 0.2 * gamma0
    schedule = make_gamma_schedule("hpcm", make_opt(0.006))
    values = {}
    for epoch in range(1, 3001):
        gamma = schedule.step()
        if epoch in (499, 500, 1499, 1500, 2750, 3000):
            values[epoch] = gamma
    assert list(values.values()) == pytest.approx([0.006, 0.003, 0.003, 0.0015, 0.00075, 0.00075])
    floored = make_gamma_schedule("hpcm", make_opt(0.0015))
    floored.epoch = 2999
    assert floored.step() == pytest.approx(0.0005)


def test_adaptive_reacts_to_validation_variability():
    calm = make_gamma_schedule("adaptive", make_opt(), total_epochs=100, cv_window=5)
    for _ in range(4):
        gamma = calm.step(val_loss=1.0)
    assert gamma == pytest.approx(0.01 * calm.cosine_factor(4) * 0.8)
    noisy = make_gamma_schedule("adaptive", make_opt(), total_epochs=100, cv_window=5)
    for value in (1.0, 2.0, 1.0, 2.0):
        gamma = noisy.step(val_loss=value)
    assert noisy.variation() == pytest.approx(1 / 3)
    assert gamma == pytest.approx(min(noisy.cosine_factor(4) * 1.2, 1.5) * 0.01)
    late = make_gamma_schedule("adaptive", make_opt(), total_epochs=4, cv_window=5)
    for _ in range(4):
        gamma = late.step(val_loss=1.0)
    assert gamma == pytest.approx(0.2 * 0.01)  # 0.8 * 0.2 clipped up to the floor
    restored = AdaptiveGamma(make_opt(), total_epochs=100, cv_window=5)
    restored.load_state_dict(noisy.state_dict())
    assert restored.epoch == 4 and restored.optimizer.gamma == pytest.approx(noisy.optimizer.gamma)


def test_per_task_gamma_vector_is_scheduled_elementwise():
    opt = make_opt([0.008, 0.006, 0.004], n_tasks=3)
    schedule = make_gamma_schedule("linear", opt, total_epochs=10, final_ratio=0.5)
    for _ in range(10):
        schedule.step()
    torch.testing.assert_close(opt.gamma, torch.tensor([0.004, 0.003, 0.002]))
    step = make_gamma_schedule("step", make_opt([0.008, 0.001], n_tasks=2), milestones=[1], min_gamma=0.002)
    torch.testing.assert_close(step.step(), torch.tensor([0.004, 0.002]))


def test_schedule_errors():
    with pytest.raises(ValueError, match="unknown gamma strategy"):
        make_gamma_schedule("exponential", make_opt())
    with pytest.raises(ValueError, match="total epochs"):
        make_gamma_schedule("cosine", make_opt())
    with pytest.raises(ValueError, match="Balanced"):
        make_gamma_schedule("constant", torch.optim.Adam([nn.Parameter(torch.zeros(1))]))


def parse(argv):
    return parse_config(list(argv)).optim


def build(params, args, n_tasks=2, lr=1e-4):
    check_flags(args)
    optimizer, _ = build_optimizer(params, args, n_tasks, lr)
    return optimizer


def test_cli_builds_each_optimizer():
    params = [nn.Parameter(torch.zeros(3))]
    assert type(build(params, parse([]))) is torch.optim.Adam
    assert build_optimizer(params, parse(["--optimizer", "balanced_qp"]), 2, 1e-4)[1] == "qp"
    opt = build(params, parse(["--use_balanced", "--gamma", "0.001", "--w_lr", "0.05",
                               "--max_mask_scale", "none", "--cautious", "false"]))
    assert isinstance(opt, Balanced) and opt.gamma == 0.001 and opt.w_lr == 0.05
    assert opt.param_groups[0]["max_mask_scale"] is None and opt.param_groups[0]["cautious"] is False
    assert opt.param_groups[0]["lr"] == 1e-4
    five = build(params, parse(["--optimizer", "balanced", "--gamma", "0.008", "0.008", "0.006", "0.006",
                                "0.004", "--min_losses", "-1"]), 5)
    torch.testing.assert_close(five.gamma, torch.tensor([0.008, 0.008, 0.006, 0.006, 0.004]))
    prior = build(params, parse(["--use_balanced", "--prior_weights", "0.75", "0.25"]))
    torch.testing.assert_close(prior.task_weights, torch.tensor([0.75, 0.25]))
    qp = build(params, parse(["--optimizer", "balanced_qp", "--qp_eps", "1e-4"]), lr=5e-5)
    assert isinstance(qp, BalancedQP) and qp.qp_eps == 1e-4 and qp.param_groups[0]["lr"] == 5e-5
    for conflicting in ("balanced_qp", "adam", "adamw"):
        with pytest.raises(UserError, match="conflicts"):
            build(params, parse(["--optimizer", conflicting, "--use_balanced", "true"]))
    with pytest.raises(UserError, match="^--optimizer balanced: gamma has 3 values"):
        build(params, parse(["--use_balanced", "--gamma", "0.1", "0.2", "0.3"]))


@pytest.mark.parametrize("argv, message", [
    (["--gamma", "0.01"], "--gamma is an option of --optimizer balanced, not of --optimizer adam"),
    (["--optimizer", "adamw", "--w_lr_sched", "follow"], "--w_lr_sched is an option of --optimizer balanced, not"),
    (["--optimizer", "balanced_qp", "--prior_weights", "0.7", "0.3"], "--prior_weights is an option of --optimizer "
                                                                         "balanced, not of --optimizer balanced_qp"),
    (["--use_balanced", "--qp_eps", "1e-3"], "--qp_eps is an option of --optimizer balanced_qp, not"),
    (["--optimizer", "adam", "--min_losses", "0"], "--min_losses is an option of --optimizer balanced or balanced_qp"),
    (["--use_balanced", "--gamma_milestones", "5"], "--gamma_milestones is not used by the constant gamma schedule"),
    (["--use_balanced", "--gamma_strategy", "cosine", "--gamma_cv_window", "9"], "adaptive"),
])
def test_flag_the_chosen_optimizer_ignores_is_refused(argv, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        check_flags(parse(argv))


def test_flags_of_the_chosen_variant_are_accepted():
    for argv in (["--use_balanced", "--gamma_strategy", "step", "--gamma_milestones", "5", "--gamma_min", "0.001"],
                 ["--optimizer", "balanced_qp", "--qp_eps", "1e-3", "--min_losses", "-2"],
                 ["--optimizer", "adamw", "--weight_decay", "0.01"]):
        check_flags(parse(argv))


def test_cli_gamma_schedule_and_step_options():
    params = [nn.Parameter(torch.zeros(3))]
    args = parse(["--use_balanced", "--adaptive_gamma"])
    schedule = build_gamma_schedule(args, build(params, args), total_epochs=20)
    assert type(schedule).__name__ == "CosineGamma" and schedule.total_epochs == 20
    args = parse(["--use_balanced", "--gamma_strategy", "hpcm", "--gamma", "0.006"])
    assert type(build_gamma_schedule(args, build(params, args))).__name__ == "StepGamma"
    args = parse(["--gamma_strategy", "cosine"])
    with pytest.raises(UserError, match="balanced"):
        build_gamma_schedule(args, build_optimizer(params, args, 2, 1e-4)[0])
    assert build_gamma_schedule(parse([]), torch.optim.Adam(params)) is None
    assert step_options(parse(["--weight_update_every", "4", "--delta_subset", "2"])) == dict(
        weight_update_every=4, delta_subset=2, share_noise=False)
    args = parse([])
    args.weight_update_every = 0  # the flag itself refuses 0; the library checks what programs pass
    with pytest.raises(UserError, match="weight_update_every"):
        step_options(args)


def test_cli_bad_value_is_one_line_error(capsys):
    with pytest.raises(SystemExit) as exc:
        parse(["--gamma_strategy", "bogus"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_plot_task_weights(tmp_path):
    csv_path = tmp_path / "log.csv"
    opt = make_opt()
    with csv_path.open("w", newline="") as handle:
        writer = None
        for step in range(20):
            opt.weighted_loss(torch.tensor([1.0, 1.0]))
            opt.step()
            opt.update_task_weights(torch.tensor([0.99, 0.9]))
            row = {"step": step, **opt.task_weight_dict()}
            if writer is None:
                writer = csv.DictWriter(handle, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
    png = plot_task_weights(csv_path, tmp_path / "plots" / "weights.png", title="toy")
    with Image.open(png) as image:
        assert image.size[0] > 100 and image.size[1] > 100
    with pytest.raises(UserError, match="not found"):
        plot_task_weights(tmp_path / "missing.csv", tmp_path / "x.png")
    (tmp_path / "bad.csv").write_text("step,loss\n0,1.0\n")
    with pytest.raises(UserError, match="weight_"):
        plot_task_weights(tmp_path / "bad.csv", tmp_path / "x.png")


def test_seed_004_per_scale_gammas_fill_the_hierarchical_gamma_vector():
    params = [nn.Parameter(torch.zeros(3))]
    five = build(params, parse(["--use_balanced", "--gamma", "0.003", "--gamma_s1", "0.01", "--gamma_s3", "0.002"]), 5)
    torch.testing.assert_close(five.gamma, torch.tensor([0.003, 0.003, 0.01, 0.006, 0.002]))  # s2: seed default
    with pytest.raises(UserError, match="--hierarchical_tasks true"):
        build(params, parse(["--use_balanced", "--gamma_s1", "0.01"]), 2)
    with pytest.raises(UserError, match="per-task --gamma"):
        build(params, parse(["--use_balanced", "--gamma", *["0.003"] * 5, "--gamma_s1", "0.01"]), 5)
    with pytest.raises(UserError, match="--gamma_s2 is an option of --optimizer balanced, not of --optimizer adam"):
        check_flags(parse(["--gamma_s2", "0.01"]))


def test_hierarchical_gamma_is_seed_004s_four_stage_schedule():
    # Seed 004's values at these epochs of a 3000-epoch run, computed by running its ScaleGammaManager
    # (../shared/spec/seed_repo_review.md); distortion and z keep their gamma.
    opt = make_opt([0.003, 0.002, 0.008, 0.006, 0.004], n_tasks=5)
    schedule = make_gamma_schedule("hierarchical", opt, total_epochs=3000)
    expected = {0: (0.008, 0.0048, 0.0024), 300: (0.0096, 0.0048, 0.0024), 1500: (0.0072, 0.0066, 0.0040),
                2500: (0.0056, 0.0048, 0.0044), 2999: (0.0040, 0.0030, 0.0052)}
    seen = {0: opt.gamma.clone()}
    for epoch in range(1, 3000):
        gamma = schedule.step()
        if epoch in expected:
            seen[epoch] = gamma.clone()
    for epoch, scales in expected.items():
        torch.testing.assert_close(seen[epoch][:2], torch.tensor([0.003, 0.002]))
        # The review rounds 2999 to 2 significant digits; the others are exact knots.
        torch.testing.assert_close(seen[epoch][2:], torch.tensor(scales), rtol=2e-3 if epoch == 2999 else 1e-6, atol=0)
    # A shorter run keeps the shape: the knots sit at the same fractions of the run.
    short = make_gamma_schedule("hierarchical", make_opt([0.003, 0.002, 0.008, 0.006, 0.004], n_tasks=5),
                                total_epochs=30)
    for _ in range(15):
        gamma = short.step()
    torch.testing.assert_close(gamma[2:], torch.tensor([0.0072, 0.0066, 0.0040]))
    with pytest.raises(ValueError, match="5 hierarchical tasks"):
        make_gamma_schedule("hierarchical", make_opt(), total_epochs=30)


def test_scale_adaptive_gamma_follows_each_scales_rate_variability():
    opt = make_opt([0.003, 0.003, 0.008, 0.006, 0.004], n_tasks=5)
    schedule = make_gamma_schedule("scale_adaptive", opt, cv_window=3)
    rates = [(0.10, 0.20, 0.30), (0.10, 0.30, 0.31), (0.10, 0.20, 0.32), (0.10, 0.30, 0.31)]
    schedule.step()  # an epoch without validation changes nothing
    for rate in rates:
        gamma = schedule.step(scale_rates=rate)
    # s1 constant (CV 0 < 0.01): x0.95 twice; s2 alternating (CV > 0.05): x1.02 twice; s3 (CV 0.01-0.05): x1.
    torch.testing.assert_close(gamma, torch.tensor([0.003, 0.003, 0.008 * 0.95**2, 0.006 * 1.02**2, 0.004]))
    again = make_gamma_schedule("scale_adaptive", make_opt([0.003, 0.003, 0.008, 0.006, 0.004], n_tasks=5),
                                cv_window=3)
    again.load_state_dict(schedule.state_dict())
    torch.testing.assert_close(again.optimizer.gamma, gamma)


def test_scale_weights_are_the_prior_of_the_y_scales():
    config = parse_config(["--use_balanced", "--hierarchical_tasks", "true", "--scale_weights", "0.3", "0.4", "0.3"])
    opt, _ = build_optimizer([nn.Parameter(torch.zeros(1))], config.optim, n_tasks=5, lr=1e-3)
    torch.testing.assert_close(opt.task_weights, torch.tensor([0.2, 0.2, 0.18, 0.24, 0.18]))
    with pytest.raises(UserError, match="--hierarchical_tasks true"):
        build_optimizer([nn.Parameter(torch.zeros(1))], config.optim, n_tasks=2, lr=1e-3)


@pytest.mark.parametrize("strategy", ["hierarchical", "scale_adaptive"])
def test_per_scale_gamma_strategies_run_in_a_hierarchical_training(tmp_path, strategy):
    from common.train.engine import Trainer
    from tests.helpers import write_image_dirs

    train, test = write_image_dirs(tmp_path / "images", size=64, n_train=4, n_test=1)
    extra = ["--gamma_cv_window", "2"] if strategy == "scale_adaptive" else []
    trainer = Trainer(parse_config([
        "--model", "hpcm-tiny", "--train_dataset", str(train), "--test_dataset", str(test), "--patch_size", "64",
        "--batch_size", "2", "--steps", "6", "--val_every", "1", "--save_dir", str(tmp_path / "run"),
        "--recon_every", "0", "--progress", "false", "--num_workers", "0", "--use_balanced",
        "--hierarchical_tasks", "true", "--gamma_s1", "0.008", "--gamma_strategy", strategy, *extra]))
    trainer.fit()
    gamma = trainer.optimizer.gamma
    assert gamma.shape == (5,) and torch.equal(gamma[:2], torch.tensor([0.003, 0.003]))
    if strategy == "scale_adaptive":  # three validations of each scale's real rate reached the schedule
        assert all(len(history) == 2 for history in trainer.gamma_schedule.history)
    else:  # 3 epochs of 3: the last knot
        torch.testing.assert_close(gamma[2:], torch.tensor([0.008 * 0.5, 0.006 * 0.5, 0.004 * 1.3]))
