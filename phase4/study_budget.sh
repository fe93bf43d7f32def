#!/usr/bin/env bash
# Study 7, from scratch at fractions of the budget (fixed before it was run): does Balanced R-D get ahead of Adam
# early in training, and does the lead (or lag) last? Study 1's model and optimizers (bmshj2018-factorized-mini from
# random weights; Adam against Balanced with γ 0.03, w_lr 0.025, both following the lr), on a fifth of its budget:
# STEPS steps in all (2000: batch 4 of 64 px crops of the 6 training photos, lr 2e-3 dropped ×0.1 at 70 % and ×0.01
# at 77 % of the steps, EMA 0.99, aux lr 1e-2 for the entropy bottleneck's quantiles, validation on the 2 validation
# photos), 8 seeds x study 1's 4 λ (0.0001, 0.0005, 0.0025, 0.013). Every run keeps its weights after 5, 10, 25 and
# 50 % of the steps (--keep_steps); the 4 test photos are read only by the real-bitstream evaluations, of these kept
# models and of the final ones.
# Outcome: at each fraction, Balanced's BD-rate and BD-PSNR against Adam (pchip and cubic, paired by seed, 95 %
# t-intervals; an interval containing 0 is inconclusive), the mean PSNR and bpp of each arm at each λ, and the
# effect the study could detect at 80 % power (python -m baselines.budget: BUNDLE/budget.md, budget.json,
# budget.png; each fraction's own bundle and stats under BUNDLE/budget/).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
RUNS_DIR="${RUNS:-runs/studies}/budget"
BUNDLE="${RESULTS:-results}/study-budget"
STEPS="${STEPS:-2000}"
"$PY" -m baselines.compare --out_dir "$RUNS_DIR" --bundle_dir "$BUNDLE" \
  --title "Study 7: from scratch at fractions of the budget, bmshj2018-factorized-mini, Adam vs Balanced" \
  --lambdas "${LAMBDAS:-0.0001,0.0005,0.0025,0.013}" --seeds "${SEEDS:-0,1,2,3,4,5,6,7}" --jobs "${JOBS:-2}" \
  --anchors "" --arm "adam=--optimizer adam" \
  --arm "balanced=--optimizer balanced --gamma 0.03 --w_lr 0.025 --gamma_strategy follow --w_lr_sched follow" \
  --model bmshj2018-factorized-mini --steps "$STEPS" --batch_size 4 --patch_size 64 --val_patch_size 384 \
  --lr 2e-3 --sched multistep --lr_milestones $((STEPS * 70 / 100)) $((STEPS * 77 / 100)) --lr_factors 0.1 0.01 \
  --lr_milestone_unit step --ema_decay 0.99 --eb_aux_lr 1e-2 --val_every "${VAL_EVERY:-50}" --recon_every 0 \
  --num_workers 0 --keep_steps $((STEPS / 20)) $((STEPS / 10)) $((STEPS / 4)) $((STEPS / 2)) "$@"
"$PY" -m baselines.stats "$BUNDLE"
"$PY" -m baselines.budget "$RUNS_DIR" "$BUNDLE" --jobs "${JOBS:-2}"
