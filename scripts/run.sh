#!/usr/bin/env bash
# Sets up, builds and runs the main job: dropnet-server on 127.0.0.1:50051 (gRPC: dropnet.v1 and
# the Open Inference Protocol) and 127.0.0.1:8080 (HTTP: the protocol's REST routes) with a local
# model store (var/dropnet) and, on an empty store, the example model 'fashion-mlp' trained on Fashion-MNIST
# for one epoch (about 10 s) so that Predict and PredictUncertainty answer within a minute.
# Extra arguments go to the server (see build/bin/dropnet-server --help). Ctrl-C stops it cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec "${DROPNET_BUILD_DIR:-build}/bin/dropnet-server" --store var/dropnet --data-root /usr/share/datasets --example \
  --http-listen 127.0.0.1:8080 "$@"
