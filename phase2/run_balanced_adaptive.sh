#!/usr/bin/env bash
# Phase 2: Balanced R-D with a γ schedule. GAMMA_STRATEGY is one of constant, follow (γ scaled by the model's
# lr schedule every step), linear, cosine, step, hpcm (the seed's step schedule at the LR milestones) or
# adaptive (driven by the variability of recent validation losses); formulas in balanced_rd/gamma.py.
set -euo pipefail
FROM_BASE=1 source "$(dirname "$0")/../scripts/env.sh"
strategy="${GAMMA_STRATEGY:-hpcm}"
train --use_balanced --gamma "${GAMMA:-0.006}" --w_lr "${W_LR:-0.025}" --gamma_strategy "$strategy" \
  --save_dir "$OUT/phase2/balanced_$strategy" "$@"
