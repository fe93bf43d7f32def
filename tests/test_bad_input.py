"""Mistakes and faults a careful user meets: each is one clear line before the work is spent, never a traceback,
never a wrong result. (Each case here gave a traceback, silent garbage or lost work before it was handled.)"""
from __future__ import annotations

import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from common import checkpoint as ckpt_io
from common.errors import UserError
from common.train.engine import Trainer, TrainingDiverged
from tests.helpers import REPO, smooth_image
from tests.test_engine import CrashAfter, image_dirs, train_args  # noqa: F401 - module fixture

UNWRITABLE = Path("/sys/lic-toolkit-test")  # sysfs: no file can be created there, not even by root


def _unwritable_or_skip() -> Path:
    try:
        UNWRITABLE.mkdir()
    except OSError:
        return UNWRITABLE
    UNWRITABLE.rmdir()
    pytest.skip("this machine lets /sys be written")


def _bomb_png(path: Path, side: int = 20000) -> Path:
    """A PNG whose header claims side x side pixels (the pixel data is absent): what a decompression bomb shows."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def _argparse_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


# ------------------------------------------------------------------------------------------ output locations
def test_train_save_dir_below_a_file(image_dirs, tmp_path):  # noqa: F811
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="--save_dir cannot be written: .*file/run: Not a directory"):
        Trainer(train_args(image_dirs, tmp_path / "file" / "run", "--steps", "1"))


def test_train_save_dir_that_cannot_be_created(image_dirs):  # noqa: F811
    where = _unwritable_or_skip() / "run"
    with pytest.raises(UserError, match=f"--save_dir cannot be written: {where}"):
        Trainer(train_args(image_dirs, where, "--steps", "1"))


def test_eval_output_is_checked_before_evaluating(tmp_path):
    from common.eval.__main__ import main

    base = ["--model", "bmshj2018-factorized", "--checkpoint", str(tmp_path / "missing.pt"), "--dataset",
            str(tmp_path)]
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(UserError, match="--output .*folder.json is a folder"):
        main([*base, "--output", str(tmp_path / "folder.json")])
    with pytest.raises(UserError, match="--output must name a .json file"):
        main([*base, "--output", str(tmp_path / "res.csv")])
    with pytest.raises(UserError, match="cannot be written"):
        main([*base, "--output", str(_unwritable_or_skip() / "res.json")])


def test_export_rd_and_coco_prepare_outputs(tmp_path):
    from common.data.coco_prepare import main as coco_main
    from common.export.onnx import main as export_main
    from common.rd import main as rd_main

    where = _unwritable_or_skip()
    with pytest.raises(UserError, match="--out cannot be written"):
        export_main(["--ckpt", str(tmp_path / "missing.pt"), "--part", "full", "--out", str(where / "m.onnx")])
    with pytest.raises(UserError, match="--plot cannot be written"):
        rd_main(["--anchor", "missing.json", "--test", "missing.json", "--plot", str(where / "rd.png")])
    (tmp_path / "coco" / "train2017").mkdir(parents=True)
    (tmp_path / "out").write_text("a file")
    with pytest.raises(UserError, match="--out_dir .*out is a file, not a folder"):
        coco_main(["--coco_dir", str(tmp_path / "coco"), "--out_dir", str(tmp_path / "out")])
    with pytest.raises(UserError, match="--out_dir cannot be written"):
        coco_main(["--coco_dir", str(tmp_path / "coco"), "--out_dir", str(where / "crops")])


def test_a_full_disk_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    ckpt_io.atomic_save({"w": torch.ones(3)}, path)

    def full_disk(obj, handle):
        handle.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")

    import common.paths as paths

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(paths.shutil, "disk_usage", lambda folder: type("usage", (), {"free": 0})())
    with pytest.raises(UserError, match=r"cannot write .*last.pt \(.*file write failed\); no space left"):
        ckpt_io.atomic_save({"w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(ckpt_io.load_file(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_leftovers_of_killed_writes_are_removed_on_the_next_start(image_dirs, tmp_path):  # noqa: F811
    tmp_path.joinpath(".last.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    Trainer(train_args(image_dirs, tmp_path, "--steps", "1"))
    assert not list(tmp_path.glob(".*.tmp"))


# ------------------------------------------------------------------------------------------ flag values
@pytest.mark.parametrize("module,argv,message", [
    ("common.train.__main__", ["--lr", "nan"], "argument --lr: must be a finite number > 0, got 'nan'"),
    ("common.train.__main__", ["--lr", "-1e-3"], "argument --lr: must be a finite number > 0, got '-1e-3'"),
    ("common.train.__main__", ["--num_workers", "-1"], "must be an integer >= 0 and <= 256, got '-1'"),
    ("common.train.__main__", ["--ema_decay", "1"], "argument --ema_decay: must be a finite number >= 0 and < 1"),
    ("common.train.__main__", ["--qat_calib_steps", "-5"], "argument --qat_calib_steps: must be an integer >= 1, got '-5'"),
    ("common.train.__main__", ["--qat_freeze_after=-1"], "argument --qat_freeze_after: must be an integer >= 1, got '-1'"),
    ("common.export.onnx", ["--ckpt", "x", "--part", "full", "--out", "y.onnx", "--opset", "99"],
     "argument --opset: must be an integer >= 7 and <= 20, got '99'"),
    ("common.eval.__main__", ["--pad_multiple", "1000000000"],
     "argument --pad_multiple: must be an integer >= 1 and <= 4096, got '1000000000'"),
    ("common.export.onnx", ["--input_size", "10000000"],
     "argument --input_size: must be an integer >= 16 and <= 8192, got '10000000'"),
    ("common.search", ["--trials", "0"], "argument --trials: must be an integer >= 1, got '0'"),
    ("common.search", ["--trials=-3"], "argument --trials: must be an integer >= 1, got '-3'"),
])
def test_flag_values_are_checked_at_the_edge(module, argv, message, capsys):
    import importlib

    assert message in _argparse_error(importlib.import_module(module).main, argv, capsys)


# ------------------------------------------------------------------------------------------ inputs
@pytest.mark.parametrize("content", [b"step,loss\n1,0.5\n", bytes(np.random.default_rng(0).integers(0, 256, 4096,
                                                                                                     dtype=np.uint8))])
def test_a_file_that_is_no_checkpoint(tmp_path, content):
    path = tmp_path / "weights.pt"
    path.write_bytes(b"\x00" + content if content[:1] == b"\x80" else content)
    with pytest.raises(UserError, match="is not a PyTorch checkpoint") as caught:
        ckpt_io.load_file(path)
    assert "--trust_checkpoint" not in str(caught.value)


def test_decompression_bombs(image_dirs, tmp_path, capsys):  # noqa: F811
    from common.eval.__main__ import main as eval_main

    train, test = image_dirs
    folder = tmp_path / "train"
    folder.mkdir()
    for source in train.iterdir():
        (folder / source.name).write_bytes(source.read_bytes())
    _bomb_png(folder / "bomb.png")
    trainer = Trainer(train_args((folder, test), tmp_path / "run", "--steps", "1"))
    assert len(trainer.train_set) == len(list(train.iterdir()))  # skipped
    warned = capsys.readouterr().err
    assert "skipping image" in warned and "bomb.png" in warned and "--max_image_pixels" in warned
    trainer.fit()
    single = tmp_path / "eval"
    single.mkdir()
    _bomb_png(single / "bomb.png")
    with pytest.raises(UserError, match="larger than the pixel limit .*pass --max_image_pixels N"):
        eval_main(["--model", "bmshj2018-factorized-tiny", "--checkpoint", str(tmp_path / "run" / "last.pt"),
                   "--dataset", str(single), "--output", str(tmp_path / "r.json")])


def test_raising_the_pixel_limit_lets_a_large_image_through(tmp_path):
    from common.data.images import load_rgb, set_max_image_pixels

    path = tmp_path / "big.png"
    Image.fromarray(smooth_image(np.random.default_rng(0), 64)).save(path)
    try:
        set_max_image_pixels(1000)
        with pytest.raises(UserError, match="larger than the pixel limit of 1000 pixels"):
            load_rgb(path)
        set_max_image_pixels(64 * 64)
        assert load_rgb(path).size == (64, 64)
    finally:
        set_max_image_pixels(None)


@pytest.mark.parametrize("content,message", [
    ("{}", r"summary.json is not a study summary: it lacks arms, seeds, .*, machine; pass the --out_dir"),
    ("[]", r"summary.json holds a JSON list, not a study summary \(an object\)"),
])
def test_a_report_of_a_folder_that_is_no_study(tmp_path, content, message):
    from common.report import main as report_main

    (tmp_path / "study").mkdir()
    (tmp_path / "study" / "summary.json").write_text(content)
    with pytest.raises(UserError, match=message):
        report_main([str(tmp_path / "study"), "--out_dir", str(tmp_path / "reports")])


# ------------------------------------------------------------------------------------------ the wrong thing
def test_a_new_run_never_silently_replaces_an_existing_one(image_dirs, tmp_path):  # noqa: F811
    Trainer(train_args(image_dirs, tmp_path, "--steps", "1")).fit()
    with pytest.raises(UserError, match="already holds a run .*--resume or replace it with --overwrite"):
        Trainer(train_args(image_dirs, tmp_path, "--steps", "1"))
    Trainer(train_args(image_dirs, tmp_path, "--steps", "1", "--overwrite")).fit()


def test_only_a_finished_checkpoint_counts_as_a_finished_run(image_dirs, tmp_path):  # noqa: F811
    from baselines.sweep import finished

    with pytest.raises(KeyboardInterrupt):
        Trainer(train_args(image_dirs, tmp_path, "--epochs", "3", "--save_every_steps", "1"),
                callbacks=[CrashAfter(2)]).fit()
    assert (tmp_path / "last.pt").is_file() and not finished(tmp_path, None)
    Trainer(train_args(image_dirs, tmp_path, "--epochs", "3", "--resume")).fit()
    assert finished(tmp_path, None) and not finished(tmp_path, 100)


def test_resume_refuses_other_flags_and_refits_lr_and_length(image_dirs, tmp_path, capsys):  # noqa: F811
    flags = ("--sched", "cosine", "--batch_size", "6", "--lr", "1e-3")  # 6 images: one step an epoch
    Trainer(train_args(image_dirs, tmp_path, *flags, "--steps", "4")).fit()
    with pytest.raises(UserError, match=r"trained with --batch_size 6 \(now 3\)"):
        Trainer(train_args(image_dirs, tmp_path, *flags, "--steps", "8", "--batch_size", "3", "--resume"))
    trainer = Trainer(train_args(image_dirs, tmp_path, *flags, "--steps", "8", "--lr", "5e-4", "--resume"))
    assert "with --lr 0.0005 (was 0.001), --steps 8 (was 4)" in capsys.readouterr().out
    trainer.fit()
    # The cosine schedule now spans 8 epochs at the new lr: lr(step k) = 5e-4 * (1 + cos(pi * (k - 1) / 8)) / 2.
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    for row in rows[4:]:
        expected = 5e-4 * (1 + math.cos(math.pi * (row["step"] - 1) / 8)) / 2
        assert row["lr"] == pytest.approx(expected, rel=1e-12), row


def test_resume_refuses_a_run_shorter_than_what_it_trained(image_dirs, tmp_path):  # noqa: F811
    Trainer(train_args(image_dirs, tmp_path, "--steps", "6")).fit()
    before = (tmp_path / "last.pt").read_bytes()
    with pytest.raises(UserError, match=r"last.pt has trained 6 steps, more than the 3 of --steps 3; resume with a "
                                        r"longer run"):
        Trainer(train_args(image_dirs, tmp_path, "--steps", "3", "--resume"))
    assert (tmp_path / "last.pt").read_bytes() == before
    Trainer(train_args(image_dirs, tmp_path, "--steps", "6", "--resume")).fit()  # as long as it was: nothing to train


def test_the_quality_of_raw_weights_is_inferred(image_dirs, tmp_path):  # noqa: F811
    from compressai.models import FactorizedPrior

    from common.models.bmshj2018 import channels

    torch.save(FactorizedPrior(*channels(6)).state_dict(), tmp_path / "q6.pth")
    trainer = Trainer(train_args(image_dirs, tmp_path / "run", "--model", "bmshj2018-factorized", "--checkpoint",
                                 str(tmp_path / "q6.pth"), "--steps", "1"))
    assert trainer.model_kwargs == {"quality": 6}
    torch.save(FactorizedPrior(40, 56).state_dict(), tmp_path / "odd.pth")
    with pytest.raises(UserError, match="N=40, M=56, the channels of no quality 1-8"):
        Trainer(train_args(image_dirs, tmp_path / "run2", "--model", "bmshj2018-factorized", "--checkpoint",
                           str(tmp_path / "odd.pth"), "--steps", "1"))


def test_a_log_line_cut_by_a_kill_does_not_stop_a_resume(image_dirs, tmp_path):  # noqa: F811
    Trainer(train_args(image_dirs, tmp_path, "--steps", "3", "--save_every_steps", "1")).fit()
    for name in ("train_log.jsonl", "val_log.jsonl"):
        with open(tmp_path / name, "a") as handle:
            handle.write('{"step": 4, "lo')
    Trainer(train_args(image_dirs, tmp_path, "--steps", "5", "--resume")).fit()
    rows = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]


def test_divergence_before_any_checkpoint_says_there_is_none(image_dirs, tmp_path):  # noqa: F811
    trainer = Trainer(train_args(image_dirs, tmp_path, "--steps", "2", "--lr", "1e30"))
    with pytest.raises(TrainingDiverged, match="no checkpoint was written before it"):
        trainer.fit()


def test_non_finite_weights_are_never_saved_over_good_ones(image_dirs, tmp_path):  # noqa: F811
    trainer = Trainer(train_args(image_dirs, tmp_path, "--steps", "3", "--save_every_steps", "1"))
    trainer.save("last.pt")
    good = ckpt_io.load_file(tmp_path / "last.pt")["state_dict"]
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="weights became non-finite"):
        trainer.save("last.pt")
    kept = ckpt_io.load_file(tmp_path / "last.pt")["state_dict"]
    assert all(torch.equal(kept[key], good[key]) for key in good)


def test_a_checkpoint_with_non_finite_weights_is_refused_where_it_loads(image_dirs, tmp_path):  # noqa: F811
    import subprocess
    import sys

    Trainer(train_args(image_dirs, tmp_path / "run", "--steps", "4")).fit()
    checkpoint = ckpt_io.load_file(tmp_path / "run" / "last.pt")
    checkpoint["state_dict"]["g_a.0.weight"].fill_(float("nan"))
    torch.save(checkpoint, tmp_path / "run" / "last.pt")
    # eval used to code the NaN latents forever
    proc = subprocess.run([sys.executable, "-m", "common.eval", "--model", "bmshj2018-factorized-tiny", "--checkpoint",
                           str(tmp_path / "run" / "last.pt"), "--dataset", str(image_dirs[1]), "--output",
                           str(tmp_path / "r.json")], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and "non-finite values (NaN or inf) in g_a.0.weight" in proc.stderr
    for flags in (("--checkpoint", str(tmp_path / "run" / "last.pt")), ("--resume",)):
        folder = tmp_path / ("run" if "--resume" in flags else "new")
        with pytest.raises(UserError, match="non-finite values .* in g_a.0.weight"):
            Trainer(train_args(image_dirs, folder, "--steps", "8", *flags))


def test_a_weight_average_with_non_finite_values_is_refused_on_resume(image_dirs, tmp_path):  # noqa: F811
    Trainer(train_args(image_dirs, tmp_path, "--steps", "4", "--ema_decay", "0.9")).fit()
    checkpoint = ckpt_io.load_file(tmp_path / "last.pt")
    checkpoint["ema_state_dict"]["g_a.0.weight"].fill_(float("inf"))
    torch.save(checkpoint, tmp_path / "last.pt")
    with pytest.raises(UserError, match=r"\(its weight average\) holds non-finite values .* in g_a.0.weight"):
        Trainer(train_args(image_dirs, tmp_path, "--steps", "8", "--ema_decay", "0.9", "--resume"))


def test_a_latent_that_is_not_finite_is_refused_before_coding(image_dirs):  # noqa: F811
    from common.eval import evaluate
    from common.models import build

    model = build("bmshj2018-factorized-tiny")
    with torch.no_grad():
        model.g_a[0].weight.fill_(float("inf"))
    with pytest.raises(UserError, match=r"0.png: the latent y \(g_a output\) is not finite"):
        evaluate(model, sorted(image_dirs[1].iterdir()))


def test_a_diverging_search_trial_is_pruned_and_the_search_goes_on(image_dirs, tmp_path, monkeypatch):  # noqa: F811
    from common import search
    from common.train import engine

    train, test = image_dirs
    real_fit, calls = engine.Trainer.fit, []

    def fit(self):
        calls.append(self.cfg.schedule.lr)
        if len(calls) == 1:
            raise TrainingDiverged("training stopped at step 1: the loss is nan")
        return real_fit(self)

    monkeypatch.setattr(engine.Trainer, "fit", fit)
    assert search.main(["--space", "lr=choice:0.001,0.002", "--sampler", "grid", "--out_dir", str(tmp_path / "s"),
                        "--model", "bmshj2018-factorized-tiny", "--train_dataset", str(train), "--test_dataset",
                        str(test), "--patch_size", "32", "--batch_size", "2", "--steps", "1", "--num_workers", "0",
                        "--progress", "false"]) == 0
    table = (tmp_path / "s" / "trials.csv").read_text()
    assert len(calls) == 2 and "PRUNED" in table and "COMPLETE" in table


def _train_in_child(args):
    """Child process body: one training run; exit 0 when it finishes."""
    import os

    Trainer(args).fit()
    os._exit(0)


def test_kills_during_checkpoint_writes_then_resume_give_the_uninterrupted_weights(image_dirs, tmp_path):  # noqa: F811
    import multiprocessing
    import os
    import random
    import signal
    import time

    flags = ("--steps", "150", "--save_every_steps", "1", "--val_every", "10", "--sched", "cosine")
    reference = Trainer(train_args(image_dirs, tmp_path / "straight", *flags))
    reference.fit()
    run = tmp_path / "killed"
    context = multiprocessing.get_context("fork")  # a warm child: the kill lands within milliseconds of training
    rng, kills, steps_at_kill, deadline = random.Random(7), 0, [], time.monotonic() + 120
    while time.monotonic() < deadline:
        extra = ("--resume",) if (run / "last.pt").is_file() else ("--overwrite",)
        log = run / "train_log.jsonl"
        logged = len(log.read_text().splitlines()) if log.is_file() else 0
        child = context.Process(target=_train_in_child, args=(train_args(image_dirs, run, *flags, *extra),))
        child.start()
        if kills < 20:
            # Wait until the child trains (its start-up time depends on the machine and its load), then kill it
            # at a random moment: every step writes last.pt, so the kill often lands inside a checkpoint write.
            started = time.monotonic()
            while child.is_alive() and time.monotonic() - started < 30 and (
                    not log.is_file() or len(log.read_text().splitlines()) <= logged):
                time.sleep(0.005)
        child.join(timeout=rng.uniform(0.0, 0.3) if kills < 20 else 60)
        if child.exitcode == 0:
            break
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        kills += 1
        steps_at_kill.append(ckpt_io.load_file(run / "last.pt")["progress"]["step"] if (run / "last.pt").is_file()
                             else 0)
    assert kills >= 20, f"only {kills} kills in the time allowed"
    assert len(set(steps_at_kill)) >= 10, f"too few kills while training: checkpoints at {steps_at_kill}"
    assert child.exitcode == 0, "the run did not finish after the kills"
    straight, resumed = (ckpt_io.load_file(folder / "last.pt") for folder in (tmp_path / "straight", run))
    assert resumed["progress"]["step"] == 150
    for key, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key
    assert not list(run.glob(".*.tmp"))


@pytest.mark.parametrize("flags,message", [
    (("--distill_l1", "0"), "--distill_l1 is an option of --distill"),
    (("--distill_msssim", "1e30"), "--distill_msssim is an option of --distill"),
    (("--finetune_lr", "1e30"), "--finetune_lr is the learning rate of --finetune"),
])
def test_an_option_of_a_variant_not_chosen_is_refused(flags, message):
    # The bad-input sweep saw them accepted and ignored (README: such a flag is refused).
    from common.train.engine import check_config
    from common.train.options import parse_config

    with pytest.raises(UserError, match=message):
        check_config(parse_config(list(flags)))


def test_local_fp32_custom_is_refused_where_nothing_reads_it_or_it_names_nothing():
    # The sweep saw --local_fp32_custom NAME accepted and ignored without --local_fp32 custom.
    from common.train.engine import check_config
    from common.train.options import parse_config
    from common.train.precision import select_local_fp32_modules
    from common.models import build

    with pytest.raises(UserError, match="--local_fp32_custom is read only by --local_fp32 custom"):
        check_config(parse_config(["--local_fp32_custom", "Softmax"]))
    model = build("bmshj2018-factorized-tiny")
    with pytest.raises(UserError, match="matches no module class"):
        select_local_fp32_modules(model, "custom", "NoSuchLayer")
    assert select_local_fp32_modules(model, "custom", "EntropyBottleneck") == ["entropy_bottleneck"]


def test_a_report_of_a_bundle_with_a_non_finite_metric_names_the_point(tmp_path):
    import json
    import shutil

    from common.report import study_summary

    bundle = tmp_path / "bundle"
    shutil.copytree(REPO / "results" / "demo", bundle)
    summary = json.loads((bundle / "summary.json").read_text())
    summary["points"][1]["psnr-rgb"] = None  # a NaN metric, as json_safe writes it
    (bundle / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(UserError, match=r"seed 0, λ 0.0013 has psnr-rgb None, not a finite number"):
        study_summary(bundle)


def test_a_failed_run_stops_the_sweep_with_its_line_not_a_cancelled_future(tmp_path):
    from baselines.compare import train_all

    bad = ["--model", "no-such-model", "--save_dir"]
    jobs = [([[*bad, str(tmp_path / f"run{index}")]], tmp_path / f"run{index}", bad) for index in range(4)]
    with pytest.raises(UserError, match=r"training in .*run0 failed: .*no-such-model"):
        train_all([jobs], 1)
