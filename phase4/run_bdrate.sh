#!/usr/bin/env bash
# Phase 4: λ sweeps with standard Adam (the baseline) and with Balanced R-D, same model, data, schedule and
# shared warm start; each point evaluated with real bitstreams on TEST_DATA (default: the embedded test
# photos); then the BD-rate of Balanced against Adam and an R-D figure.
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
lambdas="${LAMBDAS:-0.0035,0.013,0.0483}"
warm=(--warm_start_steps "${WARM_STEPS:-0}")
out="$OUT/phase4"
"$PY" -m baselines.sweep --lambdas "$lambdas" --out_dir "$out/adam" --name adam "${warm[@]}" \
  "${RUN_FLAGS[@]}" --optimizer adam --recon_every 0 "$@"
"$PY" -m baselines.sweep --lambdas "$lambdas" --out_dir "$out/balanced" --name balanced "${warm[@]}" \
  "${RUN_FLAGS[@]}" --use_balanced --gamma "${GAMMA:-0.003}" --w_lr "${W_LR:-0.025}" --recon_every 0 "$@"
"$PY" -m common.rd --anchor "$out/adam/adam.json" --test "$out/balanced/balanced.json" --method "${METHOD:-pchip}" \
  --plot "$out/rd_adam_vs_balanced.png" --csv "$out/bdrate_balanced_vs_adam.csv"
