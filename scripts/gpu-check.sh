#!/usr/bin/env bash
# Everything that needs an NVIDIA GPU, in one go, for a session that has one
# (a few minutes of device time): build, the GPU lit tests (every reference
# case and every decoder on --device cuda against the NumPy references,
# compute-sanitizer memcheck with skewed routing, the --wgmma warpgroup tiles
# on an H100/H200 with memcheck, racecheck and synccheck, the CUDA example app), the
# runtime's real-GPU unit test, then the GPU benchmarks (bench/gpu), whose
# results land in bench/results. Prints what ran and what it found; exits
# non-zero if a test failed.
#
#   bash scripts/gpu-check.sh [--no-bench] [BENCH_ARGS...]
set -uo pipefail
cd "$(dirname "$0")/.."

bench=1
if [[ "${1:-}" == "--no-bench" ]]; then bench=0; shift; fi

if ! nvidia-smi -L; then
  echo "gpu-check: no NVIDIA GPU visible (nvidia-smi -L failed)"; exit 2
fi
export PATH="${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"

if [[ -f build/build.ninja ]]; then
  cmake --build build || exit 1
else
  bash scripts/setup.sh || exit 1
fi
cmake --build build --target MoEUnitTests || exit 1

# Debian's python3 has numpy (the references need it).
PY=/usr/bin/python3; [[ -x $PY ]] || PY=python3
status=0
echo "== GPU lit tests"
/usr/lib/llvm-22/bin/lit -v build/test/e2e/cuda build/test/e2e/decoder/app-cuda.test \
  build/test/e2e/cuda-compile.test || status=1
echo "== runtime on the real GPU"
MOERT_CUDA_SYNC_EACH_LAUNCH=1 build/unittests/MoERuntimeTests --gtest_filter="*RealGpu*" || status=1

echo "== per-kernel profile of one decode-sized and one prefill-sized layer"
rm -rf build/gpu-check-profile && mkdir -p build/gpu-check-profile
for case in t1 skewed skewed_bf16; do
  $PY scripts/moe_reference.py gen --case $case --out build/gpu-check-profile/$case > /dev/null &&
  MOERT_CUDA_PROFILE=1 build/bin/moe-run build/gpu-check-profile/$case/config.json --device cuda \
    --weights build/gpu-check-profile/$case/weights.safetensors \
    --inputs build/gpu-check-profile/$case/inputs.safetensors \
    --outputs build/gpu-check-profile/$case/out.safetensors || status=1
done
# The Hopper warpgroup tiles (--wgmma) on an sm_90 GPU, and the mma.sync
# tiles of the same case for comparison.
if [[ "$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1)" == "9.0" ]]; then
  case=skewed_warpgroups
  $PY scripts/moe_reference.py gen --case $case --out build/gpu-check-profile/$case > /dev/null
  for flags in "" "--wgmma"; do
    MOERT_CUDA_PROFILE=1 build/bin/moe-run build/gpu-check-profile/$case/config.json --device cuda $flags \
      --weights build/gpu-check-profile/$case/weights.safetensors \
      --inputs build/gpu-check-profile/$case/inputs.safetensors \
      --outputs build/gpu-check-profile/$case/out.safetensors || status=1
  done
fi

if ((bench)); then
  echo "== benchmarks"
  bash bench/gpu/run.sh "$@" || status=1
fi
echo "gpu-check: $([[ $status == 0 ]] && echo all passed || echo FAILURES above)"
exit $status
