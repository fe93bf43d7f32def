#!/usr/bin/env bash
# Phase 2 hyperparameter search with optuna's TPE sampler over γ and w_lr (log-uniform ranges), TRIALS
# runs ranked by the final validation R-D loss; resumable (SQLite study in the output folder).
set -euo pipefail
FROM_BASE=1 source "$(dirname "$0")/../scripts/env.sh"
"$PY" -m common.search --sampler tpe --trials "${TRIALS:-8}" --out_dir "$OUT/phase2/optuna" \
  --space "gamma=log:${GAMMA_MIN:-0.0005}:${GAMMA_MAX:-0.02}" --space "w_lr=log:${W_LR_MIN:-0.005}:${W_LR_MAX:-0.1}" \
  "${TRAIN_FLAGS[@]}" --use_balanced --recon_every 0 "$@"
