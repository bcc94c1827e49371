#!/usr/bin/env bash
# GPU benchmark of one MoE layer on the shapes of shared/PERFORMANCE.md (and a
# Looped-MoE decode step): moe-run --device cuda against torch eager,
# torch._grouped_mm and a Triton fused MoE, side by side in one run. Writes
# bench/results/gpu-layer-<commit>.{json,md}. One command on the GPU machine:
#
#   bash bench/gpu/run.sh            # everything, ~6-7 minutes after the build
#   bash bench/gpu/run.sh --quick    # T = 1, 128 only
#   bash bench/gpu/run.sh --dry-run  # no GPU: files, CPU checks, NaN timings
#
# Other flags go to bench/gpu/gpu_bench.py (--help). PYTHON=... picks the
# interpreter; by default the first of python3, /usr/bin/python3, python
# that imports torch (else numpy: ours only, no peers).
set -euo pipefail
cd "$(dirname "$0")/../.."

# Build the tools (a fresh checkout: scripts/setup.sh configures and builds).
# MOE_BENCH_NO_BUILD=1 uses build/bin as it is.
if [[ -z "${MOE_BENCH_NO_BUILD:-}" ]]; then
  if [[ ! -f build/build.ninja ]]; then
    bash scripts/setup.sh
  fi
  cmake --build build --target moe-run moe-opt moe-import
fi

if [[ -z "${PYTHON:-}" ]]; then
  for py in python3 /usr/bin/python3 python; do
    if command -v "$py" >/dev/null && "$py" -c "import torch, numpy" 2>/dev/null; then
      PYTHON=$py; break
    fi
  done
fi
if [[ -z "${PYTHON:-}" ]]; then
  for py in python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null && "$py" -c "import numpy" 2>/dev/null; then
      PYTHON=$py; break
    fi
  done
  echo "run.sh: no python with torch: the peers are reported n/a" >&2
fi
: "${PYTHON:?run.sh: no python3 with numpy}"

# moe-run --device cuda needs ptxas and fatbinary (--cuda-toolkit, CUDA_HOME,
# /usr/local/cuda or PATH); say so early rather than in every row.
if [[ " $* " != *" --dry-run "* ]] && [[ -z "${CUDA_HOME:-}" ]] \
    && [[ ! -x /usr/local/cuda/bin/ptxas ]] && ! command -v ptxas >/dev/null; then
  echo "run.sh: warning: no CUDA toolkit found (ptxas); moe-run --device cuda" \
       "will fail: set CUDA_HOME or pass --moe-run-arg=--cuda-toolkit=DIR" >&2
fi

exec "$PYTHON" bench/gpu/gpu_bench.py "$@"
