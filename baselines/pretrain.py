"""The base model the demo fine-tunes per λ: trained once on this CPU by ``make pretrain`` and shipped.

``python -m baselines.pretrain [--out FILE] [--save_dir DIR] [train flags that override the recipe]``

A λ ladder is usually made the way LIC papers make theirs: one model trained long at one λ, then each λ
fine-tuned from it. The recipe (``RECIPE``) trains bmshj2018-factorized-small with Adam on the embedded
sample photos at the geometric middle of the demo's ladder, with a cosine learning-rate decay, for about
an hour on 2 cores. The result is written as a slim checkpoint (weights, the model's name and the
training flags; no optimizer state) and a JSON file beside it with the command, the git commit, the time
taken (by this invocation; ``resumed_from_step`` says where an interrupted run continued), the final
validation metrics and the convergence verdict.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from common.checkpoint import atomic_save, atomic_write_text, load_file, model_only
from common.cli import OneLineErrorParser, parse_with_train_flags, run_main
from common.paths import output_file

DEFAULT_OUT = Path(__file__).resolve().parent / "pretrained" / "bmshj2018-factorized-small.pt"
RECIPE = ("--model", "bmshj2018-factorized-small", "--lambda", "0.0048", "--steps", "36000",
          "--batch_size", "8", "--patch_size", "64", "--val_patch_size", "256", "--lr", "1e-3",
          "--sched", "cosine", "--val_every", "1000", "--recon_every", "0", "--num_workers", "0",
          "--progress", "false")
def main(argv: Sequence[str] | None = None) -> int:
    from baselines.study import git_commit
    from common.train.engine import Trainer
    from common.train.options import parse_config

    parser = OneLineErrorParser(prog="python -m baselines.pretrain", add_help=False,
                                description="Train the demo's base model and write it as a slim checkpoint.")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="the slim checkpoint to write (a .json sidecar "
                                                                "goes beside it)")
    parser.add_argument("--save_dir", default="runs/pretrain", help="the training run's folder (resumable)")
    parsed = parse_with_train_flags(parser, argv)
    if parsed is None:
        return 0
    args, overrides = parsed
    output_file(args.out, "--out")
    train_argv = [*RECIPE, *overrides, "--save_dir", args.save_dir]
    resumed_from = None
    if (Path(args.save_dir) / "last.pt").is_file():
        train_argv.append("--resume")
        resumed_from = load_file(Path(args.save_dir) / "last.pt")["progress"]["step"]
    else:
        train_argv.append("--overwrite")
    started = time.perf_counter()
    trainer = Trainer(parse_config(train_argv))
    final = trainer.fit()
    out = Path(args.out)
    atomic_save(model_only(load_file(Path(args.save_dir) / "last.pt")), out)
    provenance = {"command": "python -m baselines.pretrain " + " ".join(sys.argv[1:] if argv is None else argv),
                  "training_flags": train_argv, "git_commit": git_commit(),
                  "wall_time_s": round(time.perf_counter() - started, 1), "resumed_from_step": resumed_from,
                  "torch_threads": torch.get_num_threads(), "final_validation": final,
                  "convergence": trainer.convergence.to_dict()}
    atomic_write_text(out.with_suffix(".json"), json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 0


def cli() -> None:
    """The ``lic-pretrain`` command (installed by ``make setup``): ``main`` with one-line errors."""
    run_main(main)


if __name__ == "__main__":
    cli()
