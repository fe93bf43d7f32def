# Sourced by the NPU recipes: picks the weights they start from and sets BASE_FLAGS.
#   CHECKPOINT=PATH       start from that checkpoint (ours or a zoo/raw state dict)
#   published weights     used when compressai's zoo file for QUALITY is in the torch.hub cache
#   otherwise             a short run of the engine from scratch (BASE_STEPS steps), said in the output
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
# NPU_MODEL=bmshj2018-factorized-tiny gives a fast smoke run (used by the tests).
MODEL="${NPU_MODEL:-bmshj2018-factorized}"
QUALITY="${QUALITY:-1}"
NPU_OUT="$OUT/phase2/npu"
QUALITY_FLAGS=()
[ "$MODEL" = bmshj2018-factorized ] && QUALITY_FLAGS=(--quality "$QUALITY")
NPU_FLAGS=(--model "$MODEL" "${QUALITY_FLAGS[@]}" --batch_size "${BATCH:-8}" --patch_size "${PATCH:-128}"
           "${LENGTH[@]}" "${DATA_FLAGS[@]}" --val_every "${VAL_EVERY:-25}" --lr "${FT_LR:-1e-4}")
zoo_file="$("$PY" -c "from common.models.bmshj2018 import pretrained_path; print(pretrained_path($QUALITY))")"
if [ -n "${CHECKPOINT:-}" ]; then
  echo "starting from CHECKPOINT=$CHECKPOINT"
  BASE_FLAGS=(--checkpoint "$CHECKPOINT")
elif [ -f "$zoo_file" ]; then
  echo "starting from compressai's published weights $zoo_file"
  BASE_FLAGS=(--pretrained)
else
  base="$NPU_OUT/base/last.pt"
  echo "no CHECKPOINT given and no published weights at $zoo_file: starting from a short engine run ($base)"
  if [ ! -f "$base" ]; then
    "$PY" -m common.train --model "$MODEL" "${QUALITY_FLAGS[@]}" --steps "${BASE_STEPS:-150}" --lr 1e-3 \
      --batch_size "${BATCH:-8}" --patch_size "${PATCH:-128}" "${DATA_FLAGS[@]}" --val_every 1000 \
      --recon_every 0 --save_dir "$NPU_OUT/base"
  fi
  BASE_FLAGS=(--checkpoint "$base")
fi
