#!/usr/bin/env bash
# Seed 000: encoder GDN -> ReLU, only the replaced layers train, loss a·L1 + (1-a)·(1-MS-SSIM).
set -euo pipefail
source "$(dirname "$0")/base.sh"
"$PY" -m common.train "${NPU_FLAGS[@]}" "${BASE_FLAGS[@]}" --act relu --replace_parts encoder \
  --train_scope replaced --loss_type recon --alpha_l1 0.4 --save_dir "$NPU_OUT/relu_encoder" "$@"
