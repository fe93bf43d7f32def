#!/usr/bin/env bash
# Study 5, where the exact QP (BalancedQP, the project's reconstruction of the paper's Solution 2; the official
# code was not available) breaks down when fine-tuning: study 4's regime (the shipped base model, 800 steps, lr
# 1e-3 cosine, validation on the val/ photos, final evaluation on the test photos), seed 0, λ 0.0013 and 0.004,
# every QP arm with --qp_track_changes true (predicted vs realised change of each log loss per step):
#   qp            the exact QP with Cautious Adam (qp_eps 1e-6)
#   qp_adam       the exact QP with plain Adam (mask off)
#   qp_lr5em5     the exact QP at the paper's fine-tuning lr 5e-5, and qp_lr1em5 at 1e-5
#   qp_eps0_01, qp_eps0_1, qp_eps1   the ridge between exact (1e-6) and near-uniform (10: weights within
#                 [0.4544, 0.5456] whatever the gradients)
# `python -m baselines.qp_changes` then tabulates the weights and the predicted and realised changes per run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
RUNS_DIR="${RUNS:-runs/studies}/qp"
BUNDLE="${RESULTS:-results}/study-qp"
qp="--optimizer balanced_qp --qp_track_changes true"
"$PY" -m baselines.compare --out_dir "$RUNS_DIR" --bundle_dir "$BUNDLE" \
  --title "Study 5: where the exact QP breaks down (fine-tuning the shipped base, seed 0)" \
  --start_checkpoint baselines/pretrained/bmshj2018-factorized-small.pt --anchors "" \
  --lambdas "${LAMBDAS:-0.0013,0.004}" --seeds "${SEEDS:-0}" --jobs "${JOBS:-2}" \
  --arm "adam=--optimizer adam" \
  --arm "qp=$qp" --arm "qp_adam=$qp --cautious false" \
  --arm "qp_lr5em5=$qp --lr 5e-5" --arm "qp_lr1em5=$qp --lr 1e-5" \
  --arm "qp_eps0_01=$qp --qp_eps 0.01" --arm "qp_eps0_1=$qp --qp_eps 0.1" --arm "qp_eps1=$qp --qp_eps 1" \
  --model bmshj2018-factorized-small --steps "${STEPS:-800}" --batch_size 4 --patch_size 64 --val_patch_size 256 \
  --lr 1e-3 --sched cosine --lr_warmup_steps 20 --val_every 40 --recon_every 0 --num_workers 0 "$@"
"$PY" -m baselines.qp_changes "$RUNS_DIR"/qp*/seed*/lambda_* --csv "$BUNDLE/qp_changes.csv"
