# Sourced by the bench scripts: one dropnet-server at a time on a free loopback port, stopped
# (and "$tmp" removed) when the script exits. Needs $bin (the build's bin folder) and $tmp (a
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
