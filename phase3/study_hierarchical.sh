#!/usr/bin/env bash
# Study 3, hierarchical balancing: hpcm-tiny trained from scratch at each λ of 0.0018/0.0035/0.0067/0.013 with
# standard Adam, 2-task Balanced R-D (distortion, rate), 5-task Balanced R-D (distortion, z rate and the y rate
# of each HPCM scale, the seed's per-task γ) and the same 5 tasks starting from and decaying towards the weights
# that give distortion its 2-task share (0.5, and 0.125 per rate part). BD-rates against Adam. Batch 4 of 64 px
# crops, cosine decay from 1e-3, a weight average (EMA 0.99); two runs at a time, one core each.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
five=(--optimizer balanced --hierarchical_tasks true --gamma 0.003 0.003 0.008 0.006 0.004 --w_lr 0.025)
"$PY" -m baselines.compare --out_dir "${RUNS:-runs/studies}/hierarchical" \
  --bundle_dir "${RESULTS:-results}/study-hierarchical" \
  --title "Study 3: hierarchical balancing, hpcm-tiny, sample photos" \
  --lambdas "${LAMBDAS:-0.0018,0.0035,0.0067,0.013}" --seeds "${SEEDS:-0}" --jobs "${JOBS:-2}" \
  --arm "adam=--optimizer adam" --arm "balanced2=--optimizer balanced --gamma 0.003 --w_lr 0.025" \
  --arm "balanced5=${five[*]}" --arm "balanced5_prior=${five[*]} --prior_weights 0.5 0.125 0.125 0.125 0.125" \
  --model hpcm-tiny --steps "${STEPS:-4000}" --batch_size 4 --patch_size 64 --val_patch_size 256 \
  --lr 1e-3 --sched cosine --ema_decay 0.99 --val_every 200 --recon_every 0 --num_workers 0 "$@"
