"""Task-weight plots from the training CSV log.

The CSV needs an x column (``step``, else ``epoch``, else the row number is used) and one column
``weight_<task>`` per task, as written by ``optimizer.task_weight_dict()``; ``coef_<task>`` columns (the
coefficients the raw task gradients got) are drawn in a second panel when present.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

from common.errors import UserError


def _read_columns(csv_path: Path) -> dict[str, list[float]]:
    if not csv_path.is_file():
        raise UserError(f"task-weight CSV not found: {csv_path}; pass the log written during training")
    with csv_path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise UserError(f"{csv_path} has no data rows")
    columns: dict[str, list[float]] = {}
    for name in rows[0]:
        values = []
        for row in rows:
            try:
                values.append(float(row[name]))
            except (TypeError, ValueError):
                values.append(math.nan)
        columns[name] = values
    return columns


def plot_task_weights(csv_path: str | Path, png_path: str | Path, title: str | None = None) -> Path:
    """Draw the ``weight_*`` (and ``coef_*``) columns of ``csv_path`` against step/epoch into ``png_path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    csv_path, png_path = Path(csv_path), Path(png_path)
    columns = _read_columns(csv_path)
    weights = sorted(name for name in columns if name.startswith("weight_"))
    if not weights:
        raise UserError(f"{csv_path} has no weight_<task> columns; log optimizer.task_weight_dict() each step")
    coefficients = sorted(name for name in columns if name.startswith("coef_"))
    x_name = next((name for name in ("step", "epoch") if name in columns), None)
    n_rows = len(columns[weights[0]])
    x_values = columns[x_name] if x_name else list(range(n_rows))

    panels = [("task weight z = softmax(logits)", weights)]
    if coefficients:
        panels.append(("gradient coefficient a", coefficients))
    figure, axes = plt.subplots(len(panels), 1, figsize=(7, 3.2 * len(panels)), sharex=True, squeeze=False)
    for axis, (label, names) in zip(axes[:, 0], panels):
        for name in names:
            axis.plot(x_values, columns[name], label=name.split("_", 1)[1])
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(loc="best")
    axes[-1, 0].set_xlabel(x_name or "row")
    if title:
        axes[0, 0].set_title(title)
    figure.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    return png_path
