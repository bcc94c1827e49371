#!/usr/bin/env bash
# CPU benchmark of one MoE layer (router + expert group) on the cpu-small shape
# of shared/PERFORMANCE.md (d=512, f=1024, E=8, k=2; T = 1, 64, 512) against a
# per-expert loop over OpenBLAS sgemm, both on one thread, side by side in one
# run. Writes bench/results/cpu-layer-<commit>.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg-query -W -f='${Status}' libopenblas-dev 2>/dev/null | grep -q "install ok installed"; then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libopenblas-dev >/dev/null
fi
bash scripts/setup.sh >/dev/null
cmake build >/dev/null   # picks up OpenBLAS if it was just installed
cmake --build build --target moe-cpu-bench

commit=$(git rev-parse --short HEAD)
out=bench/results/cpu-layer-$commit
export OPENBLAS_NUM_THREADS=1 MOERT_NUM_THREADS=1
build/bin/moe-cpu-bench --reps "${REPS:-21}" --commit "$commit" --json "$out.json" | tee "$out.md"
{
  echo
  echo "Machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; one thread each side."
  echo "Reproduce: bash bench/run-cpu.sh"
} >> "$out.md"
