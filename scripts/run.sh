#!/usr/bin/env bash
# Sets up, builds and runs the main job: trains the example MLP on Fashion-MNIST and prints test
# accuracy with deterministic and Monte-Carlo dropout figures.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec "${DROPNET_BUILD_DIR:-build}/bin/dropnet-experiment" fashion-mlp --quiet "$@"
