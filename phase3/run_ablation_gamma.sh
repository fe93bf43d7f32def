#!/usr/bin/env bash
# Phase 3 ablation of the per-scale γ (s1/s2/s3): uniform, increasing and decreasing, as in the seed.
set -euo pipefail
here="$(dirname "$0")"
RUN_NAME=gamma_uniform GAMMAS="0.003 0.003 0.006 0.006 0.006" "$here/run_hierarchical.sh" "$@"
RUN_NAME=gamma_increasing GAMMAS="0.003 0.003 0.004 0.006 0.008" "$here/run_hierarchical.sh" "$@"
RUN_NAME=gamma_decreasing GAMMAS="0.003 0.003 0.008 0.006 0.004" "$here/run_hierarchical.sh" "$@"
