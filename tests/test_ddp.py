"""Two gloo processes under torchrun end with identical parameters (no silent rank drift)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_ddp(tmp_path: Path, *extra: str) -> tuple[dict[int, dict[str, torch.Tensor]], str]:
    data = tmp_path / "train"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(data / f"{i}.png")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(REPO / "tests" / "ddp_worker.py"), str(tmp_path),
           "--model", "bmshj2018-factorized-tiny", "--train_dataset", str(data), "--test_dataset", str(data),
           "--patch_size", "32", "--batch_size", "2",
           "--steps", "3", "--lr", "1e-3", "--save_dir", str(tmp_path / "run"), "--recon_every", "0",
           "--progress", "false", "--device", "cpu", "--num_workers", "0", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=240)
    assert (tmp_path / "rank0.pt").exists() and (tmp_path / "rank1.pt").exists(), result.stderr[-3000:]
    return {r: torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)}, result.stdout


def assert_identical(states):
    assert states[0].keys() == states[1].keys()
    for name in states[0]:
        assert torch.equal(states[0][name], states[1][name]), name


@pytest.mark.parametrize("optimizer", ["adam", "balanced"])
def test_ranks_stay_identical(tmp_path, optimizer):
    states, stdout = run_ddp(tmp_path, "--optimizer", optimizer)
    assert_identical(states)
    # The run really trained: most parameters moved on both ranks.
    assert states[0]["__moved__"].float().mean() > 0.5
    assert stdout.count("data: training on") == 1, stdout  # rank 0 alone reports
