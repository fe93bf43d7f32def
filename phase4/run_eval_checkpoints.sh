#!/usr/bin/env bash
# Phase 4: real-bitstream evaluation of trained or official checkpoints (one R-D point each) on a test set,
# and BD-rates against published curves of the same set.
#   CHECKPOINTS="q1.pth q2.pth ..." MODEL=hpcm-base TEST_DATA=/data/kodak DATASET=kodak ./phase4/run_eval_checkpoints.sh
# DATASET (kodak, clic2020-professional, clic2020-professional-valid, clic2020-mobile, tecnick) picks the published curves; ANCHOR the
# anchor among them (default VTM where published, else the paper curve of the model).
set -euo pipefail
source "$(dirname "$0")/../scripts/env.sh"
[ -n "${CHECKPOINTS:-}" ] || { echo "error: set CHECKPOINTS to one or more checkpoint files" >&2; exit 2; }
[ -n "${TEST_DATA:-}" ] || { echo "error: set TEST_DATA to the folder of test images (e.g. Kodak)" >&2; exit 2; }
read -r -a checkpoints <<< "$CHECKPOINTS"
name="${NAME:-$MODEL}"
result="$OUT/phase4/eval/${name}_${DATASET:-custom}.json"
"$PY" -m common.eval --model "$MODEL" --checkpoint "${checkpoints[@]}" --dataset "$TEST_DATA" \
  --output "$result" --name "$name" ${DATASET:+--test_set "$DATASET"} "$@"
if [ -n "${DATASET:-}" ]; then
  published="baselines/published/$DATASET"
  [ -d "$published" ] || { echo "error: no published curves for DATASET=$DATASET (see baselines/published/)" >&2; exit 2; }
  anchor="${ANCHOR:-$published/vtm.json}"
  [ -f "$anchor" ] || anchor="$published/paper-${MODEL}_mse.json"
  others=()
  for f in "$published/paper-${MODEL}_mse.json" "$published/bpg_444_x265_ycbcr.json"; do
    [ -f "$f" ] && [ "$f" != "$anchor" ] && others+=("$f")
  done
  "$PY" -m common.rd --anchor "$anchor" --test "$result" "${others[@]}" \
    --plot "${result%.json}_rd.png" --csv "${result%.json}_bdrate.csv"
fi
