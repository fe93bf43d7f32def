#!/usr/bin/env bash
# Seed 002 §4: ReLU encoder with INT8 fake quantization of the encoder (entropy model excluded):
# observers calibrate for QAT_CALIB steps, everything is frozen from QAT_FREEZE on.
set -euo pipefail
source "$(dirname "$0")/base.sh"
"$PY" -m common.train "${NPU_FLAGS[@]}" "${BASE_FLAGS[@]}" --act relu --replace_parts encoder --train_scope all \
  --qat true --qat_scope encoder --qat_exclude_entropy true --qat_calib_steps "${QAT_CALIB:-20}" \
  --qat_freeze_after "${QAT_FREEZE:-100}" --loss_type rd --lambda_bpp 0.01 --save_dir "$NPU_OUT/qat" "$@"
