"""Training recipes as the references run them: the MS-SSIM R-D objective, the multi-step lr schedule."""
from __future__ import annotations

import pytest
import torch
from compressai.losses import RateDistortionLoss as CompressAIRateDistortionLoss

from baselines.sweep import sweep_lambdas
from common import losses
from common.checkpoint import load_file
from common.errors import UserError
from common.train import recipes
from common.train.config import LossConfig
from common.train.engine import Callback, Trainer
from common.train.options import parse_config
from tests.helpers import write_image_dirs


def test_ms_ssim_objective_equals_compressais_metric_ms_ssim():
    # 192 px: five MS-SSIM scales, so both sides run pytorch-msssim on the same tensors.
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, 192, 192, generator=generator)
    x_hat = (target + 0.05 * torch.randn(target.shape, generator=generator)).requires_grad_()  # a little outside [0, 1]
    output = {"x_hat": x_hat, "likelihoods": {"y": torch.rand(2, 8, 12, 12, generator=generator) * 0.9 + 0.05}}
    ours = losses.criterion_from_args(LossConfig(loss_type="ms-ssim", lmbda=8.73))(output, target)
    theirs = CompressAIRateDistortionLoss(lmbda=8.73, metric="ms-ssim")(output, target)
    # Both run pytorch-msssim; we average per-image values, CompressAI lets it average, so MS-SSIM (about 0.99)
    # may differ by a few float32 ulp of 1 (2^-24 each), which λ·(1 − MS-SSIM) scales by λ.
    ulps = 4 * 2.0**-24
    torch.testing.assert_close(ours["ms_ssim_loss"], theirs["ms_ssim_loss"], rtol=0, atol=ulps)
    torch.testing.assert_close(ours["loss"], theirs["loss"], rtol=0, atol=8.73 * ulps + ulps)
    ours["loss"].backward()
    assert x_hat.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    return write_image_dirs(tmp_path_factory.mktemp("images"), size=64, n_train=4, n_test=1)


def config(image_dirs, save_dir, *extra):
    train, test = image_dirs
    return parse_config(["--model", "bmshj2018-factorized-tiny", "--train_dataset", str(train), "--test_dataset",
                         str(test), "--patch_size", "32", "--batch_size", "2", "--lr", "1e-3", "--save_dir",
                         str(save_dir), "--recon_every", "0", "--progress", "false", "--num_workers", "0", *extra])


class LrLog(Callback):
    def __init__(self):
        self.lrs = []

    def on_step_start(self, trainer):
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("unit, expected", [
    # 4 images at batch 2: 2 steps per epoch; milestones at epochs 1 and 2.
    ("epoch", [1e-3, 1e-3, 3e-4, 3e-4, 1e-5, 1e-5]),
    ("step", [1e-3, 3e-4, 1e-5, 1e-5, 1e-5, 1e-5]),
])
def test_multistep_schedule_drops_the_lr_at_its_milestones(image_dirs, tmp_path, unit, expected):
    log = LrLog()
    Trainer(config(image_dirs, tmp_path, "--steps", "6", "--sched", "multistep", "--lr_milestones", "1", "2",
                   "--lr_factors", "0.3", "0.01", "--lr_milestone_unit", unit), callbacks=[log]).fit()
    assert log.lrs == pytest.approx(expected, rel=1e-12)


def test_multistep_resume_is_bit_exact(image_dirs, tmp_path):
    flags = ("--steps", "6", "--sched", "multistep", "--lr_milestones", "1", "2", "--lr_factors", "0.3", "0.01",
             "--save_every_steps", "1")

    class Crash(Callback):
        def on_step_start(self, trainer):
            if trainer.progress.step == 3:
                raise KeyboardInterrupt

    Trainer(config(image_dirs, tmp_path / "a", *flags)).fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(config(image_dirs, tmp_path / "b", *flags), callbacks=[Crash()]).fit()
    Trainer(config(image_dirs, tmp_path / "b", *flags, "--resume")).fit()
    a, b = load_file(tmp_path / "a" / "last.pt"), load_file(tmp_path / "b" / "last.pt")
    assert all(torch.equal(value, b["state_dict"][key]) for key, value in a["state_dict"].items())


@pytest.mark.parametrize("flags, message", [
    (("--sched", "multistep"), "needs --lr_milestones"),
    (("--sched", "multistep", "--lr_milestones", "2", "1", "--lr_factors", "0.3", "0.1"), "must increase"),
    (("--lr_milestones", "2"), "belong to --sched multistep"),
])
def test_multistep_refuses_an_incomplete_schedule(image_dirs, tmp_path, flags, message):
    with pytest.raises(UserError, match=message):
        Trainer(config(image_dirs, tmp_path, "--steps", "1", *flags))


PUBLISHED_LADDERS = {"mse": (0.0018, 0.0035, 0.0067, 0.013, 0.025, 0.0483),
                     "ms-ssim": (2.4, 4.58, 8.73, 16.64, 31.73, 60.5)}


@pytest.mark.parametrize("name", recipes.available())
def test_each_recipe_is_a_published_ladder_whose_flags_train(image_dirs, tmp_path, name):
    recipe = recipes.load_recipe(name, set(parse_config([]).flat()))
    config = parse_config(["--recipe", name])
    assert recipe.lambdas == PUBLISHED_LADDERS[config.loss.loss_type]
    assert {key: config.flat()[key] for key in recipe.flags} == recipe.flags
    assert sweep_lambdas(None, config) == list(recipe.lambdas)
    assert sweep_lambdas("0.01", config) == [0.01]
    # Every flag of the recipe passes the engine's checks; the model, data and length are shrunk to run here.
    train, test = image_dirs
    small = {"hpcm-base": ["--model", "hpcm-tiny"], "elic2022-official": []}.get(config.model.model, ["--quality", "1"])
    argv = ["--recipe", name, *small, "--train_dataset", str(train), "--test_dataset", str(test),
            "--patch_size", "64", "--batch_size", "2", "--steps", "1",
            "--save_dir", str(tmp_path), "--recon_every", "0", "--progress", "false", "--num_workers", "0"]
    Trainer(parse_config(argv)).fit()
    assert load_file(tmp_path / "last.pt")["args"]["recipe"] == name


def test_a_bad_recipe_is_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[flags]\nlearning_rate = 1e-4\n')
    with pytest.raises(UserError, match="unknown flag"):
        parse_config(["--recipe", str(bad)])
    with pytest.raises(UserError, match="the recipes are"):
        parse_config(["--recipe", "no-such-recipe"])
