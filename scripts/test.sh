#!/usr/bin/env bash
# Sets up, builds and runs every test suite (ctest), then the linters (scripts/lint.sh:
# clang-format and clang-tidy), then a short run of each fuzz target (scripts/fuzz.sh,
# DROPNET_FUZZ_SECONDS a target, default 20; 0 skips it). Exit status non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir "${DROPNET_BUILD_DIR:-build}" --output-on-failure --timeout 900 "$@"
scripts/lint.sh
fuzz_seconds=${DROPNET_FUZZ_SECONDS:-20}
if ((fuzz_seconds > 0)); then
  scripts/fuzz.sh "$fuzz_seconds"
fi
