#!/usr/bin/env bash
# Study 2, fine-tuning (the Balanced R-D paper's Solution 2): every Adam model of study 1 (each λ and
# seed) is trained on for the same number of steps with Adam, with Balanced R-D and with BalancedQP (the
# paper's QP weights for fine-tuning), at a tenth of study 1's learning rate and otherwise its regime (Balanced
# with study 1's and the demo's logit decay γ 0.03); BD-rate of each against the continued Adam curve. Needs the
# runs of study_scratch.sh in runs/studies/scratch (each starts from that run's weight average, the model study 1
# evaluated). BalancedQP runs twice: as the paper's exact QP (its default ridge 1e-6), which drives every model
# to the rate corner here, and with a ridge of 10 times the Gram matrix's mean diagonal (--qp_eps 10), which
# pulls the weights towards uniform as γ does for Balanced (PHASES_OVERVIEW.md, study 2).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
"$PY" -m baselines.compare --out_dir "${RUNS:-runs/studies}/finetune" --bundle_dir "${RESULTS:-results}/study-finetune" \
  --title "Study 2: fine-tuning (Solution 2) from study 1's Adam models, bmshj2018-factorized-mini" \
  --start_from "${RUNS:-runs/studies}/scratch/adam" \
  --lambdas "${LAMBDAS:-0.0001,0.0005,0.0025,0.013}" --seeds "${SEEDS:-0,1,2}" --jobs "${JOBS:-2}" \
  --arm "adam=--optimizer adam" --arm "balanced=--optimizer balanced --gamma 0.03 --w_lr 0.025" \
  --arm "balanced_qp=--optimizer balanced_qp" --arm "balanced_qp_ridge=--optimizer balanced_qp --qp_eps 10" \
  --model bmshj2018-factorized-mini --steps "${STEPS:-1500}" --batch_size 4 --patch_size 64 --val_patch_size 384 \
  --lr 2e-4 --sched cosine --ema_decay 0.99 --eb_aux_lr 1e-2 --val_every 75 --recon_every 0 --num_workers 0 "$@"
