"""Small fixtures shared by the unit tests and the phase tests."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def smooth_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth random colour image (low-frequency noise, upsampled), closer to a photo than white noise."""
    coarse = rng.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((size, size), Image.BICUBIC))


def write_image_dirs(root: Path, size: int, n_train: int, n_test: int, seed: int = 0) -> tuple[Path, Path]:
    """``root/train`` and ``root/test`` filled with PNGs of ``smooth_image``."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("test", n_test)):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(smooth_image(rng, size)).save(root / split / f"{i}.png")
    return root / "train", root / "test"


def run_script(script: str, env_overrides: dict[str, str], *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a repo shell script with the test interpreter and extra environment."""
    # One thread per script, like the in-process tests (see conftest.py).
    env = dict(os.environ, PY=sys.executable, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **env_overrides)
    return subprocess.run(["bash", str(REPO / script), *args], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=timeout)
