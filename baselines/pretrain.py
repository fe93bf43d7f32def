"""The base models the demo and the phases fine-tune per λ: trained once on this CPU by ``make pretrain`` and
shipped.

``python -m baselines.pretrain [--base NAME] [--out FILE] [--save_dir DIR] [train flags that override the recipe]``

A λ ladder is usually made the way LIC papers make theirs: one model trained long at one λ, then each λ
fine-tuned from it. Each recipe (``RECIPES``) trains its model with Adam on the embedded sample photos' training
split (validation on ``val/``) at the geometric middle of the demo's ladder, with a cosine learning-rate decay:
bmshj2018-factorized-small (the demo's and phases 1, 2 and 4's, about 1.5 h on one core) and hpcm-tiny (phase 3's
HPCM, about 14 minutes on one core). The result is written as a slim checkpoint (weights, the model's name and the
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

PRETRAINED = Path(__file__).resolve().parent / "pretrained"
_COMMON = ("--lambda", "0.0048", "--patch_size", "64", "--val_patch_size", "256", "--lr", "1e-3", "--sched", "cosine",
           "--recon_every", "0", "--num_workers", "0", "--progress", "false")
RECIPES = {
    "bmshj2018-factorized-small": ("--model", "bmshj2018-factorized-small", "--steps", "36000", "--batch_size", "8",
                                   "--val_every", "1000", *_COMMON),
    "hpcm-tiny": ("--model", "hpcm-tiny", "--steps", "10000", "--batch_size", "4", "--val_every", "500", *_COMMON),
}


def shipped_base(name: str) -> Path:
    """Where the shipped base model of ``name`` lives."""
    return PRETRAINED / f"{name}.pt"
def main(argv: Sequence[str] | None = None) -> int:
    from common.receipt import git_commit
    from common.train.engine import Trainer
    from common.train.options import parse_config

    parser = OneLineErrorParser(prog="python -m baselines.pretrain", add_help=False,
                                description="Train the demo's base model and write it as a slim checkpoint.")
    parser.add_argument("--base", choices=tuple(RECIPES), default="bmshj2018-factorized-small",
                        help="which base model to train (default: the demo's)")
    parser.add_argument("--out", default=None, help="the slim checkpoint to write (a .json sidecar goes beside it; "
                                                    "default: baselines/pretrained/BASE.pt)")
    parser.add_argument("--save_dir", default=None, help="the training run's folder (resumable; default: "
                                                         "runs/pretrain/BASE)")
    parsed = parse_with_train_flags(parser, argv)
    if parsed is None:
        return 0
    args, overrides = parsed
    # Before anything is written: the base model this run replaces is a tracked file, a local change once written.
    commit = git_commit()
    args.out = args.out or str(shipped_base(args.base))
    args.save_dir = args.save_dir or f"runs/pretrain/{args.base}"
    output_file(args.out, "--out")
    train_argv = [*RECIPES[args.base], *overrides, "--save_dir", args.save_dir]
    resumed_from = None
    if (Path(args.save_dir) / "last.pt").is_file():
        train_argv.append("--resume")
        resumed_from = load_file(Path(args.save_dir) / "last.pt")["progress"]["step"]
    else:
        train_argv.append("--overwrite")
    started = time.perf_counter()
    trainer = Trainer(parse_config(train_argv))
    final = trainer.fit()
    if final is None:  # a finished run resumed: nothing trained, its last validation is the final one
        from common.train.logging import read_rows

        final = (read_rows(Path(args.save_dir) / "val_log.jsonl") or [None])[-1]
    out = Path(args.out)
    atomic_save(model_only(load_file(Path(args.save_dir) / "last.pt")), out)
    provenance = {"command": "python -m baselines.pretrain " + " ".join(sys.argv[1:] if argv is None else argv),
                  "training_flags": train_argv, "git_commit": commit,
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
