#!/usr/bin/env bash
# Phase 1: Balanced R-D (Cautious Adam + FAMO over the tasks distortion and rate), same setting as
# run_standard.sh. The run folder gets task_weights.png and the weights per step in train_log.csv.
set -euo pipefail
FROM_BASE=1 source "$(dirname "$0")/../scripts/env.sh"
train --use_balanced --gamma "${GAMMA:-0.003}" --w_lr "${W_LR:-0.025}" --save_dir "$OUT/phase1/balanced" "$@"
