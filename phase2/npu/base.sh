# Sourced by the NPU recipes: picks the weights they start from and sets NPU_FLAGS and BASE_FLAGS.
#   CHECKPOINT=PATH       start from that checkpoint (ours or a zoo/raw state dict)
#   published weights     used when compressai's zoo file for QUALITY is in the torch.hub cache
#   otherwise             the shipped base model, baselines/pretrained/bmshj2018-factorized-small.pt (GDN/IGDN,
#                         36,000 steps at λ 0.0048), in study 6's regime: batch 4 of 64 px crops, lr 1e-3 cosine
#                         with 20 warm-up steps, 600 steps (`make study-npu` measures what each recipe costs)
#   NPU_MODEL=NAME        with no CHECKPOINT: a short engine run of that model from scratch (BASE_STEPS steps) as
#                         the start, a pipeline check only (NPU_MODEL=bmshj2018-factorized-tiny: the tests' smoke run)
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
QUALITY="${QUALITY:-1}"
NPU_OUT="$OUT/phase2/npu"
SHIPPED_BASE="$REPO/baselines/pretrained/bmshj2018-factorized-small.pt"
zoo_file="$("$PY" -c "from common.models.bmshj2018 import pretrained_path; print(pretrained_path($QUALITY))")"
SCHEDULE=()
if [ -n "${CHECKPOINT:-}" ]; then
  MODEL="${NPU_MODEL:-bmshj2018-factorized}"
  echo "starting from CHECKPOINT=$CHECKPOINT"
  BASE_FLAGS=(--checkpoint "$CHECKPOINT")
elif [ -z "${NPU_MODEL:-}" ] && [ -f "$zoo_file" ]; then
  MODEL=bmshj2018-factorized
  echo "starting from compressai's published weights $zoo_file"
  BASE_FLAGS=(--pretrained)
elif [ -z "${NPU_MODEL:-}" ]; then
  MODEL=bmshj2018-factorized-small
  echo "starting from the shipped base model $SHIPPED_BASE"
  BASE_FLAGS=(--checkpoint "$SHIPPED_BASE")
  BATCH="${NPU_BATCH:-4}" PATCH="${NPU_PATCH:-64}" FT_LR="${FT_LR:-1e-3}" VAL_EVERY="${VAL_EVERY:-50}"
  [ -z "${EPOCHS:-}" ] && LENGTH=(--steps "${NPU_STEPS:-600}")
  SCHEDULE=(--sched cosine --lr_warmup_steps 20 --val_patch_size 256)
else
  MODEL="$NPU_MODEL"
  base="$NPU_OUT/base/last.pt"
  echo "NPU_MODEL=$MODEL and no CHECKPOINT: starting from a short engine run ($base), a pipeline check only"
  if [ ! -f "$base" ]; then
    "$PY" -m common.train --model "$MODEL" --steps "${BASE_STEPS:-150}" --lr 1e-3 --batch_size "${NPU_BATCH:-8}" \
      --patch_size "${NPU_PATCH:-128}" "${DATA_FLAGS[@]}" --val_every 1000 --recon_every 0 --save_dir "$NPU_OUT/base"
  fi
  BASE_FLAGS=(--checkpoint "$base")
fi
QUALITY_FLAGS=()
[ "$MODEL" = bmshj2018-factorized ] && [ "${BASE_FLAGS[0]}" = --pretrained ] && QUALITY_FLAGS=(--quality "$QUALITY")
NPU_FLAGS=(--model "$MODEL" "${QUALITY_FLAGS[@]}" --batch_size "${NPU_BATCH:-${BATCH:-8}}"
           --patch_size "${NPU_PATCH:-${PATCH:-128}}" "${LENGTH[@]}" "${DATA_FLAGS[@]}" --val_every "${VAL_EVERY:-25}"
           --lr "${FT_LR:-1e-4}" "${SCHEDULE[@]}")
