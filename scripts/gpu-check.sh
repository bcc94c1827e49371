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
#   bash scripts/gpu-check.sh [--from-pack] [--within SECONDS]
#                             [--no-bench | --bench-only] [BENCH_ARGS...]
#
# --no-bench runs the tests only, --bench-only the benchmarks only.
# --within SECONDS fits both halves into one command of that many seconds:
# the tests get at most half (lit --max-time; what they leave out is
# reported as not run), the benchmarks' --budget is what remains less a
# minute for their start and report. For a lent machine's single command:
#
#   bash scripts/gpu-check.sh --from-pack --within 480
#
# Where $OUT is set (the lent machines' folder for results), everything
# printed goes to $OUT/gpu-check.log as well, and the benchmark results are
# copied there.
#
# --from-pack: on a machine that cannot build the project (no LLVM/MLIR, no
# network: the lent H100/H200 machines), use what scripts/gpu-pack.sh packed
# into .gpu-pack/ here: the LLVM/MLIR libraries and LLVM's test tools are
# unpacked under /tmp, the binaries and the lit configuration put in build/.
# The tests that build or compile without a GPU (the CUDA example app,
# cuda-compile) are left to the machine that made the pack.
set -uo pipefail
cd "$(dirname "$0")/.."

from_pack=0 within=0
if [[ "${1:-}" == "--from-pack" ]]; then from_pack=1; shift; fi
if [[ "${1:-}" == "--within" ]]; then
  within=${2:-}; shift 2 || true
  [[ "$within" =~ ^[0-9]+$ ]] && ((within >= 180)) || {
    echo "gpu-check: --within takes whole seconds, at least 180 (tests and benchmarks need a few minutes)"; exit 2; }
fi
started=$SECONDS
if [[ -n "${OUT:-}" ]]; then
  exec > >(tee "$OUT/gpu-check.log") 2>&1
fi
bench=1 tests=1
if [[ "${1:-}" == "--no-bench" ]]; then bench=0; shift;
elif [[ "${1:-}" == "--bench-only" ]]; then tests=0; shift; fi

if ! nvidia-smi -L; then
  echo "gpu-check: no NVIDIA GPU visible (nvidia-smi -L failed)"; exit 2
fi
export PATH="${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"

lit_tests=(build/test/e2e/cuda build/test/e2e/decoder/app-cuda.test build/test/e2e/cuda-compile.test)
if ((from_pack)); then
  pack=.gpu-pack
  [[ -d $pack/debs ]] || { echo "gpu-check: no $pack (run scripts/gpu-pack.sh where the project builds)"; exit 2; }
  root=/tmp/moe-llvm22
  rm -rf "$root" && mkdir -p "$root"
  for deb in "$pack"/debs/*.deb; do dpkg -x "$deb" "$root" || exit 1; done
  # The binaries look for the libraries under /usr/lib/llvm-22 (their
  # runpath), the lit configuration for the tools there.
  if [[ ! -e /usr/lib/llvm-22 ]]; then
    ln -s "$root/usr/lib/llvm-22" /usr/lib/llvm-22 || exit 1
  fi
  export LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  mkdir -p build/bin build/test build/unittests
  cp "$pack"/build/bin/* build/bin/ && cp "$pack"/build/unittests/* build/unittests/ || exit 1
  sed "s|$(cat "$pack/source-root")|$PWD|g" "$pack/build/test/lit.site.cfg.py" > build/test/lit.site.cfg.py
  if ldd build/bin/moe-run | grep "not found"; then
    echo "gpu-check: moe-run misses the libraries above on this machine"; exit 1
  fi
  lit_tests=(build/test/e2e/cuda)
  export MOE_BENCH_COMMIT=$(cat "$pack/commit" 2>/dev/null)
elif [[ -f build/build.ninja ]]; then
  cmake --build build || exit 1
  cmake --build build --target MoEUnitTests || exit 1
else
  bash scripts/setup.sh || exit 1
  cmake --build build --target MoEUnitTests || exit 1
fi

# Debian's python3 has numpy (the references need it); elsewhere the
# python3 on PATH.
PY=/usr/bin/python3
[[ -x $PY ]] && $PY -c "import numpy" 2>/dev/null || PY=python3
status=0
if ((tests)); then
  echo "== GPU lit tests"
  # lit under the python that has numpy: %python in the tests is lit's own.
  lit_limit=()
  if ((within)); then
    lit_seconds=$((within / 2 - (SECONDS - started)))
    lit_limit=(--max-time $((lit_seconds > 30 ? lit_seconds : 30)))
  fi
  $PY /usr/lib/llvm-22/bin/lit -v "${lit_limit[@]}" "${lit_tests[@]}" || status=1
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
fi

if ((bench)); then
  echo "== benchmarks"
  if ((from_pack)); then export MOE_BENCH_NO_BUILD=1; fi
  bench_budget=()
  left=$((within - (SECONDS - started) - 60))
  if ((within)); then bench_budget=(--budget "$left"); fi
  if ((within && left < 60)); then
    echo "gpu-check: the tests left ${left} s of --within $within: no benchmarks"; status=1
  else
    bash bench/gpu/run.sh "${bench_budget[@]}" "$@" || status=1
    if [[ -n "${OUT:-}" ]]; then
      cp bench/results/gpu-layer-* "$OUT"/ 2>/dev/null && echo "gpu-check: results copied to $OUT"
    fi
  fi
fi
echo "gpu-check: $([[ $status == 0 ]] && echo all passed || echo FAILURES above)"
exit $status
