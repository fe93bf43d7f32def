#!/usr/bin/env bash
# Seeds 002/003: every GDN/IGDN -> GDNishLiteEnc/Dec (identity-initialised), all layers train, RD loss.
set -euo pipefail
source "$(dirname "$0")/base.sh"
"$PY" -m common.train "${NPU_FLAGS[@]}" "${BASE_FLAGS[@]}" --act gdnish --replace_parts all --train_scope all \
  --enc_t 2.0 --enc_kdw 3 --enc_eca true --enc_residual true --dec_k 3 --dec_gmin 0.5 --dec_gmax 2.0 \
  --dec_residual true --loss_type rd --lambda_bpp 0.01 --save_dir "$NPU_OUT/gdnish_all" "$@"
