"""Memory format: the same model, weights and input timed in NCHW (contiguous) and in channels_last.

Whether channels_last pays on a CPU depends on the model (``common.models.memory_format``). This prints, for
each model, the median time of a training step (forward, λ·255²·MSE + bpp, backward) and of an eval forward
in both formats, measured alternately in one process, and channels_last / contiguous: the figures to check a
model's ``cpu_memory_format`` declaration (HPCM-Base, -Large: channels_last), which ``--memory_format auto`` of
``common.train`` and ``common.eval`` follows.

    python -m benchmarks.memory_format [--models bmshj2018-factorized hpcm-base] [--batch 4] [--size 256]
                                       [--repeats 3] [--threads N] [--device cpu]
"""
from __future__ import annotations

import copy

import torch

from common.cli import OneLineErrorParser, run_main
from common.losses import RateDistortionLoss
from common.models import available_models, build
from benchmarks.timing import median_time

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def training_step(model: torch.nn.Module, x: torch.Tensor):
    criterion = RateDistortionLoss(lmbda=0.0067)

    def step():
        model.zero_grad(set_to_none=True)
        criterion(model(x), x)["loss"].backward()
    return step


def compare(name: str, batch: int, size: int, repeats: int, device: torch.device) -> list[tuple[str, dict]]:
    torch.manual_seed(0)
    base = build(name).to(device)
    variants = {label: copy.deepcopy(base).to(memory_format=fmt) for label, fmt in FORMATS.items()}
    x = torch.rand(batch, 3, size, size, device=device)
    rows = []
    for label, make in (("training step", lambda m: (m.train(), training_step(m, x))[1]),
                        ("eval forward", lambda m: (m.eval(), torch.no_grad()(lambda: m(x)))[1])):
        steps = {fmt: make(model) for fmt, model in variants.items()}
        times = dict.fromkeys(steps, float("inf"))
        for _ in range(2):  # alternate, keeping each format's best median, so drift hits both alike
            for fmt, fn in steps.items():
                times[fmt] = min(times[fmt], median_time(fn, repeats, device))
        rows.append((f"{name}: {label}, batch {batch} of {size}x{size}", times))
    return rows


def main(argv=None) -> int:
    parser = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["bmshj2018-factorized", "hpcm-base"],
                        choices=available_models())
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=256, help="square crop size (a multiple of 256 for HPCM)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| what | contiguous (s) | channels_last (s) | channels_last / contiguous |")
    print("|---|---|---|---|")
    for name in args.models:
        for label, times in compare(name, args.batch, args.size, args.repeats, device):
            print(f"| {label} | {times['contiguous']:.3f} | {times['channels_last']:.3f} | "
                  f"{times['channels_last'] / times['contiguous']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    run_main(main)
