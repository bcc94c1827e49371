#!/usr/bin/env bash
# Sets up and builds (scripts/setup.sh), then runs every test: the lit suites
# (FileCheck, -verify-diagnostics, the NumPy reference's tests) and the
# GoogleTest unit tests, which lit runs too. Ends with "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh || { echo "0 passed, 1 failed (setup or build failed)"; exit 1; }
cmake --build build --target MoEUnitTests || { echo "0 passed, 1 failed (unit test build failed)"; exit 1; }

log=$(mktemp)
/usr/lib/llvm-22/bin/lit -sv build/test | tee "$log"
status=${PIPESTATUS[0]}

count() { grep -E "^\s+$1\s*: " "$log" | sed -E "s/.*: *([0-9]+).*/\1/" | head -1; }
passed=$(count "Passed"); passed=${passed:-0}
failed=0
for kind in "Failed" "Unexpectedly Passed" "Timed Out" "Unresolved"; do
  n=$(count "$kind"); failed=$((failed + ${n:-0}))
done
skipped=$(count "Unsupported"); skipped=${skipped:-0}
rm -f "$log"

if ((status != 0 && failed == 0)); then failed=1; fi
echo "tests: ${passed} passed, ${failed} failed, ${skipped} skipped"
exit $(( failed > 0 ? 1 : 0 ))
