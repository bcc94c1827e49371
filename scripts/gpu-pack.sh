#!/usr/bin/env bash
# Packs what scripts/gpu-check.sh needs on a GPU machine that cannot build
# the project: one with the CUDA toolkit, Python (numpy, torch) and no LLVM
# or MLIR, and no network (the lent H100/H200 machines). Run it here, where
# the project builds; it writes .gpu-pack/ (ignored by git, about 60 MB):
#   debs/       the Debian packages of libLLVM, libMLIR, libz3 and LLVM's
#               tools (FileCheck, not, lit), unpacked there under /tmp;
#   build/      bin/ (moe-run, moe-compile, moe-opt, moe-import), the lit
#               site configuration and the runtime's unit tests.
# Then carry .gpu-pack to the GPU machine and run
#   bash scripts/gpu-check.sh --from-pack [--no-bench] [BENCH_ARGS...]
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cmake --build build --target MoEUnitTests

pack=.gpu-pack
rm -rf "$pack"
mkdir -p "$pack/debs" "$pack/build/bin" "$pack/build/test" "$pack/build/unittests"
grep -qx '/.gpu-pack/' .git/info/exclude 2>/dev/null || echo '/.gpu-pack/' >> .git/info/exclude

# The packages this machine's build links (same release as installed).
version=$(dpkg-query -W -f='${Version}' libllvm22)
(cd "$pack/debs" &&
  apt-get download "libllvm22=$version" "libmlir-22=$version" \
    "llvm-22-tools=$version" libz3-4 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
ls "$pack"/debs/libllvm22_*.deb "$pack"/debs/libmlir-22_*.deb \
  "$pack"/debs/llvm-22-tools_*.deb "$pack"/debs/libz3-4_*.deb > /dev/null

cp build/bin/moe-run build/bin/moe-compile build/bin/moe-opt build/bin/moe-import \
  "$pack/build/bin/"
cp build/test/lit.site.cfg.py "$pack/build/test/"
cp build/unittests/MoERuntimeTests "$pack/build/unittests/"
# The site configuration names this checkout: gpu-check.sh rewrites it there.
echo "$PWD" > "$pack/source-root"
# The lent machine's copy of the tree has no git: the benchmark results are
# named after the commit packed here.
commit=$(git rev-parse --short HEAD)
[[ -z "$(git status --porcelain --untracked-files=no)" ]] || commit+=-dirty
echo "$commit" > "$pack/commit"
# What travels to the machine (the tracked files and the pack) must stay
# within 64 MiB.
tree=$(git ls-files -z | xargs -0 du -cb | tail -1 | cut -f1)
packed=$(du -sb "$pack" | cut -f1)
echo "gpu-pack: $((packed / 1048576)) MiB packed, $(((tree + packed) / 1048576)) MiB with the tracked files"
if ((tree + packed > 64 * 1048576)); then
  echo "gpu-pack: over the 64 MiB that travels to a lent machine" >&2
  exit 1
fi
echo "gpu-pack: wrote $pack; carry it (device run: carry [\".gpu-pack\"]) and run" \
     "'bash scripts/gpu-check.sh --from-pack' there"
