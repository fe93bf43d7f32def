"""Did a run converge? The criterion every training run reports when it ends.

A run has converged when, over the last 20 % of its steps, its validation PSNR changed by less than
0.1 dB and its validation bpp by less than 1 % (relative to the final bpp): the values at the step where
the window starts and at the last step are compared, and the engine validates at both. Validations in
between are reported as the window's spread (max − min), which also holds the evaluation noise of
rounded latents on a small validation set. A run without a rate term (reconstruction losses) is judged
on PSNR alone.

An R-D point of a run that has not converged says as much about the training budget as about the
optimizer or λ, so sweeps and studies carry this verdict beside each point.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

WINDOW_FRACTION = 0.2
PSNR_TOLERANCE_DB = 0.1
BPP_TOLERANCE = 0.01
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

    def summary(self) -> str:
        """One line for the console, e.g. ``converged: PSNR 27.41 → 27.44 dB (spread 0.03 < 0.1) ...``."""
        window = f"steps {self.window_start}–{self.total_steps}, {self.validations} validations"
        if self.psnr_change_db is None:
            return f"convergence: not assessed ({window}; the last 20 % of the run needs two validations)"
        parts = [f"PSNR {self.psnr_first:.3f} → {self.psnr_last:.3f} dB (change {self.psnr_change_db:+.3f} dB, "
                 f"limit {PSNR_TOLERANCE_DB}; spread {self.psnr_spread_db:.3f})"]
        if self.bpp_change_relative is not None:
            parts.append(f"bpp {self.bpp_first:.4f} → {self.bpp_last:.4f} (change "
                         f"{100 * self.bpp_change_relative:+.2f} %, limit {100 * BPP_TOLERANCE:.0f} %; spread "
                         f"{100 * self.bpp_spread_relative:.2f} %)")
        verdict = "converged" if self.converged else "NOT converged (train longer or decay the learning rate)"
        return f"convergence over the last 20 % ({window}): {verdict}: {'; '.join(parts)}"

    def to_dict(self) -> dict:
        return asdict(self)


def assess(val_rows: Sequence[dict], total_steps: int) -> Convergence:
    """Judge a run from its validation rows (``step``, ``val_psnr`` and ``val_bpp_loss``/``val_bpp``)."""
    start = window_start(total_steps)
    rows = sorted((row for row in val_rows if start <= row.get("step", -1) <= total_steps),
                  key=lambda row: row["step"])
    verdict = Convergence(converged=False, window_start=start, total_steps=total_steps, validations=len(rows))
    if len(rows) < 2 or rows[0]["step"] != start or rows[-1]["step"] != total_steps:
        return verdict
    psnr = [float(row["val_psnr"]) for row in rows]
    verdict.psnr_first, verdict.psnr_last = psnr[0], psnr[-1]
    verdict.psnr_change_db = psnr[-1] - psnr[0]
    verdict.psnr_spread_db = max(psnr) - min(psnr)
    converged = abs(verdict.psnr_change_db) < PSNR_TOLERANCE_DB
    bpp_key = next((key for key in _BPP_KEYS if key in rows[0]), None)
    if bpp_key is not None:
        bpp = [float(row[bpp_key]) for row in rows]
        verdict.bpp_first, verdict.bpp_last = bpp[0], bpp[-1]
        scale = bpp[-1] if bpp[-1] > 0 else math.nan
        verdict.bpp_change_relative = (bpp[-1] - bpp[0]) / scale
        verdict.bpp_spread_relative = (max(bpp) - min(bpp)) / scale
        converged = converged and abs(verdict.bpp_change_relative) < BPP_TOLERANCE
    verdict.converged = converged
    return verdict
