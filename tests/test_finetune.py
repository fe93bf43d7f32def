"""Seed 004's fine-tuning tools: parameter groups, group learning rates, freezing, progressive unfreezing,
per-scale task-weight stopping and the --finetune restart."""
from __future__ import annotations

import math
import re
import shlex

import pytest
import torch

from balanced_rd import Balanced
from common import models
from common.checkpoint import load_file
from common.errors import UserError
from common.train import finetune
from common.train.engine import Callback, Trainer
from common.train.options import parse_config
from tests.helpers import REPO, write_image_dirs

EXPECTED_GROUPS = {
    "hpcm-base": {"analysis", "synthesis", "hyper", "context", "entropy"},
    "hpcm-tiny": {"analysis", "synthesis", "hyper", "context", "entropy"},
    "bmshj2018-factorized": {"analysis", "synthesis", "entropy"},
    "mbt2018-mean": {"analysis", "synthesis", "hyper", "entropy"},
    "elic2022-official": {"analysis", "synthesis", "hyper", "context", "entropy"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED_GROUPS))
def test_every_parameter_is_in_exactly_one_nonempty_group(name, capsys):
    finetune.main([name])  # the listing a user reads; printed with -s
    listing = capsys.readouterr().out
    model = models.build(name)
    groups = finetune.named_groups(model)
    assert set(groups) == EXPECTED_GROUPS[name], listing
    assert all(groups.values()), listing
    names = [n for members in groups.values() for n in members]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())  # each once, none left over
    if name.startswith("hpcm"):
        # Seed 004's substring "context" caught only context_net; the real context model is much more.
        assert any(n.startswith("y_spatial_prior") for n in groups["context"])
        assert any(n.startswith("attn_s") for n in groups["context"])
        assert set(groups["entropy"]) == {"means_hyper", "scales_hyper"}


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    return write_image_dirs(tmp_path_factory.mktemp("images"), size=64, n_train=6, n_test=2)


def config(image_dirs, save_dir, *extra, model="bmshj2018-factorized-tiny", patch="32"):
    train, test = image_dirs
    return parse_config([
        "--model", model, "--train_dataset", str(train), "--test_dataset", str(test), "--patch_size", patch,
        "--batch_size", "2", "--lr", "1e-3", "--save_dir", str(save_dir), "--recon_every", "0",
        "--progress", "false", "--seed", "1", "--num_workers", "0", *extra])


def weights(model, prefix):
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith(prefix)}


def same(a, b):
    return all(torch.equal(a[n], b[n]) for n in a)


class Snapshot(Callback):
    """Copies the weights under ``prefix`` before step ``at``."""

    def __init__(self, prefix, at):
        self.prefix, self.at, self.taken = prefix, at, None

    def on_step_start(self, trainer):
        if trainer.progress.step == self.at:
            self.taken = weights(trainer.model, self.prefix)


def test_group_lr_sets_each_groups_rate_through_the_schedule(image_dirs, tmp_path):
    trainer = Trainer(config(image_dirs, tmp_path, "--steps", "4", "--sched", "cosine",
                             "--group_lr", "synthesis=0", "entropy=0.5"))
    start = weights(trainer.model, "g_")
    by_name = {group["name"]: group for group in trainer.optimizer.param_groups}
    assert by_name["entropy"]["lr"] == pytest.approx(5e-4) and by_name["analysis"]["lr"] == pytest.approx(1e-3)
    trainer.fit()
    end = weights(trainer.model, "g_")
    assert same({n: start[n] for n in start if n.startswith("g_s")}, end)  # multiplier 0: untouched
    assert not same({n: start[n] for n in start if n.startswith("g_a")}, end)
    # The cosine schedule scales every group alike: the ratio of the multipliers survives.
    assert by_name["entropy"]["lr"] / by_name["analysis"]["lr"] == pytest.approx(0.5)


def test_context_lr_ratio_is_the_context_groups_multiplier(image_dirs, tmp_path):
    trainer = Trainer(config(image_dirs, tmp_path, "--steps", "1", "--context_lr_ratio", "0.1",
                             model="hpcm-tiny", patch="64"))
    by_name = {group["name"]: group for group in trainer.optimizer.param_groups}
    assert by_name["context"]["lr"] == pytest.approx(1e-4) and by_name["hyper"]["lr"] == pytest.approx(1e-3)
    assert sum(len(g["params"]) for g in trainer.optimizer.param_groups) == len(list(trainer.model.parameters()))


def test_freeze_entropy_keeps_the_entropy_model_and_its_quantiles(image_dirs, tmp_path):
    trainer = Trainer(config(image_dirs, tmp_path, "--steps", "3", "--freeze_entropy"))
    start = weights(trainer.model, "entropy_bottleneck")
    assert any(n.endswith("quantiles") for n in start) and trainer.aux_optimizer is None
    analysis = weights(trainer.model, "g_a")
    trainer.fit()
    assert same(start, weights(trainer.model, "entropy_bottleneck"))
    assert not same(analysis, weights(trainer.model, "g_a"))


def test_unfreeze_at_trains_a_group_from_its_epoch_on(image_dirs, tmp_path):
    # 6 training images at batch 2: 3 steps per epoch; synthesis is frozen in epoch 0 and trains in epoch 1.
    snapshot = Snapshot("g_s", at=3)
    trainer = Trainer(config(image_dirs, tmp_path, "--steps", "6", "--unfreeze_at", "synthesis=1"),
                      callbacks=[snapshot])
    start = weights(trainer.model, "g_s")
    trainer.fit()
    assert same(start, snapshot.taken)
    assert not same(start, weights(trainer.model, "g_s"))


def test_progressive_unfreeze_is_seed_004s_schedule():
    cfg = parse_config(["--progressive_unfreeze"]).tune
    assert finetune.unfreeze_epochs(cfg, ["analysis", "synthesis", "hyper", "context", "entropy"]) == {
        "hyper": 100, "context": 200}
    with pytest.raises(UserError, match="does not have"):
        finetune.unfreeze_epochs(cfg, ["analysis", "synthesis", "entropy"])


def test_frozen_task_weights_stay_put_and_survive_a_state_dict_round_trip():
    param = torch.nn.Parameter(torch.zeros(3))
    opt = Balanced([param], lr=1e-2, n_tasks=3, w_lr=0.1, task_names=["d", "a", "b"])
    rng = torch.Generator().manual_seed(0)

    def step():
        param.grad = torch.randn(3, generator=rng)
        opt.weighted_loss(torch.rand(3, generator=rng) + 0.5)
        opt.step()
        opt.update_task_weights(torch.rand(3, generator=rng) + 0.5)

    for _ in range(5):
        step()
    opt.freeze_tasks([1])
    frozen_weight = float(opt.task_weights[1])
    before_free = opt.task_weights[[0, 2]].clone()
    for _ in range(20):
        step()
    # Exact in real arithmetic; float32 softmax/logsumexp rounding over 20 steps stays within a few ulp.
    assert float(opt.task_weights[1]) == pytest.approx(frozen_weight, rel=1e-5)
    assert not torch.allclose(opt.task_weights[[0, 2]], before_free)
    assert opt.frozen_task_names() == ["a"]
    again = Balanced([param], lr=1e-2, n_tasks=3, task_names=["d", "a", "b"])
    again.load_state_dict(opt.state_dict())
    assert again.frozen_task_names() == ["a"]
    with pytest.raises(ValueError, match="every task weight"):
        opt.freeze_tasks([0, 2])


def test_a_scale_plateaus_when_its_rate_stays_in_the_band_for_the_patience():
    stopper = finetune.ScaleEarlyStopping(patience=4, tol=0.01)
    rows = [{"epoch": e, "val_bpp_y_s1": v} for e, v in enumerate([0.30, 0.20, 0.1000, 0.1004, 0.0998, 0.1001, 0.1002])]
    assert not stopper.plateaued(rows[:3], "bpp_y_s1", 2)  # too short a history
    assert not stopper.plateaued(rows[:5], "bpp_y_s1", 4)  # the window still holds 0.20
    assert stopper.plateaued(rows, "bpp_y_s1", 6)
    assert not finetune.ScaleEarlyStopping(patience=4, tol=0.001).plateaued(rows, "bpp_y_s1", 6)


def test_scale_early_stopping_freezes_scale_weights_in_a_hierarchical_run(image_dirs, tmp_path):
    # A band of 1000 % makes every scale plateau as soon as two validations span the patience of 1 epoch.
    trainer = Trainer(config(image_dirs, tmp_path, "--steps", "9", "--val_every", "1", "--use_balanced",
                             "--hierarchical_tasks", "true", "--scale_early_stopping",
                             "--early_stopping_patience", "1", "--early_stopping_tol", "10",
                             model="hpcm-tiny", patch="64"))
    trainer.fit()
    saved = load_file(tmp_path / "last.pt")["optimizer"]["famo"]
    assert saved["frozen"] == [False, False, True, True, True]


def test_finetune_restarts_the_epoch_counter_and_schedule(image_dirs, tmp_path):
    Trainer(config(image_dirs, tmp_path / "base", "--steps", "6")).fit()
    base = str(tmp_path / "base" / "last.pt")
    trainer = Trainer(config(image_dirs, tmp_path / "ft", "--steps", "3", "--checkpoint", base, "--finetune",
                             "--finetune_lr", "5e-4", "--lr", "5e-4"))
    assert trainer.progress.step == 0 and trainer.optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)
    trainer.fit()
    assert load_file(tmp_path / "ft" / "last.pt")["progress"]["step"] == 3


@pytest.mark.parametrize("flags, message", [
    (("--finetune",), "add --checkpoint"),
    (("--group_lr", "decoder=0.1"), "GROUP=VALUE with GROUP one of"),
    (("--group_lr", "synthesis=fast"), "is not a float"),
    (("--context_lr_ratio", "0.1"), "no context model"),
    (("--scale_early_stopping",), "--hierarchical_tasks true"),
    (("--early_stopping_patience", "5"), "options of --scale_early_stopping"),
    (("--progressive_unfreeze", "--unfreeze_at", "synthesis=1"), "give one of them"),
])
def test_fine_tuning_flags_refuse_what_they_cannot_do(image_dirs, tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        Trainer(config(image_dirs, tmp_path, "--steps", "1", *flags))


def test_finetune_refuses_a_second_learning_rate(image_dirs, tmp_path):
    Trainer(config(image_dirs, tmp_path / "base", "--steps", "1")).fit()
    with pytest.raises(UserError, match="--finetune trains at --finetune_lr"):
        Trainer(config(image_dirs, tmp_path / "ft", "--checkpoint", str(tmp_path / "base" / "last.pt"),
                       "--finetune"))
    assert math.isclose(parse_config(["--finetune"]).tune.finetune_lr, 1e-5)


def readme_seed_004_commands() -> list[str]:
    """The toolkit commands of the README's seed-command rows marked (004)."""
    commands = []
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("| ") and "(004" in line.split(" | ")[0]:
            here = line.split(" | ")[1]
            commands.append(re.search(r"`(python -m common\.train [^`]+)`", here).group(1))
    return commands


def test_readme_seed_004_commands_run_at_a_tiny_size(image_dirs, tmp_path):
    commands = readme_seed_004_commands()
    assert len(commands) == 6
    Trainer(config(image_dirs, tmp_path / "base", "--steps", "1", model="hpcm-tiny", patch="64")).fit()
    train, test = image_dirs
    for index, command in enumerate(commands):
        argv = shlex.split(command.replace("BASE.pt", str(tmp_path / "base" / "last.pt")))[3:]
        argv = [{"D": str(train), "T": str(test)}.get(arg, arg) for arg in argv]
        # The same flags on the tiny model and data: later flags win.
        argv += ["--model", "hpcm-tiny", "--patch_size", "64", "--steps", "2", "--batch_size", "2",
                 "--num_workers", "0", "--progress", "false", "--recon_every", "0",
                 "--save_dir", str(tmp_path / f"run{index}")]
        Trainer(parse_config(argv)).fit()
        assert load_file(tmp_path / f"run{index}" / "last.pt")["progress"]["step"] == 2, command
