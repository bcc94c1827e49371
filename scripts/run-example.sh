#!/usr/bin/env bash
# Sets up and builds (scripts/setup.sh), then runs the main job on a bundled
# example: verify the PathMoE model and report its routing structure.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
model=${1:-examples/pathmoe.mlir}
echo "== $model: verify and report path statistics"
build/bin/moe-opt "$model" --moe-path-stats -mlir-print-op-on-diagnostic=false -o /dev/null
