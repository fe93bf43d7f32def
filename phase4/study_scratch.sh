#!/usr/bin/env bash
# Study 1, from scratch (the Balanced R-D paper's Solution 1): standard Adam against Balanced R-D (Cautious Adam +
# FAMO over distortion and rate), each λ of 0.0001/0.0005/0.0025/0.013 trained from random weights with 3 seeds,
# on the embedded sample photos, evaluated with real bitstreams on the 4 test photos. The model and schedule are
# bmshj2018-factorized-mini, batch 4 of 64 px crops, 10000 steps at lr 2e-3 dropped to 2e-4 at step 7000 and to
# 2e-5 at step 7700, a weight average (EMA 0.99) and a faster aux optimizer for the entropy bottleneck's quantiles.
# The drops end before the last 20 % of the run, which the convergence verdict judges: with a cosine decay to zero
# most runs' rate was still rising by 1-3 % there, because the gain that a decaying lr brings (the iterate settling
# as the gradient noise shrinks) came inside that window (PHASES_OVERVIEW.md, study 1). Balanced uses the demo's logit
# decay γ 0.03, and the ladder reaches down to the demo's lowest λ: with the paper's γ 0.003 and a ladder of
# 0.0018…0.013, Balanced ended at about the same rate for every λ and its curve met Adam's nowhere
# (PHASES_OVERVIEW.md, study 1). γ and w_lr follow the model's lr (both ×0.1 at step 7000, ×0.01 at 7700): the
# loss changes that move FAMO's logits shrink with the lr, and a γ that does not shrink with them pulls the weights
# back towards uniform. With γ on a cosine over the whole run instead, γ did not drop with the lr (21 % of its
# start at step 7000), so against loss changes ten times smaller the decay grew tenfold, the weights jumped towards
# uniform, and the model spent the rest of the run adapting to them (its bpp still rising 1.2-4.4 % over the last
# 20 %, results at commit e80e8cf).
# Two runs at a time, one core each.
#
# Runs go to runs/studies/scratch (resumable; study_finetune.sh starts from its Adam models), the bundle to
# results/study-scratch (summary.json with the command, git commit and wall time; python -m common.report).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
"$PY" -m baselines.compare --out_dir "${RUNS:-runs/studies}/scratch" --bundle_dir "${RESULTS:-results}/study-scratch" \
  --title "Study 1: from scratch (Solution 1), bmshj2018-factorized-mini, sample photos" \
  --lambdas "${LAMBDAS:-0.0001,0.0005,0.0025,0.013}" --seeds "${SEEDS:-0,1,2}" --jobs "${JOBS:-2}" \
  --arm "adam=--optimizer adam" --arm "balanced=--optimizer balanced --gamma 0.03 --w_lr 0.025 --gamma_strategy follow --w_lr_sched follow" \
  --model bmshj2018-factorized-mini --steps "${STEPS:-10000}" --batch_size 4 --patch_size 64 --val_patch_size 384 \
  --lr 2e-3 --sched multistep --lr_milestones 7000 7700 --lr_factors 0.1 0.01 --lr_milestone_unit step --ema_decay 0.99 --eb_aux_lr 1e-2 --val_every 200 --recon_every 0 --num_workers 0 "$@"
