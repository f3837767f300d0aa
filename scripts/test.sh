#!/usr/bin/env bash
# Sets up, builds and runs every test suite (ctest). Exit status non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
ctest --test-dir "${DROPNET_BUILD_DIR:-build}" --output-on-failure --timeout 900 "$@"
