#!/usr/bin/env bash
# Phase 2 fine-tuning with the paper's Solution 2: per-step QP task weights (balanced_rd.BalancedQP)
# from CHECKPOINT (default: phase 1's balanced run) at a small learning rate.
set -euo pipefail
FROM_BASE=1 source "$(dirname "$0")/../scripts/env.sh"
checkpoint="${CHECKPOINT:-$OUT/phase1/balanced/last.pt}"
[ -f "$checkpoint" ] || { echo "error: no checkpoint at $checkpoint; run make phase1-balanced first or set CHECKPOINT=PATH" >&2; exit 2; }
train --optimizer balanced_qp --checkpoint "$checkpoint" --lr "${FT_LR:-1e-5}" \
  --save_dir "$OUT/phase2/finetune_qp" "$@"
