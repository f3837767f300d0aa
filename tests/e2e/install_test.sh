#!/usr/bin/env bash
# Installs dropnet into a temporary prefix, builds client/examples against the installed package
# (find_package(dropnet)), and runs the example against a real dropnet-server.
set -euo pipefail
build_dir=$1
source_dir=$2
tmp=$(mktemp -d)
trap 'kill $server_pid 2>/dev/null || true; rm -rf "$tmp"' EXIT
cmake --install "$build_dir" --prefix "$tmp/prefix" >/dev/null
# An AddressSanitizer build's library is consumed by code built with it too: Eigen, whose
# matrices cross the library's interface, allocates differently under AddressSanitizer.
sanitize=$(sed -n 's/^DROPNET_SANITIZE:STRING=//p' "$build_dir/CMakeCache.txt")
flags=()
[[ $sanitize == *address* ]] && flags=(-DCMAKE_CXX_FLAGS="-fsanitize=$sanitize")
cmake -S "$source_dir/client/examples" -B "$tmp/example" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" "${flags[@]}" >/dev/null
cmake --build "$tmp/example" >/dev/null
"$tmp/prefix/bin/dropnet-server" --listen 127.0.0.1:0 --store "$tmp/store" --threads 1 \
  --drain-delay 0 2>"$tmp/server.log" &
server_pid=$!
for _ in $(seq 100); do
  port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$tmp/server.log")
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { cat "$tmp/server.log"; exit 1; }
"$tmp/example/uncertainty_example" "127.0.0.1:$port"
"$tmp/prefix/bin/dropnet" --server "127.0.0.1:$port" health
kill -TERM $server_pid
wait $server_pid
echo "installed package: OK"
