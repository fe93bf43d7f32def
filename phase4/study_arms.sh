#!/usr/bin/env bash
# Study 4, designed to decide (fixed before it was run; PHASES_OVERVIEW.md, study 4): does Balanced R-D beat Adam
# when fine-tuning, by how much, and which of its three ingredients does it? Every run starts from the shipped
# base model (baselines/pretrained/bmshj2018-factorized-small.pt) and fine-tunes it in the demo's regime (800
# steps, batch 4 of 64 px crops of the 6 training photos, lr 1e-3 cosine with 20 warm-up steps), validating on the
# 2 validation photos (convergence verdict); the 4 test photos are read once, by the final real-bitstream
# evaluation. 8 seeds x 4 λ x 6 arms, each arm one change away from its neighbour:
#   adam          Adam on λ·255²·MSE + bpp (the reference arm)
#   adam_log      Adam on the uniformly weighted log losses log(1 + D) + log(1 + R)  (Balanced, mask and FAMO off)
#   cautious      Cautious Adam (the sign mask) on λ·255²·MSE + bpp
#   cautious_log  Cautious Adam on the uniform log losses                            (Balanced, FAMO off)
#   famo_adam     FAMO task weighting with plain Adam                                (Balanced, mask off)
#   balanced      Balanced R-D: Cautious Adam + FAMO (γ 0.03, w_lr 0.025, as the demo)
# The log-loss arms step along the FAMO combination sum_i a_i grad(l_i), a_i ∝ w_i / (1 + l_i), normalised to
# sum 1: the gradient of the log losses divided by a positive per-step scalar, which Adam's normalisation largely
# absorbs. Primary outcome: the paired per-seed BD-rate (pchip) of balanced vs adam, its 95 % t-interval; an
# interval that contains 0 is inconclusive. `python -m baselines.stats` adds the intervals, cubic and akima, the
# bootstrap and the power line to the bundle (the make target runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"
BUNDLE="${RESULTS:-results}/study-arms"
"$PY" -m baselines.compare --out_dir "${RUNS:-runs/studies}/arms" --bundle_dir "$BUNDLE" \
  --title "Study 4: which part of Balanced R-D acts (fine-tuning the shipped base, 8 seeds)" \
  --start_checkpoint baselines/pretrained/bmshj2018-factorized-small.pt \
  --lambdas "${LAMBDAS:-0.0004,0.0013,0.004,0.013}" --seeds "${SEEDS:-0,1,2,3,4,5,6,7}" --jobs "${JOBS:-2}" \
  --arm "adam=--optimizer adam" \
  --arm "adam_log=--optimizer balanced --famo false --cautious false" \
  --arm "cautious=--optimizer cautious_adam" \
  --arm "cautious_log=--optimizer balanced --famo false" \
  --arm "famo_adam=--optimizer balanced --cautious false --gamma 0.03 --w_lr 0.025" \
  --arm "balanced=--optimizer balanced --gamma 0.03 --w_lr 0.025" \
  --model bmshj2018-factorized-small --steps "${STEPS:-800}" --batch_size 4 --patch_size 64 --val_patch_size 256 \
  --lr 1e-3 --sched cosine --lr_warmup_steps 20 --val_every 40 --recon_every 0 --num_workers 0 "$@"
"$PY" -m baselines.stats "$BUNDLE"
