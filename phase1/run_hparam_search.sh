#!/usr/bin/env bash
# Phase 1 grid search of the Balanced hyperparameters: γ ∈ GAMMAS × w_lr ∈ W_LRS (the seed's 4 × 3 grid),
# one run per point, ranked by the final validation R-D loss. Resumable (optuna SQLite study).
set -euo pipefail
FROM_BASE=1 source "$(dirname "$0")/../scripts/env.sh"
"$PY" -m common.search --sampler grid --out_dir "$OUT/phase1/hparam_search" \
  --space "gamma=choice:${GAMMAS:-0.001,0.003,0.005,0.01}" --space "w_lr=choice:${W_LRS:-0.01,0.025,0.05}" \
  "${TRAIN_FLAGS[@]}" --use_balanced --recon_every 0 "$@"
