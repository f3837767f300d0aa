# Sourced by the bench scripts: one dropnet-server at a time on a free loopback port, stopped
# (and "$tmp" removed) when the script exits, and the rows they send. Needs $bin (the build's bin folder) and $tmp (a
# scratch folder; the store is "$tmp/store").
server_pid=""
stop_server() {
  if [[ -n "$server_pid" ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap 'stop_server; rm -rf "$tmp"' EXIT

# start_server LOG ARGS...: starts the server on a free loopback port, sets DROPNET_SERVER.
start_server() {
  local log="$1"; shift
  "$bin/dropnet-server" --listen 127.0.0.1:0 --store "$tmp/store" "$@" 2> "$log" &
  server_pid=$!
  local port=""
  for _ in $(seq 300); do
    port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$log" | head -1)
    [[ -n "$port" ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  [[ -n "$port" ]] || { cat "$log" >&2; exit 1; }
  export DROPNET_SERVER="127.0.0.1:$port"
}

# fashion_rows_csv OUT: the first 1,000 Fashion-MNIST test images as a CSV for `dropnet bench
# --data`, scaled to [0, 1] as the example model was trained.
fashion_rows_csv() {
  python3 - /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz "$1" <<'EOF'
import gzip, struct, sys
raw = gzip.open(sys.argv[1]).read()
_, n, h, w = struct.unpack(">IIII", raw[:16])
with open(sys.argv[2], "w") as out:
    out.write(",".join(f"p{i}" for i in range(h * w)) + "\n")
    for i in range(min(n, 1000)):
        px = raw[16 + i * h * w:16 + (i + 1) * h * w]
        out.write(",".join("%g" % (b / 255) for b in px) + "\n")
EOF
}
