# Sourced by every phase run script. Each variable can be set from the environment or from make
# (e.g. `make phase1-balanced MODEL=hpcm-base DATA=/data/flickr TEST_DATA=/data/kodak EPOCHS=3000`).
# With no DATA the scripts train on the embedded sample photos, sized to finish in minutes on a CPU.
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
PY="${PY:-$REPO/.venv/bin/python}"
OUT="${OUT:-runs}"
MODEL="${MODEL:-hpcm-tiny}"
LAMBDA="${LAMBDA:-0.013}"
LR="${LR:-1e-3}"
BATCH="${BATCH:-8}"
PATCH="${PATCH:-}"
# Data: DATA/TEST_DATA folders, or COCO=dir (raw train2017/val2017 layout).
DATA_FLAGS=()
[ -n "${DATA:-}" ] && DATA_FLAGS+=(--train_dataset "$DATA")
[ -n "${TEST_DATA:-}" ] && DATA_FLAGS+=(--test_dataset "$TEST_DATA")
[ -n "${COCO:-}" ] && DATA_FLAGS+=(--coco_dir "$COCO")
# Length: EPOCHS wins over STEPS; the CPU default is a short run.
if [ -n "${EPOCHS:-}" ]; then LENGTH=(--epochs "$EPOCHS"); else LENGTH=(--steps "${STEPS:-150}"); fi
# Patch size: the model's smallest valid multiple unless PATCH is given (HPCM-Base/Large: 256).
if [ -z "$PATCH" ]; then
  case "$MODEL" in hpcm-base|hpcm-large) PATCH=256 ;; hpcm-tiny) PATCH=64 ;; *) PATCH=128 ;; esac
fi
# Everything but λ (λ sweeps set their own), then the single-λ flags.
RUN_FLAGS=(--model "$MODEL" --lr "$LR" --batch_size "$BATCH" --patch_size "$PATCH" "${LENGTH[@]}"
           "${DATA_FLAGS[@]}" --val_every "${VAL_EVERY:-25}")
TRAIN_FLAGS=("${RUN_FLAGS[@]}" --lambda "$LAMBDA")
train() { "$PY" -m common.train "${TRAIN_FLAGS[@]}" "$@"; }
