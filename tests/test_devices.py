"""Paths that differ between CPU and GPU: mixed precision with Balanced R-D, FP32 regions, bitstreams coded on one
device and decoded on the other, DDP over NCCL. Each test runs on the CPU here and on CUDA where a GPU exists
(``make gpu-check`` runs the CUDA cases and prints the throughput table)."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from common.models import build
from common.train.engine import Trainer
from common.train.options import parse_config
from tests.helpers import REPO, write_image_dirs

HAS_CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device"))]


@pytest.fixture(scope="module")
def image_dirs(tmp_path_factory):
    return write_image_dirs(tmp_path_factory.mktemp("images"), size=64, n_train=4, n_test=1)


def run(image_dirs, save_dir, device, *extra):
    train, test = image_dirs
    trainer = Trainer(parse_config([
        "--model", "bmshj2018-factorized-tiny", "--train_dataset", str(train), "--test_dataset", str(test),
        "--patch_size", "32", "--batch_size", "2", "--steps", "4", "--lr", "1e-3", "--device", device,
        "--save_dir", str(save_dir), "--recon_every", "0", "--progress", "false", "--num_workers", "0", *extra]))
    start = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    val = trainer.fit()
    moved = sum(not torch.equal(start[n], p.detach()) for n, p in trainer.model.named_parameters())
    return trainer, val, moved / len(start)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_mixed_precision_training_with_balanced(image_dirs, tmp_path, device, dtype):
    trainer, val, moved = run(image_dirs, tmp_path, device, "--amp", "true", "--amp_dtype", dtype, "--use_balanced")
    assert trainer.scaler.is_enabled() == (dtype == "fp16")  # GradScaler only where fp16 needs it
    assert math.isfinite(val["loss"]) and moved > 0.5
    weights = trainer.optimizer.task_weights
    assert torch.isfinite(weights).all() and float(weights.sum()) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_fp32_regions_under_autocast(image_dirs, tmp_path, device):
    trainer, val, moved = run(image_dirs, tmp_path, device, "--amp", "true", "--amp_dtype", "bf16",
                              "--local_fp32", "entropy+decoder")
    assert math.isfinite(val["loss"]) and moved > 0.5


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
@pytest.mark.parametrize("name", ["bmshj2018-factorized", "hpcm-tiny"])
@pytest.mark.parametrize("coder, decoder", [("cuda", "cpu"), ("cpu", "cuda")])
def test_bitstreams_decode_on_the_other_device(name, coder, decoder):
    torch.manual_seed(0)
    model = build(name, **({"quality": 1} if name == "bmshj2018-factorized" else {})).eval()
    model.update(force=True)
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        there = model.to(coder).compress(x.to(coder))
        reference = model.decompress(there["strings"], there["shape"])["x_hat"].cpu()
        decoded = model.to(decoder).decompress(there["strings"], there["shape"])["x_hat"].cpu()
        again = model.compress(x.to(decoder))
    # Same symbols: the reconstructions differ only by the two devices' float arithmetic in the synthesis.
    torch.testing.assert_close(decoded, reference, rtol=0, atol=1e-4)
    assert again["strings"] == there["strings"], "the two devices wrote different bitstreams"


@pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device")
def test_torchrun_ddp_over_nccl(image_dirs, tmp_path):
    train, test = image_dirs
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1", "-m", "common.train",
               "--model", "bmshj2018-factorized-tiny", "--train_dataset", str(train), "--test_dataset", str(test),
               "--patch_size", "32", "--batch_size", "2", "--steps", "3", "--device", "cuda", "--use_balanced",
               "--save_dir", str(tmp_path / "run"), "--recon_every", "0", "--progress", "false", "--num_workers", "0"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "last.pt").is_file()


def test_gpu_check_runs_its_measurements_on_the_cpu(capsys):
    from benchmarks.gpu_check import main

    assert main(["--device", "cpu", "--smoke"]) == 0
    table = capsys.readouterr().out.split("gpu check")[-1]
    for row in ("bmshj2018 q1", "hpcm-tiny", "Balanced / Adam step", "from scratch, Adam", "from scratch, Balanced"):
        assert row in table, row
