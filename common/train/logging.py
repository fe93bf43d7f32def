"""Run logs: CSV + JSONL files in the run folder always, Weights & Biases when asked (offline by default)."""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

from common.errors import UserError


def _plain(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return value


def read_rows(jsonl_path: Path) -> list[dict[str, Any]]:
    """The rows of a ``<name>.jsonl`` log, read only ([] when it does not exist; see :meth:`MetricsLog.rows`)."""
    if not jsonl_path.exists():
        return []
    lines = [line for line in jsonl_path.read_text(errors="replace").splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines, start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):
                break
            raise UserError(f"{jsonl_path} line {number} is not JSON ({exc}); the run's log is damaged") from exc
    return rows


class MetricsLog:
    """Append-only table of rows (dicts) written to ``<name>.csv`` and ``<name>.jsonl``.

    Columns are fixed by the first row; later rows may not add columns (keeps the CSV rectangular).
    On resume, the log is cut back to the rows it held when the resumed checkpoint was written (``keep_rows``,
    which the checkpoint records), so that the resumed run writes every later row once; without that count
    (older checkpoints), rows after the resumed step are dropped.
    """

    def __init__(self, folder: Path, name: str, resume_step: int | None = None, keep_rows: int | None = None):
        self.csv_path = folder / f"{name}.csv"
        self.jsonl_path = folder / f"{name}.jsonl"
        self.columns: list[str] | None = None
        self.count = 0  # rows in the file
        if resume_step is None:
            for path in (self.csv_path, self.jsonl_path):
                path.unlink(missing_ok=True)
        else:
            self._truncate_after(resume_step, keep_rows)

    def _truncate_after(self, step: int, keep_rows: int | None = None) -> None:
        if not self.jsonl_path.exists():
            return
        rows = [row for row in self.rows() if row.get("step", 0) <= step]
        if keep_rows is not None:
            rows = rows[:keep_rows]
        self.jsonl_path.unlink()
        self.csv_path.unlink(missing_ok=True)
        for row in rows:
            self.write(row)

    def rows(self) -> list[dict[str, Any]]:
        """Every row written so far (this run and, after a resume, the rows it kept).

        A last line cut short by a killed process is dropped (the next resume rewrites the file without it);
        a broken line before it is an error.
        """
        return read_rows(self.jsonl_path)

    def write(self, row: dict[str, Any]) -> None:
        row = {key: _plain(value) for key, value in row.items()}
        with open(self.jsonl_path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.columns is None:
            if self.csv_path.exists():
                with open(self.csv_path, newline="") as handle:
                    self.columns = next(csv.reader(handle), list(row))
            else:
                self.columns = list(row)
                with open(self.csv_path, "w", newline="") as handle:
                    csv.writer(handle).writerow(self.columns)
        with open(self.csv_path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, extrasaction="ignore").writerow(row)
        self.count += 1


# Seed 003's W&B key names for the training terms this engine logs (the others go to ``train/<name>``).
_TRAIN_KEYS = {"loss": "train/rd/total", "recon_loss": "train/rd/recon_total", "l1_loss": "train/rd/l1",
               "bpp_loss": "train/rd/bpp", "ms_ssim": "train/msssim", "mse_loss": "train/mse"}


def wandb_keys(row: dict[str, Any], split: str) -> dict[str, float]:
    """A log row under the seeds' W&B names: ``train/rd/total``, ``train/rd/1-msssim``, ``train/psnr``,
    ``train/task_weights/<task>``, ``val/psnr``, ``val/ms_ssim``, ...; ``step`` and ``epoch`` are left out
    (W&B has its own step)."""
    values = {key: _plain(value) for key, value in row.items()
              if key not in ("step", "epoch") and isinstance(_plain(value), (int, float))}
    if split == "val":
        return {f"val/{key.removeprefix('val_')}": value for key, value in values.items()}
    named = {}
    for key, value in values.items():
        if key.startswith("weight_"):
            named[f"train/task_weights/{key.removeprefix('weight_')}"] = value
        elif key.startswith("coef_"):
            named[f"train/task_coefficients/{key.removeprefix('coef_')}"] = value
        else:
            named[_TRAIN_KEYS.get(key, f"train/{key}")] = value
    if "ms_ssim" in values:
        named["train/rd/1-msssim"] = 1.0 - values["ms_ssim"]
    if values.get("mse_loss", 0) > 0:
        named["train/psnr"] = -10.0 * math.log10(values["mse_loss"])
    return named


class WandbRun:
    """Thin W&B wrapper. Offline unless WANDB_MODE says otherwise, so a run never waits for a network."""

    def __init__(self, enabled: bool, folder: Path, project: str, config: dict[str, Any], resume_id: str | None):
        self.run = None
        if not enabled:
            return
        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
        self.run = wandb.init(project=project, dir=str(folder), config=config, id=resume_id,
                              resume="allow" if resume_id else None,
                              settings=wandb.Settings(init_timeout=30, console="off"))

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, row: dict[str, Any], step: int, split: str = "train") -> None:
        """Log a train or val row under the seeds' key names (:func:`wandb_keys`)."""
        if self.run is not None:
            self.run.log(wandb_keys(row, split), step=step)

    def log_grid(self, key: str, rows: list[list], step: int) -> None:
        """One image: a grid of 3×H×W tensors in [0, 1], one row per list (e.g. inputs, then reconstructions)."""
        if self.run is not None:
            import wandb
            from torchvision.utils import make_grid

            images = [image.detach().float().clamp(0, 1).cpu() for row in rows for image in row]
            grid = make_grid(images, nrow=len(rows[0]), padding=2, pad_value=1.0)
            self.run.log({key: wandb.Image(grid.permute(1, 2, 0).numpy())}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
