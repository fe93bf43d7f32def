#!/usr/bin/env bash
# Seed 001: the decoder's ConvTranspose2d -> Upsample+Conv2d student, distilled from its teacher
# (λ1·L1 + λ2·(1-MS-SSIM) against the teacher's output), then fine-tuned against the images.
set -euo pipefail
source "$(dirname "$0")/base.sh"
"$PY" -m common.train "${NPU_FLAGS[@]}" "${BASE_FLAGS[@]}" --distill --decoder_upsample true \
  --lr "${DISTILL_LR:-1e-3}" --sched cosine --save_dir "$NPU_OUT/distill" "$@"
"$PY" -m common.train "${NPU_FLAGS[@]}" --resume_student "$NPU_OUT/distill/best_msssim.pt" --loss_type recon \
  --save_dir "$NPU_OUT/distill_ft" "$@"
