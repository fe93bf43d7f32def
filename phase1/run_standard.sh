#!/usr/bin/env bash
# Phase 1 baseline: standard Adam on the R-D loss λ·255²·MSE + bpp. Extra arguments go to common.train.
set -euo pipefail
FROM_BASE=1 source "$(dirname "$0")/../scripts/env.sh"
train --optimizer adam --save_dir "$OUT/phase1/standard" "$@"
