"""Timing helpers shared by the codec benchmarks."""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from PIL import Image

from common.data.images import to_tensor
from common.data.samples import SAMPLES


def parse_size(text: str) -> tuple[int, int]:
    """'768x512' -> (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be WIDTHxHEIGHT, got {text!r}") from None
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"width and height must be positive, got {text!r}")
    return width, height


def photo(width: int, height: int) -> torch.Tensor:
    """The embedded 'coffee' photo resized to width x height, as a 1x3xHxW tensor in [0, 1]."""
    image = Image.fromarray(SAMPLES["coffee"]()).resize((width, height), Image.BICUBIC)
    return to_tensor(image).unsqueeze(0)


def median_time(fn, repeats: int, device: torch.device) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after one warm-up (CUDA-synchronised)."""
    times = []
    for i in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    return statistics.median(times)
