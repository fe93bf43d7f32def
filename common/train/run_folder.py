"""What a run folder keeps besides last.pt and best_*.pt: the last k and best k checkpoints with an info JSON
each (seed 004: ``--keep_last``, ``--keep_best``), and a README.md that lists what the folder holds."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from common.checkpoint import atomic_save, atomic_write_text, model_only

KEPT_DIR = "checkpoints"


def _info(step: int, epoch: int, metrics: dict[str, float], config: dict[str, Any]) -> str:
    clean = {name: (value if math.isfinite(value) else None) for name, value in metrics.items()}
    return json.dumps({"step": step, "epoch": epoch, "metrics": clean, "config": config}, indent=2)


def _write(path: Path, ckpt: dict, info: str) -> None:
    atomic_save(ckpt, path)
    atomic_write_text(path.with_suffix(".json"), info)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.with_suffix(".json").unlink(missing_ok=True)


def keep_checkpoints(save_dir: Path, ckpt: dict, metrics: dict[str, float], keep_last: int, keep_best: int,
                     step: int, epoch: int, config: dict[str, Any]) -> None:
    """After a validation: ``checkpoints/last_step_N.pt`` (resumable) for the last ``keep_last`` validations and
    ``checkpoints/best_step_N.pt`` (weights only) for the ``keep_best`` lowest validation losses, each with
    its ``.json`` (step, epoch, metrics, config). The kept set is read back from the JSON files, so a resumed
    run goes on pruning what the interrupted one wrote."""
    folder = save_dir / KEPT_DIR
    folder.mkdir(exist_ok=True)
    info = _info(step, epoch, metrics, config)
    if keep_last > 0:
        _write(folder / f"last_step_{step:08d}.pt", ckpt, info)
        for old in sorted(folder.glob("last_step_*.pt"))[:-keep_last]:
            _remove(old)
    if keep_best > 0:
        def loss_of(path: Path) -> float:
            try:
                value = json.loads(path.with_suffix(".json").read_text())["metrics"]["loss"]
            except (OSError, ValueError, KeyError):
                return math.inf  # an unreadable record ranks last and is pruned first
            return math.inf if value is None else value

        kept = sorted(folder.glob("best_step_*.pt"), key=loss_of)
        loss = metrics["loss"] if math.isfinite(metrics["loss"]) else math.inf
        if len(kept) < keep_best or loss < loss_of(kept[-1]):
            _write(folder / f"best_step_{step:08d}.pt", model_only(ckpt), info)
            for old in sorted(folder.glob("best_step_*.pt"), key=loss_of)[keep_best:]:
                _remove(old)


def keep_step(save_dir: Path, ckpt: dict, step: int, epoch: int, config: dict[str, Any]) -> None:
    """``checkpoints/step_N.pt``: the weights (and weight average) after step N of ``--keep_steps``, with its
    ``.json`` (step, epoch, config); never pruned."""
    folder = save_dir / KEPT_DIR
    folder.mkdir(exist_ok=True)
    _write(folder / f"step_{step:08d}.pt", model_only(ckpt), _info(step, epoch, {}, config))


# What each file of a run folder is, in the order the README lists them.
_CONTENTS = {
    "last.pt": "the latest checkpoint: weights, optimizer, schedules, RNG and data position (`--resume` continues "
               "from it; `finished: true` once the run ended)",
    "best_loss.pt": "the weights (and weight average) of the validation with the lowest loss",
    "best_msssim.pt": "the weights of the validation with the highest MS-SSIM",
    "ft_last.pt": "seed 001's fine-tuning stage: its latest checkpoint",
    "ft_best.pt": "seed 001's fine-tuning stage: its best weights",
    KEPT_DIR: "`step_N.pt` (weights) after each step of `--keep_steps`, `last_step_N.pt` for the last `--keep_last` "
              "validations, `best_step_N.pt` for the `--keep_best` "
              "lowest validation losses, each with a `.json` of its step, epoch, metrics and config",
    "train_log.csv": "one row per step: the loss terms, lr and (Balanced) task weights (`.jsonl`: the same rows)",
    "val_log.csv": "one row per validation (`.jsonl`: the same rows)",
    "convergence.json": "the convergence verdict: PSNR and bpp change over the last 20 % of the steps",
    "receipt.json": "the run's receipt: resolved config; per start or resume the git commit, uncommitted changes and "
                    "machine (CPU, kernels, threads, GPUs, library versions); the data manifest; at the end the real "
                    "vs estimated bpp of the validation images and the entropy bottlenecks' aux losses",
    "receipt.patch": "the uncommitted changes to the code when the run started (`git apply` restores them)",
    "data_manifest.tsv": "every training and validation image: name, bytes, SHA-256",
    "task_weights.png": "the task weights and gradient coefficients over the steps (Balanced)",
    "recon": "reconstructions of the validation images (`origin/`, `pre_e000/`, `eNNN/`)",
    "recon_ft": "reconstructions of seed 001's fine-tuning stage",
    "wandb": "the offline Weights & Biases run (`wandb sync` uploads it)",
}


def write_readme(save_dir: Path, config: dict[str, Any], recon_dir: Path | None) -> None:
    """``README.md``: the command-line flags that differ from the defaults and what each present file is."""
    from common.train.config import TrainConfig

    defaults = TrainConfig().flat()
    changed = {name: value for name, value in config.items() if defaults.get(name) != value}
    lines = ["# Training run", "", "Flags that differ from the defaults (all of them: `last.pt`'s `args`):", ""]
    lines += [f"- `--{'lambda' if name == 'lmbda' else name}`: `{value}`" for name, value in sorted(changed.items())]
    lines += ["", "| file | what it is |", "|---|---|"]
    for name, what in _CONTENTS.items():
        if (save_dir / name).exists():
            lines.append(f"| `{name}` | {what} |")
    if recon_dir is not None and recon_dir.exists() and recon_dir.parent != save_dir:
        lines.append(f"| `{recon_dir}` | reconstructions of the validation images (`--recon_dir`) |")
    atomic_write_text(save_dir / "README.md", "\n".join(lines) + "\n")
