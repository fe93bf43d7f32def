#!/usr/bin/env bash
# Phase 3: hierarchical balancing over 5 tasks of an HPCM model: distortion, z rate, and the y rate of
# each scale (s1: steps 1-2, s2: steps 3-5, s3: steps 6-11), with one γ per task
# (GAMMAS, in that order; the seed's per-scale 0.008/0.006/0.004 for s1/s2/s3). The run folder's
# task_weights.png shows the per-scale weights.
set -euo pipefail
FROM_BASE=hpcm-tiny source "$(dirname "$0")/../scripts/env.sh"
case "$MODEL" in hpcm-*) ;; *) echo "error: phase 3 needs an HPCM model (MODEL=hpcm-tiny|hpcm-base|hpcm-large), got $MODEL" >&2; exit 2 ;; esac
read -r -a gammas <<< "${GAMMAS:-0.003 0.003 0.008 0.006 0.004}"
follow=()
[ "${GAMMA_STRATEGY:-}" = follow ] && follow=(--gamma_strategy follow --w_lr_sched follow)
train --use_balanced --hierarchical_tasks true --gamma "${gammas[@]}" --w_lr "${W_LR:-0.025}" "${follow[@]}" \
  --save_dir "$OUT/phase3/${RUN_NAME:-hierarchical}" "$@"
