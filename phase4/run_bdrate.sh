#!/usr/bin/env bash
# Phase 4: λ sweeps with standard Adam (the baseline) and with Balanced R-D, same model, data and schedule,
# both starting from one shared Adam warm start; each point evaluated with real bitstreams on TEST_DATA
# (default: the embedded test photos); then the BD-rate of Balanced against Adam and an R-D figure.
#
# The defaults are the demo's schedule on the embedded samples (bmshj2018-factorized, λ 0.0009/0.0035/0.013,
# a 400-step warm start, then 160 steps per λ). Balanced R-D weights the logs of the task losses, so λ moves
# its operating point only while λ·255²·MSE is of order 1: trained from scratch for a few hundred steps
# (PSNR near 10 dB) every λ lands on the same low-rate point, and the warm start is what avoids that.
set -euo pipefail
[ -n "${MODEL:-}" ] || { MODEL=bmshj2018-factorized; PATCH="${PATCH:-96}"; }
LR="${LR:-5e-4}" STEPS="${STEPS:-160}"
source "$(dirname "$0")/../scripts/env.sh"
lambdas="${LAMBDAS:-0.0009,0.0035,0.013}"
warm_steps="${WARM_STEPS:-400}"
out="$OUT/phase4"
schedule=(--lr_warmup_steps "${LR_WARMUP_STEPS:-20}" --sched "${SCHED:-cosine}" --recon_every 0)
adam_start=(--warm_start_steps "$warm_steps" --warm_start_lr "${WARM_LR:-1e-3}")
balanced_start=()
[ "$warm_steps" -gt 0 ] && balanced_start=(--start_checkpoint "$out/adam/warm_start/last.pt")
"$PY" -m baselines.sweep --lambdas "$lambdas" --out_dir "$out/adam" --name adam "${adam_start[@]}" \
  "${RUN_FLAGS[@]}" "${schedule[@]}" --optimizer adam "$@"
"$PY" -m baselines.sweep --lambdas "$lambdas" --out_dir "$out/balanced" --name balanced "${balanced_start[@]}" \
  "${RUN_FLAGS[@]}" "${schedule[@]}" --use_balanced --gamma "${GAMMA:-0.003}" --w_lr "${W_LR:-0.025}" "$@"
"$PY" -m common.rd --anchor "$out/adam/adam.json" --test "$out/balanced/balanced.json" --method "${METHOD:-pchip}" \
  --plot "$out/rd_adam_vs_balanced.png" --csv "$out/bdrate_balanced_vs_adam.csv"
