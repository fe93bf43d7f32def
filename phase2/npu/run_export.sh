#!/usr/bin/env bash
# ONNX export of every NPU recipe that has been trained (full, encoder, decoder graphs), each checked
# against PyTorch in onnxruntime by the exporter.
set -euo pipefail
source "$(dirname "$0")/../../scripts/env.sh"
npu="$OUT/phase2/npu"
found=0
for recipe in relu_encoder gdnish_all qat distill_ft; do
  ckpt="$npu/$recipe/last.pt"
  [ "$recipe" = distill_ft ] && ckpt="$npu/$recipe/ft_last.pt"
  [ -f "$ckpt" ] || continue
  found=1
  for part in full encoder decoder; do
    "$PY" -m common.export.onnx --ckpt "$ckpt" --part "$part" --out "$npu/onnx/${recipe}_${part}.onnx" \
      --input_size "${INPUT_SIZE:-224}" "$@"
  done
done
[ "$found" = 1 ] || { echo "error: no trained NPU recipe under $npu; run make phase2-npu-relu (or -gdnish, -qat, -distill) first" >&2; exit 2; }
