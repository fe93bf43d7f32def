"""``make gpu-check``: what only a GPU can show, in one command that prints a short table last.

1. The CUDA cases of ``tests/test_devices.py``: mixed precision (fp16 with GradScaler, bf16) with Balanced R-D,
   FP32 regions under autocast, bitstreams coded on the GPU and decoded on the CPU and back, torchrun DDP over
   NCCL on one process.
2. Training throughput (images/s, forward + backward + optimizer step on random 256x256 crops, batch 16) of
   bmshj2018-factorized q1 and HPCM-Base, in FP32 and with bf16 autocast; HPCM-Base also in channels_last,
   the layout ``--memory_format auto`` gives it on the CPU (on a GPU, auto keeps NCHW until this row shows
   channels_last faster there).
3. The cost of a Balanced R-D step (its extra no-grad forward and the logit update) against an Adam step.
4. A short from-scratch Adam-vs-Balanced run at the demo's size (bmshj2018-factorized-small, batch 4 of 64 px
   crops, lr 1e-3 cosine, λ 0.0067) on the sample photos, with its validation PSNR and bpp.

    python -m benchmarks.gpu_check [--device cuda] [--smoke]

``--smoke`` shrinks every size so that the script itself can be tested on a CPU (``make test`` does).
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch

from common import models
from common.cli import OneLineErrorParser, run_main
from common.errors import UserError
from common.losses import RateDistortionLoss
from common.train.config import OptimizerConfig
from common.train.engine import Trainer
from common.train.optimizers import build_optimizer
from common.train.options import parse_config
from common.train.step import training_step

REPO = Path(__file__).resolve().parents[1]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_second(name: str, device: torch.device, batch: int, size: int, steps: int, amp: bool,
                      optimizer: str = "adam", memory_format: torch.memory_format = torch.contiguous_format,
                      **model_kwargs) -> float:
    """Training steps of ``name`` on random crops: images per second after two warm-up steps."""
    torch.manual_seed(0)
    model = models.build(name, **model_kwargs).to(device, memory_format=memory_format).train()
    criterion = RateDistortionLoss(0.013)
    params = [p for n, p in model.named_parameters() if not models.is_aux_parameter(n)]
    opt, update = build_optimizer(params, OptimizerConfig(optimizer=optimizer), n_tasks=2, lr=1e-4)
    x = torch.rand(batch, 3, size, size, device=device)

    def task_losses(net, images):
        return criterion(net(images), images)["tasks"]

    for index in range(steps + 2):
        if index == 2:
            synchronize(device)
            started = time.perf_counter()
        training_step(model, opt, x, task_losses, update=update, clip_max_norm=1.0,
                      amp_dtype=torch.bfloat16 if amp else None, step_index=index)
    synchronize(device)
    return batch * steps / (time.perf_counter() - started)


def cuda_tests() -> str:
    """Run the CUDA cases of tests/test_devices.py; their pytest summary line."""
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda or nccl",
                             str(REPO / "tests" / "test_devices.py")], capture_output=True, text=True, cwd=REPO)
    print(result.stdout[-4000:], result.stderr[-2000:], sep="\n")
    lines = [line for line in result.stdout.splitlines() if " passed" in line or " failed" in line or "error" in line]
    return lines[-1].strip("= ") if lines else f"pytest exited with {result.returncode}"


def from_scratch(device: torch.device, steps: int, optimizer: str, folder: Path) -> dict[str, float]:
    config = parse_config(["--model", "bmshj2018-factorized-small", "--lambda", "0.0067", "--steps", str(steps),
                           "--batch_size", "4", "--patch_size", "64", "--val_patch_size", "256", "--lr", "1e-3",
                           "--sched", "cosine", "--lr_warmup_steps", "20", "--optimizer", optimizer, "--device",
                           str(device), "--save_dir", str(folder / optimizer), "--recon_every", "0",
                           "--progress", "false", "--num_workers", "0"])
    return Trainer(config).fit()


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineErrorParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: check the script itself (CPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("no CUDA device is visible (torch.cuda.is_available() is False); run on a GPU machine "
                        "or pass --device cpu --smoke")
    batch, size, steps, scratch_steps = (2, 64, 2, 4) if args.smoke else (16, 256, 10, 800)
    hpcm = "hpcm-tiny" if args.smoke else "hpcm-base"
    rows: list[tuple[str, str]] = []
    if device.type == "cuda":
        rows.append(("CUDA tests (tests/test_devices.py)", cuda_tests()))
    layouts = (("bmshj2018 q1", "bmshj2018-factorized", {"quality": 1}, torch.contiguous_format),
               (hpcm, hpcm, {}, torch.contiguous_format), (f"{hpcm} channels_last", hpcm, {}, torch.channels_last))
    for label, name, kwargs, memory_format in layouts:
        for amp in (False, True):
            rate = images_per_second(name, device, batch, size, steps, amp, memory_format=memory_format, **kwargs)
            rows.append((f"{label}, batch {batch} of {size}², {'bf16 autocast' if amp else 'fp32'}",
                         f"{rate:.1f} images/s"))
    adam = images_per_second("bmshj2018-factorized", device, batch, size, steps, False, quality=1)
    balanced = images_per_second("bmshj2018-factorized", device, batch, size, steps, False, "balanced", quality=1)
    rows.append(("Balanced / Adam step time, bmshj2018 q1", f"{adam / balanced:.2f}"))
    with tempfile.TemporaryDirectory() as folder:
        for optimizer, label in (("adam", "Adam"), ("balanced", "Balanced")):
            val = from_scratch(device, scratch_steps, optimizer, Path(folder))
            rows.append((f"from scratch, {label} ({scratch_steps} steps, λ 0.0067)",
                         f"{val['psnr']:.2f} dB, {val['bpp_loss']:.4f} bpp (validation)"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"\ngpu check on {name} (torch {torch.__version__})")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"  {label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    run_main(main)
