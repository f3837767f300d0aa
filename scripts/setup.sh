#!/usr/bin/env bash
# Installs what a fresh Debian 12 machine lacks to build and test dropnet (apt-get, as root or
# through sudo), then configures and builds into ./build. Safe to run again: it only installs
# missing packages and rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config ccache git
  libeigen3-dev librandom123-dev zlib1g-dev
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc grpc-proto
  libspdlog-dev libfmt-dev libcli11-dev nlohmann-json3-dev libcpp-httplib-dev curl
  libgtest-dev libgmock-dev libbenchmark-dev
  libonnx-dev python3-onnx python3-torch libopenblas0-openmp
  dataset-fashion-mnist
  prometheus-cpp-dev prometheus libjs-chart.js chromium chromium-driver python3-selenium
  clang-14 libclang-rt-14-dev clang-format clang-tidy
  python3 python3-grpcio python3-protobuf python3-numpy python3-pytest python3-tqdm python3-pandas
  python3-setuptools python3-pip python3-venv
)
# kubectl renders deploy/k8s in a test (`kubectl kustomize`): Debian's kubernetes-client, unless a
# kubectl is already installed (another package's /usr/bin/kubectl would conflict with it).
command -v kubectl >/dev/null 2>&1 || packages+=(kubernetes-client)
# The ONNX Runtime test (tests/interop/onnx_runtime_check.sh) runs exported models in npm's
# onnxruntime-node: Debian's nodejs and npm, unless a node with its npm is already installed.
command -v npm >/dev/null 2>&1 || packages+=(nodejs npm)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

build_dir=${DROPNET_BUILD_DIR:-build}
if [ ! -f "$build_dir/CMakeCache.txt" ]; then
  cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release ${DROPNET_CMAKE_ARGS:-}
fi
cmake --build "$build_dir"
