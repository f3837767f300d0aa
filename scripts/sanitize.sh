#!/usr/bin/env bash
# Builds the test suites with a sanitizer in build-<name>/ and runs them.
#   scripts/sanitize.sh thread              # ThreadSanitizer: engine and service tests
#   scripts/sanitize.sh address,undefined   # ASan + UBSan
# Extra arguments go to ctest (for example -R service).
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-thread}
shift || true
dir="build-$(echo "$kind" | tr ',' '-')"
scripts/setup.sh >/dev/null
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDROPNET_SANITIZE="$kind" >/dev/null
cmake --build "$dir"
export TSAN_OPTIONS="${TSAN_OPTIONS:-halt_on_error=1 second_deadlock_stack=1 suppressions=$PWD/tests/tsan.supp}"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export LSAN_OPTIONS="${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1 halt_on_error=1}"
ctest --test-dir "$dir" --output-on-failure --timeout 1800 "$@"
