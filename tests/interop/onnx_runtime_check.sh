#!/usr/bin/env bash
# Runs the exported models in ONNX Runtime for Node (onnxruntime-node 1.16.3, installed from npm
# into the build folder on first use) and compares with dropnet's outputs: onnx_runtime_check.js.
# Usage: onnx_runtime_check.sh EXPORT_DIR NODE_DIR. Exit 77 (skipped) without node or the package.
set -euo pipefail
export_dir=$1
node_dir=$2
here=$(cd "$(dirname "$0")" && pwd)
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "skipped: node or npm is not installed"
  exit 77
fi
if [ ! -d "$node_dir/node_modules/onnxruntime-node" ]; then
  mkdir -p "$node_dir"
  if ! (cd "$node_dir" && npm install --ignore-scripts --no-audit --no-fund --silent \
          onnxruntime-node@1.16.3 >npm.log 2>&1); then
    echo "skipped: npm could not install onnxruntime-node@1.16.3 (see $node_dir/npm.log)"
    exit 77
  fi
fi
NODE_PATH="$node_dir/node_modules" exec node "$here/onnx_runtime_check.js" "$export_dir"
