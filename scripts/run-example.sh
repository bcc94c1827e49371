#!/usr/bin/env bash
# Sets up and builds (scripts/setup.sh), then runs the main job on the bundled
# example: a looped PathMoE model (examples/pathmoe_looped/config.json: 4 layers
# with routers shared over blocks of 2 and block decisions, looped 3 times
# with early exits) is imported, compiled for the CPU and run on 64 tokens of
# random weights; the result is checked against the NumPy reference.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
example=examples/pathmoe_looped
out=build/example
PY=/usr/bin/python3   # Debian's python3, which has python3-numpy
mkdir -p "$out"

echo "== import $example/config.json -> $out/model.mlir"
build/bin/moe-import "$example/config.json" -o "$out/model.mlir"
build/bin/moe-opt "$out/model.mlir" --moe-path-stats -mlir-print-op-on-diagnostic=false -o /dev/null

echo "== random weights and 64 input tokens"
$PY scripts/random_checkpoint.py "$example/config.json" "$out" --tokens 64

echo "== compile for the CPU and run"
build/bin/moe-run "$out/model.mlir" --weights "$out/weights.safetensors" \
  --inputs "$out/inputs.safetensors" --outputs "$out/outputs.safetensors" --stats

echo "== compare with the NumPy reference"
$PY scripts/moe_reference.py run --config "$example/config.json" \
  --weights "$out/weights.safetensors" --inputs "$out/inputs.safetensors" \
  --outputs "$out/reference.safetensors"
$PY scripts/moe_reference.py compare --golden "$out/reference.safetensors" \
  --actual "$out/outputs.safetensors"
echo "outputs: $out/outputs.safetensors"
