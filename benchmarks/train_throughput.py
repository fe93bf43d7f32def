"""Training throughput: our engine against a minimal plain-PyTorch loop doing the same work.

Both train bmshj2018-factorized (quality 1 size) on the embedded sample photos with the same dataset, crop,
batch, loss (λ·255²·MSE + bpp), Adam for the network, Adam for the quantiles (aux loss) and gradient
clipping. The two run alternately, ``--repeats`` times each, and the medians are compared; the engine's
end-of-epoch validation and checkpoint writes are timed separately and left out (the plain loop does none).

    python -m benchmarks.train_throughput [--steps 20] [--repeats 3] [--batch_size 8] [--patch_size 128]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader

import common.models as models
from common.models import is_aux_parameter
from common.data.datasets import ImageFileDataset
from common.data.images import list_images
from common.data.samples import sample_dirs
from common.train.engine import Callback, Trainer
from common.train.options import parse_config

LAMBDA = 0.013


def plain_loop(steps: int, batch_size: int, patch_size: int, seed: int) -> float:
    """Images per second of the textbook loop (CompressAI's examples/train.py, trimmed to the essentials)."""
    torch.manual_seed(seed)
    model = models.build("bmshj2018-factorized", quality=1).train()
    files = list_images(sample_dirs()[0])
    dataset = ImageFileDataset(files, patch_size, train=True, seed=seed)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=0)
    net_params = [p for n, p in model.named_parameters() if not is_aux_parameter(n)]
    aux_params = [p for n, p in model.named_parameters() if is_aux_parameter(n)]
    optimizer = torch.optim.Adam(net_params, lr=1e-4)
    aux_optimizer = torch.optim.Adam(aux_params, lr=1e-3)
    done, started = 0, None
    while done < steps + 1:
        for x in loader:
            if done == 1:  # the first step warms up allocators and is not counted
                started = time.perf_counter()
            optimizer.zero_grad()
            out = model(x)
            n, _, h, w = x.shape
            bpp = sum(torch.log(l).sum() for l in out["likelihoods"].values()) / (-torch.log(torch.tensor(2.0)) * n * h * w)
            loss = LAMBDA * 255**2 * torch.mean((out["x_hat"] - x) ** 2) + bpp
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net_params, 1.0)
            optimizer.step()
            aux_optimizer.zero_grad()
            model.aux_loss().backward()
            aux_optimizer.step()
            done += 1
            if done == steps + 1:
                break
    return steps * batch_size / (time.perf_counter() - started)


class StepTimer(Callback):
    """Times the engine's steps from the second on; end-of-epoch work (validation, checkpoints) is excluded."""

    def __init__(self):
        self.started: float | None = None
        self.excluded = 0.0
        self.elapsed = None

    def on_step_start(self, trainer):
        if trainer.progress.step == 1:  # same warm-up exclusion as the plain loop
            self.started = time.perf_counter()
            self.excluded = 0.0

    def on_step_end(self, trainer, row):
        if trainer.progress.step == trainer.total_steps:
            self.elapsed = time.perf_counter() - self.started - self.excluded

    def on_epoch_end(self, trainer, epoch, val, seconds):
        self.excluded += seconds


def engine_loop(steps: int, batch_size: int, patch_size: int, seed: int) -> float:
    with tempfile.TemporaryDirectory() as run_dir:
        config = parse_config([
            "--steps", str(steps + 1), "--batch_size", str(batch_size), "--patch_size", str(patch_size),
            "--lambda", str(LAMBDA), "--save_dir", run_dir, "--recon_every", "0", "--val_every", "100000", "--num_workers", "0",
            "--progress", "false", "--seed", str(seed)])
        timer = StepTimer()
        Trainer(config, callbacks=[timer]).fit()
        return steps * batch_size / timer.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--patch_size", type=int, default=128)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; bmshj2018-factorized q1, batch "
          f"{args.batch_size} of {args.patch_size}px crops, {args.steps} timed steps, {args.repeats} repeats")
    engine, plain = [], []
    for repeat in range(args.repeats):
        plain.append(plain_loop(args.steps, args.batch_size, args.patch_size, seed=repeat))
        engine.append(engine_loop(args.steps, args.batch_size, args.patch_size, seed=repeat))
        print(f"  repeat {repeat + 1}: plain {plain[-1]:.2f} img/s, engine {engine[-1]:.2f} img/s")
    e, p = statistics.median(engine), statistics.median(plain)
    print(f"median images/s: engine {e:.2f}, plain loop {p:.2f}; engine/plain = {e / p:.3f} (target >= 0.95)")


if __name__ == "__main__":
    main()
