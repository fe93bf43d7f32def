"""The training engine: bit-exact resume, checkpoints, logs, reconstructions, one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.checkpoint import load_file
from common.train.engine import Callback, Trainer
from common.train.options import parse_config
from tests.helpers import REPO, write_image_dirs


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    return write_image_dirs(tmp_path_factory.mktemp("images"), size=48, n_train=6, n_test=2)


def train_args(image_dirs, save_dir, *extra):
    train, test = image_dirs
    return parse_config([
        "--model", "bmshj2018-factorized-tiny", "--train_dataset", str(train), "--test_dataset", str(test),
        "--patch_size", "32",
        "--batch_size", "2", "--lr", "1e-3", "--save_dir", str(save_dir), "--recon_count", "2",
        "--progress", "false", "--seed", "3", "--num_workers", "0", *extra])


class CrashAfter(Callback):
    """Kills the run (like a killed job) once it has done ``steps`` steps."""

    def __init__(self, steps: int = 2):
        self.steps = steps

    def on_step_start(self, trainer):
        if trainer.progress.step == self.steps:
            raise KeyboardInterrupt


@pytest.mark.parametrize("extra", [(), ("--ema_decay", "0.9")], ids=["plain", "ema"])
def test_resume_is_bit_exact(image_dirs, tmp_path, extra):
    # 3 batches per epoch: the crashed run dies inside epoch 0 and resumes there, then crosses an epoch end
    # (validation, cosine step, best checkpoints) before finishing.
    flags = ("--steps", "5", "--sched", "cosine", "--save_every_steps", "1", *extra)
    straight = Trainer(train_args(image_dirs, tmp_path / "a", *flags)).fit()
    with pytest.raises(KeyboardInterrupt):
        Trainer(train_args(image_dirs, tmp_path / "b", *flags), callbacks=[CrashAfter()]).fit()
    resumed = Trainer(train_args(image_dirs, tmp_path / "b", *flags, "--resume")).fit()
    a = load_file(tmp_path / "a" / "last.pt")
    b = load_file(tmp_path / "b" / "last.pt")
    assert a["progress"] == b["progress"]
    for weights in ("state_dict", "ema_state_dict") if extra else ("state_dict",):
        for key, value in a[weights].items():
            assert torch.equal(value, b[weights][key]), (weights, key)
    assert straight == resumed
    assert (tmp_path / "a" / "train_log.csv").read_text() == (tmp_path / "b" / "train_log.csv").read_text()


def test_persistent_workers_train_exactly_like_the_main_process(image_dirs, tmp_path):
    # 7 steps cross two epoch ends: workers kept alive between epochs must still draw each epoch's crops.
    Trainer(train_args(image_dirs, tmp_path / "main", "--steps", "7")).fit()
    Trainer(train_args(image_dirs, tmp_path / "workers", "--steps", "7", "--num_workers", "2")).fit()
    main = load_file(tmp_path / "main" / "last.pt")["state_dict"]
    workers = load_file(tmp_path / "workers" / "last.pt")["state_dict"]
    assert all(torch.equal(value, workers[key]) for key, value in main.items())


def test_restarting_from_weights_is_not_a_resume(image_dirs, tmp_path):
    # Guards the test above: weights alone (no optimizer, RNG or data position) do not continue a run.
    Trainer(train_args(image_dirs, tmp_path / "a", "--steps", "4")).fit()
    Trainer(train_args(image_dirs, tmp_path / "b", "--steps", "2")).fit()
    Trainer(train_args(image_dirs, tmp_path / "b", "--steps", "4", "--checkpoint",
                       str(tmp_path / "b" / "last.pt"), "--overwrite")).fit()
    a = load_file(tmp_path / "a" / "last.pt")["state_dict"]
    b = load_file(tmp_path / "b" / "last.pt")["state_dict"]
    assert not torch.equal(a["g_a.0.weight"], b["g_a.0.weight"])


def test_run_outputs(image_dirs, tmp_path):
    run = tmp_path / "run"
    val = Trainer(train_args(image_dirs, run, "--epochs", "2", "--val_every", "1")).fit()
    for name in ("last.pt", "best_msssim.pt", "best_loss.pt", "train_log.csv", "train_log.jsonl",
                 "val_log.csv"):
        assert (run / name).is_file(), name
    for tag in ("origin", "pre_e000", "e000", "e001"):
        assert sorted(p.name for p in (run / "recon" / tag).iterdir()) == ["00000.png", "00001.png"]
    rows = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert all(np.isfinite(r["loss"]) for r in rows)
    assert set(val) >= {"loss", "psnr", "ms_ssim"}
    # last.pt is ready for real bitstreams: the CDF tables were built when the run ended.
    ckpt = load_file(run / "last.pt")
    assert ckpt["state_dict"]["entropy_bottleneck._quantized_cdf"].numel() > 0


def test_training_reduces_loss(image_dirs, tmp_path):
    Trainer(train_args(image_dirs, tmp_path, "--steps", "30", "--lr", "3e-3")).fit()
    losses = [json.loads(line)["loss"] for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_divergence_stops_with_one_line_and_keeps_checkpoint(image_dirs, tmp_path):
    Trainer(train_args(image_dirs, tmp_path, "--steps", "1")).fit()
    before = (tmp_path / "last.pt").read_bytes()
    args = train_args(image_dirs, tmp_path, "--steps", "3", "--resume", "--overflow_tol", "1e-3")
    with pytest.raises(Exception, match="overflow_tol"):
        Trainer(args).fit()
    assert (tmp_path / "last.pt").read_bytes() == before


def run_cli(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "common.train", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


@pytest.mark.parametrize("case", ["missing_dir", "empty_dir", "bad_quality", "bad_loss", "missing_ckpt",
                                  "truncated_ckpt", "resume_nothing"])
def test_user_mistakes_give_one_line(case, image_dirs, tmp_path):
    train, test = image_dirs
    common = ["--model", "bmshj2018-factorized-tiny", "--test_dataset", str(test), "--save_dir", str(tmp_path / "run"), "--steps", "1",
              "--patch_size", "32", "--batch_size", "2", "--progress", "false", "--num_workers", "0"]
    if case == "missing_dir":
        args = ["--train_dataset", str(tmp_path / "nope"), *common]
    elif case == "empty_dir":
        (tmp_path / "empty").mkdir()
        args = ["--train_dataset", str(tmp_path / "empty"), *common]
    elif case == "bad_quality":
        args = ["--train_dataset", str(train), *common, "--model", "bmshj2018-factorized", "--quality", "9"]
    elif case == "bad_loss":
        args = ["--train_dataset", str(train), "--loss_type", "nope", *common]
    elif case == "missing_ckpt":
        args = ["--train_dataset", str(train), "--checkpoint", str(tmp_path / "none.pt"), *common]
    elif case == "truncated_ckpt":
        good = tmp_path / "good.pt"
        torch.save({"w": torch.zeros(1000)}, good)
        (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:300])
        args = ["--train_dataset", str(train), "--checkpoint", str(tmp_path / "cut.pt"), *common]
    else:
        args = ["--train_dataset", str(train), "--resume", *common]
    result = run_cli(*args)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_worker_errors_reach_the_user_as_one_line(tmp_path):
    train = tmp_path / "train"
    write_image_dirs(tmp_path, size=48, n_train=4, n_test=1)
    # A valid header with truncated pixel data passes the start-up scan and fails in the worker.
    whole = (train / "0.png").read_bytes()
    (train / "broken.png").write_bytes(whole[:len(whole) // 2])
    result = run_cli("--model", "bmshj2018-factorized-tiny", "--train_dataset", str(train), "--test_dataset",
                     str(tmp_path / "test"), "--patch_size", "32", "--batch_size", "5", "--steps", "1",
                     "--strict", "true", "--num_workers", "1", "--save_dir", str(tmp_path / "run"),
                     "--progress", "false")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "broken.png" in lines[0]


def test_weight_average_is_the_runs_model(image_dirs, tmp_path):
    from common.assembly import load_model

    decay = 0.5
    trainer = Trainer(train_args(image_dirs, tmp_path, "--steps", "3", "--ema_decay", str(decay), "--lr", "1e-2"))
    snapshots = []
    original = trainer.train_step

    def recording_step(x):
        row = original(x)
        snapshots.append({name: p.detach().clone() for name, p in trainer.model.named_parameters()})
        return row

    trainer.train_step = recording_step
    val = trainer.fit()
    # By hand: the first step copies, then w_ema = d * w_ema + (1 - d) * w.
    expected = dict(snapshots[0])
    for snapshot in snapshots[1:]:
        expected = {name: decay * expected[name] + (1 - decay) * snapshot[name] for name in expected}
    ckpt = load_file(tmp_path / "last.pt")
    for name, value in expected.items():
        torch.testing.assert_close(ckpt["ema_state_dict"][name], value, rtol=0, atol=1e-7)  # float32 lerp vs a*x+b*y
        torch.testing.assert_close(ckpt["state_dict"][name], snapshots[-1][name], rtol=0, atol=0)
    assert ckpt["ema_updates"] == 3
    averaged, raw = load_model(checkpoint=str(tmp_path / "last.pt")), load_model(checkpoint=str(tmp_path / "last.pt"),
                                                                                 raw=True)
    assert torch.equal(averaged.g_a[0].weight, ckpt["ema_state_dict"]["g_a.0.weight"])
    assert torch.equal(raw.g_a[0].weight, ckpt["state_dict"]["g_a.0.weight"])
    # Validation judges the average and reports the raw weights beside it.
    assert val["psnr"] == trainer._validate(trainer.ema.module)["psnr"] and "raw_psnr" in val


def test_validation_follows_epochs_but_not_more_often_than_every_500_steps(image_dirs, tmp_path):
    # 6 images at batch 2: 3 steps an epoch, so by default every 167th epoch (501 steps) validates.
    trainer = Trainer(train_args(image_dirs, tmp_path, "--steps", "1"))
    assert trainer.val_every == 167 and trainer.recon_every == 167
    assert Trainer(train_args(image_dirs, tmp_path / "b", "--steps", "1", "--val_every", "2",
                              "--recon_every", "0")).recon_every == 0


def test_best_checkpoints_hold_the_model_only_and_share_one_file(image_dirs, tmp_path):
    Trainer(train_args(image_dirs, tmp_path, "--steps", "3")).fit()
    best_msssim, best_loss = tmp_path / "best_msssim.pt", tmp_path / "best_loss.pt"
    assert best_msssim.stat().st_ino == best_loss.stat().st_ino  # one validation improved both: one file
    best = load_file(best_msssim)
    assert "optimizer" not in best and "rng" not in best and best["state_dict"].keys() == \
        load_file(tmp_path / "last.pt")["state_dict"].keys()
    assert best_msssim.stat().st_size < 0.6 * (tmp_path / "last.pt").stat().st_size


def test_kept_checkpoints_and_the_run_readme(image_dirs, tmp_path):
    # 3 steps per epoch, validation every epoch and where the convergence window starts: steps 3, 6, 9, 10, 12.
    run = tmp_path / "run"
    Trainer(train_args(image_dirs, run, "--steps", "12", "--val_every", "1", "--keep_last", "2",
                       "--keep_best", "2")).fit()
    kept = run / "checkpoints"
    val = [json.loads(line) for line in (run / "val_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in val] == [3, 6, 9, 10, 12]
    assert sorted(p.name for p in kept.glob("last_step_*.pt")) == ["last_step_00000010.pt", "last_step_00000012.pt"]
    infos = {p.name: json.loads(p.read_text()) for p in kept.glob("*.json")}
    assert infos["last_step_00000012.json"]["step"] == 12 and infos["last_step_00000012.json"]["config"]["keep_last"] == 2
    best_two = sorted(val, key=lambda row: row["val_loss"])[:2]
    assert sorted(p.name for p in kept.glob("best_step_*.pt")) == sorted(
        f"best_step_{row['step']:08d}.pt" for row in best_two)
    for row in best_two:
        assert infos[f"best_step_{row['step']:08d}.json"]["metrics"]["loss"] == row["val_loss"]
    # A kept last-k checkpoint resumes; a best-k one holds weights only.
    assert "optimizer" in load_file(kept / "last_step_00000010.pt")
    assert "optimizer" not in load_file(next(kept.glob("best_step_*.pt")))
    readme = (run / "README.md").read_text()
    for listed in ("`last.pt`", "`best_loss.pt`", "`checkpoints`", "`convergence.json`", "`recon`", "`--keep_best`: `2`"):
        assert listed in readme, listed
    assert "task_weights.png" not in readme  # Adam: no such file, so not listed


def test_every_run_folder_has_a_receipt(image_dirs, tmp_path):
    import hashlib

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        Trainer(train_args(image_dirs, run, "--steps", "4", "--save_every_steps", "1"), callbacks=[CrashAfter()]).fit()
    Trainer(train_args(image_dirs, run, "--steps", "4", "--save_every_steps", "1", "--resume")).fit()
    receipt = json.loads((run / "receipt.json").read_text())
    assert receipt["config"]["steps"] == 4 and receipt["config"]["model"] == "bmshj2018-factorized-tiny"
    assert [session["from_step"] for session in receipt["sessions"]] == [0, 2]  # the resume opened a session
    for session in receipt["sessions"]:
        assert len(session["code"]["git_commit"]) == 40 or session["code"]["git_commit"] == "unknown"
        facts = session["machine"]
        assert facts["torch_cpu_capability"] and facts["cpu"] and facts["libraries"]["torch"] == torch.__version__
        assert facts["libraries"]["compressai"] and isinstance(facts["gpus"], list)
    train, test = image_dirs
    assert receipt["data"]["train"]["images"] == 6 and receipt["data"]["val"]["images"] == 2
    manifest = [line.split("\t") for line in (run / "data_manifest.tsv").read_text().splitlines()[1:]]
    assert hashlib.sha256((run / "data_manifest.tsv").read_bytes()).hexdigest() == receipt["data"]["manifest_sha256"]
    first = next(row for row in manifest if row[0] == "train")
    assert first[3] == hashlib.sha256(open(first[1], "rb").read()).hexdigest() and int(first[2]) > 0
    end = receipt["end"]
    assert end["steps"] == 4 and len(end["validation_bpp"]["images"]) == 2
    for image in end["validation_bpp"]["images"]:  # a real bitstream against the likelihood estimate
        assert image["bpp"] > 0 and image["bpp_estimated"] > 0
        assert image["gap_%"] == pytest.approx(100 * (image["bpp"] / image["bpp_estimated"] - 1))
    assert list(end["aux_loss"]) == ["entropy_bottleneck"] and end["aux_loss"]["entropy_bottleneck"] >= 0
    assert list(end["outside_quantiles_%"]) == ["entropy_bottleneck"]
    assert 0 <= end["outside_quantiles_%"]["entropy_bottleneck"] <= 100
    assert "`receipt.json`" in (run / "README.md").read_text()


def test_the_receipt_holds_uncommitted_changes_as_a_patch(tmp_path):
    from common.receipt import code_state

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "train.py").write_text("lr = 1e-3\n")
    git("add", "train.py")
    git("commit", "-q", "-m", "first")
    clean, patch = code_state(tmp_path)
    assert clean["dirty"] is False and patch == "" and len(clean["git_commit"]) == 40
    (tmp_path / "train.py").write_text("lr = 5e-4\n")
    (tmp_path / "notes.txt").write_text("untracked\n")
    dirty, patch = code_state(tmp_path)
    assert dirty["dirty"] is True and dirty["git_commit"] == clean["git_commit"] and dirty["untracked"] == ["notes.txt"]
    assert "-lr = 1e-3" in patch and "+lr = 5e-4" in patch
    assert code_state(tmp_path / "not-a-repo-folder")[0]["git_commit"] == "unknown"


class FakeWandbRun:
    id = "fake"

    def __init__(self):
        self.logged: list[tuple[int, dict]] = []

    def log(self, values, step):
        self.logged.append((step, values))

    def finish(self):
        pass


def test_wandb_gets_the_seeds_keys_task_weights_and_reconstruction_grids(image_dirs, tmp_path, monkeypatch):
    import wandb

    fake = FakeWandbRun()
    monkeypatch.setattr(wandb, "init", lambda **kwargs: fake)
    Trainer(train_args(image_dirs, tmp_path / "run", "--steps", "3", "--val_every", "1", "--wandb", "true", "--use_balanced",
                       "--loss_type", "rd")).fit()
    keys = {key for _, values in fake.logged for key in values}
    for key in ("train/rd/total", "train/rd/recon_total", "train/rd/l1", "train/rd/1-msssim", "train/rd/bpp",
                "train/msssim", "train/task_weights/distortion", "train/task_weights/rate", "train/lr",
                "val/psnr", "val/ms_ssim", "recon/pre_e000", "recon/e000"):
        assert key in keys, key
    step, first = next((step, values) for step, values in fake.logged if "train/rd/total" in values)
    assert first["train/rd/1-msssim"] == pytest.approx(1 - first["train/msssim"])
    # The grid: the 2 validation images over their 2 reconstructions (32 px each, 2 px padding).
    grid = next(values["recon/e000"] for _, values in fake.logged if "recon/e000" in values)
    assert grid.image.size == (2 + 2 * 34, 2 + 2 * 34)


class Killed(BaseException):
    """Stands for kill -9: nothing after it runs (not even ``finally`` blocks that catch Exception)."""


@pytest.mark.parametrize("point", ["after_final_validation", "after_epoch_row", "after_window_row"])
def test_logs_of_a_killed_and_resumed_run_equal_the_uninterrupted_run(image_dirs, tmp_path, monkeypatch, point):
    # kill -9 right after the last validation, then --resume, left val_log.csv with the last step twice (issue 28).
    # 3 batches per epoch, 5 steps: epoch validation at step 3, the convergence window's at step 4, the final at 5.
    from common.train import engine
    from common.train.logging import MetricsLog

    flags = ("--steps", "5", "--sched", "cosine", "--save_every_steps", "1", "--recon_every", "0", "--val_every", "1")
    Trainer(train_args(image_dirs, tmp_path / "a", *flags)).fit()
    kill_at = {"after_epoch_row": 3, "after_window_row": 4}.get(point)
    with monkeypatch.context() as patch:
        if kill_at is None:  # the final validation and its checkpoint are written; the finishing save is not
            def finish(self):
                raise Killed
            patch.setattr(engine.Trainer, "_finish", finish)
        else:  # the validation row is on disk, the checkpoint of that validation is not
            write = MetricsLog.write

            def write_then_die(self, row):
                write(self, row)
                if self.jsonl_path.name == "val_log.jsonl" and row["step"] == kill_at:
                    raise Killed
            patch.setattr(MetricsLog, "write", write_then_die)
        with pytest.raises(Killed):
            Trainer(train_args(image_dirs, tmp_path / "b", *flags)).fit()
    Trainer(train_args(image_dirs, tmp_path / "b", *flags, "--resume")).fit()
    for name in ("train_log.csv", "train_log.jsonl", "val_log.csv", "val_log.jsonl"):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name
