"""Step time of Adam, Balanced (exact) and the cheaper delta options, side by side, as ratios to Adam.

Model: bmshj2018-factorized q1 (random init), batch of random 128x128 crops, tasks D = lambda*255^2*MSE and
R = bpp (per-sample losses), quantiles excluded from the optimizers (as in training; the aux step is the
same for every variant and is left out). "floor" = Adam step + one no-grad forward of the same batch:
the least any exact Balanced step can cost. Variants are interleaved in every repeat (rotating order) and
each step time is the median over repeats; ratios are medians of the per-repeat ratios to Adam, which
cancels slow drifts of a shared machine. On the CPU the default clock is the process CPU time with one
thread, which other jobs on the machine disturb far less than wall time.

    python -m benchmarks.optimizer_step [--steps 2] [--repeats 4] [--every 8] [--subset 1] [--threads 1]
"""
from __future__ import annotations

import copy
import math
import statistics
import time
from typing import Callable

import torch
from torch import nn

from balanced_rd import Balanced
from common.train.step import training_step
from common.cli import OneLineErrorParser, run_main
from common.models import build, is_aux_parameter


def rd_task_losses(lmbda: float) -> Callable:
    """Per-sample [lambda*255^2*MSE, bpp] of a compressai model output."""

    def task_losses(model: nn.Module, batch: torch.Tensor) -> list[torch.Tensor]:
        out = model(batch)
        n, _, h, w = batch.shape
        distortion = lmbda * 255.0 ** 2 * (out["x_hat"] - batch).pow(2).flatten(1).mean(1)
        rate = sum(torch.log(lik).flatten(1).sum(1) for lik in out["likelihoods"].values()) / (-math.log(2) * h * w)
        return [distortion, rate]

    return task_losses


def net_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for name, p in model.named_parameters() if not is_aux_parameter(name)]


class Variant:
    """One optimizer configuration with its own model copy; ``run(batch)`` does one timed-unit step."""

    def __init__(self, name: str, model: nn.Module, lr: float, balanced: bool, floor: bool = False, **options):
        self.name, self.model, self.floor, self.options = name, copy.deepcopy(model), floor, options
        params = net_parameters(self.model)
        self.optimizer = Balanced(params, lr) if balanced else torch.optim.Adam(params, lr)
        self.step_index = 0
        self.times: list[float] = []

    def run(self, batch: torch.Tensor, task_losses: Callable, device: torch.device, clock: Callable) -> float:
        _synchronize(device)
        start = clock()
        training_step(self.model, self.optimizer, batch, task_losses, clip_max_norm=1.0,
                      step_index=self.step_index, **self.options)
        if self.floor:
            with torch.no_grad():
                task_losses(self.model, batch)
        _synchronize(device)
        self.step_index += 1
        return clock() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_variants(model: nn.Module, lr: float, every: list[int], subsets: list[int]) -> list[Variant]:
    variants = [Variant("adam", model, lr, balanced=False),
                Variant("floor (adam + no-grad fwd)", model, lr, balanced=False, floor=True),
                Variant("balanced exact", model, lr, balanced=True)]
    variants += [Variant(f"balanced every {k}", model, lr, balanced=True, weight_update_every=k) for k in every]
    variants += [Variant(f"balanced subset {n}", model, lr, balanced=True, delta_subset=n) for n in subsets]
    if every and subsets:
        variants.append(Variant(f"balanced subset {min(subsets)} every {max(every)}", model, lr, balanced=True,
                                delta_subset=min(subsets), weight_update_every=max(every)))
    return variants


def main(argv=None) -> int:
    parser = OneLineErrorParser(prog="python -m benchmarks.optimizer_step", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per variant per repeat")
    parser.add_argument("--repeats", type=int, default=4, help="interleaved repeats (median over them)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--patch_size", type=int, default=128)
    parser.add_argument("--quality", type=int, default=1)
    parser.add_argument("--lmbda", type=float, default=0.013)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--every", type=int, nargs="*", default=[8], help="weight_update_every values")
    parser.add_argument("--subset", type=int, nargs="*", default=[1], help="delta_subset values")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 keeps timings stable on a shared CPU (0 = torch's default)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default=None,
                        help="cpu = process CPU time (robust to other jobs on a shared CPU; default on cpu), "
                             "wall = elapsed time (default on cuda)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        parser.error("--steps and --repeats must be >= 1")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    clock_name = args.clock or ("wall" if device.type == "cuda" else "cpu")
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    torch.manual_seed(args.seed)
    model = build("bmshj2018-factorized", quality=args.quality).to(device).train()
    gen = torch.Generator().manual_seed(args.seed)
    batches = [torch.rand(args.batch_size, 3, args.patch_size, args.patch_size, generator=gen).to(device)
               for _ in range(args.steps)]
    task_losses = rd_task_losses(args.lmbda)
    variants = build_variants(model, args.lr, args.every, args.subset)

    for variant in variants:
        for _ in range(args.warmup):
            variant.run(batches[0], task_losses, device, clock)
    per_repeat: list[dict[str, float]] = []
    for repeat in range(args.repeats):
        order = variants[repeat % len(variants):] + variants[:repeat % len(variants)]
        medians = {}
        for variant in order:
            medians[variant.name] = statistics.median(variant.run(b, task_losses, device, clock) for b in batches)
            variant.times.append(medians[variant.name])
        per_repeat.append(medians)

    names = [v.name for v in variants]
    ratio = {name: statistics.median(r[name] / r["adam"] for r in per_repeat) for name in names}
    spread = {name: (min(r[name] / r["adam"] for r in per_repeat), max(r[name] / r["adam"] for r in per_repeat))
              for name in names}
    floor_name = names[1]
    print(f"bmshj2018-factorized q{args.quality}, batch {args.batch_size}x3x{args.patch_size}x{args.patch_size}, "
          f"device {device}, threads {torch.get_num_threads()}, {clock_name} clock, "
          f"{args.repeats} repeats x {args.steps} steps")
    print(f"{'variant':<32}{'median s/step':>14}{'x adam':>9}{'x floor':>9}   per-repeat x adam (min..max)")
    for variant in variants:
        median_time = statistics.median(variant.times)
        print(f"{variant.name:<32}{median_time:>14.4f}{ratio[variant.name]:>9.3f}"
              f"{ratio[variant.name] / ratio[floor_name]:>9.3f}   {spread[variant.name][0]:.3f}..{spread[variant.name][1]:.3f}")
    cheapest = min(names[2:], key=ratio.get)
    print(f"exact vs floor: {ratio['balanced exact'] / ratio[floor_name]:.3f} (target <= 1.03); "
          f"cheapest option '{cheapest}': {ratio[cheapest]:.3f} x adam (target <= 1.08)")
    return 0


if __name__ == "__main__":
    run_main(main)
