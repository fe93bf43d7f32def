"""Did a run settle? The criterion every training run reports when it ends.

A run has settled when, over the last 20 % of its steps, every validation stays within 0.1 dB of PSNR and
1 % of bpp (relative to the final bpp) of every other: the whole window's spread (max − min) is judged, not
only its first and last validation, and the engine validates where the window starts, at the last step and
every ``--val_every`` in between. The spread also holds the evaluation noise of rounded latents on a small
validation set. A run without a rate term (reconstruction losses) is judged on PSNR alone.

What this measures is that the run's *end* is flat on the validation set, not that training found a
stationary point: a learning rate decayed to a few percent of its peak also makes the end flat. So the
verdict records the largest learning rate inside the window as a fraction of the run's peak
(``lr_window_fraction``), and calls a flat window whose lr stayed below 10 % of the peak "settled at the
end of the schedule". The validation set should be disjoint from the test set (the sample photos' ``val/``
split is), so that the verdict, the best and EMA checkpoints and any tuning never see the test photos.

An R-D point of a run that has not settled says as much about the training budget as about the optimizer
or λ, so sweeps and studies carry this verdict beside each point.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

WINDOW_FRACTION = 0.2
PSNR_TOLERANCE_DB = 0.1
BPP_TOLERANCE = 0.01
# Below this fraction of its peak, the learning rate itself may be what keeps the window flat.
LOW_LR_FRACTION = 0.1
_BPP_KEYS = ("val_bpp_loss", "val_bpp")


def window_start(total_steps: int) -> int:
    """The step after which the last 20 % of a ``total_steps`` run begins (validated there)."""
    return total_steps - max(1, round(WINDOW_FRACTION * total_steps))


@dataclass
class Convergence:
    """The verdict and the numbers behind it (stored as ``convergence.json`` in the run folder)."""

    converged: bool
    window_start: int
    total_steps: int
    validations: int
    psnr_first: float | None = None
    psnr_last: float | None = None
    psnr_change_db: float | None = None
    psnr_spread_db: float | None = None
    bpp_first: float | None = None
    bpp_last: float | None = None
    bpp_change_relative: float | None = None
    bpp_spread_relative: float | None = None
    lr_window_fraction: float | None = None

    def what(self) -> str:
        """Name of what a positive verdict measured."""
        if self.lr_window_fraction is not None and self.lr_window_fraction < LOW_LR_FRACTION:
            return f"settled at the end of the schedule (lr at most {100 * self.lr_window_fraction:.1f} % of its peak)"
        if self.lr_window_fraction is None:
            return "settled"
        return f"settled with the lr up to {100 * self.lr_window_fraction:.0f} % of its peak"

    def summary(self) -> str:
        """One line for the console, e.g. ``... settled at the end of the schedule (lr at most 9.5 % of its peak): PSNR ...``."""
        window = f"steps {self.window_start}–{self.total_steps}, {self.validations} validations"
        if self.psnr_change_db is None:
            return f"convergence: not assessed ({window}; the last 20 % of the run needs two validations)"
        parts = [f"PSNR {self.psnr_first:.3f} → {self.psnr_last:.3f} dB (spread {self.psnr_spread_db:.3f}, "
                 f"limit {PSNR_TOLERANCE_DB}; change {self.psnr_change_db:+.3f})"]
        if self.bpp_change_relative is not None:
            parts.append(f"bpp {self.bpp_first:.4f} → {self.bpp_last:.4f} (spread "
                         f"{100 * self.bpp_spread_relative:.2f} %, limit {100 * BPP_TOLERANCE:.0f} %; change "
                         f"{100 * self.bpp_change_relative:+.2f} %)")
        verdict = self.what() if self.converged else "NOT settled (train longer or decay the learning rate)"
        return f"convergence over the last 20 % ({window}, validation set): {verdict}: {'; '.join(parts)}"

    def to_dict(self) -> dict:
        return asdict(self)


def lr_window_fraction(train_rows: Sequence[dict], start: int) -> float | None:
    """The largest logged ``lr`` at steps >= ``start`` over the largest of the run (None without an lr log)."""
    rates = [(row["step"], float(row["lr"])) for row in train_rows if "lr" in row and "step" in row]
    peak = max((lr for _, lr in rates), default=0.0)
    window = [lr for step, lr in rates if step >= start]
    return max(window) / peak if window and peak > 0 else None


def assess(val_rows: Sequence[dict], total_steps: int, train_rows: Sequence[dict] = ()) -> Convergence:
    """Judge a run from its validation rows (``step``, ``val_psnr`` and ``val_bpp_loss``/``val_bpp``) and, for
    the learning rate in the window, its training rows (``step``, ``lr``)."""
    start = window_start(total_steps)
    rows = sorted((row for row in val_rows if start <= row.get("step", -1) <= total_steps),
                  key=lambda row: row["step"])
    verdict = Convergence(converged=False, window_start=start, total_steps=total_steps, validations=len(rows),
                          lr_window_fraction=lr_window_fraction(train_rows, start))
    if len(rows) < 2 or rows[0]["step"] != start or rows[-1]["step"] != total_steps:
        return verdict
    psnr = [float(row["val_psnr"]) for row in rows]
    verdict.psnr_first, verdict.psnr_last = psnr[0], psnr[-1]
    verdict.psnr_change_db = psnr[-1] - psnr[0]
    verdict.psnr_spread_db = max(psnr) - min(psnr)
    converged = verdict.psnr_spread_db < PSNR_TOLERANCE_DB
    bpp_key = next((key for key in _BPP_KEYS if key in rows[0]), None)
    if bpp_key is not None:
        bpp = [float(row[bpp_key]) for row in rows]
        verdict.bpp_first, verdict.bpp_last = bpp[0], bpp[-1]
        scale = bpp[-1] if bpp[-1] > 0 else math.nan
        verdict.bpp_change_relative = (bpp[-1] - bpp[0]) / scale
        verdict.bpp_spread_relative = (max(bpp) - min(bpp)) / scale
        converged = converged and verdict.bpp_spread_relative < BPP_TOLERANCE
    verdict.converged = converged
    return verdict
