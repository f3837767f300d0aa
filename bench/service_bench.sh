#!/usr/bin/env bash
# Service latency and throughput: starts dropnet-server on a temporary store on loopback with the
# example model 'fashion-mlp' (Fashion-MNIST MLP 784-512-512-10, ReLU, dropout 0.5, trained for one
# epoch by --example), runs `dropnet bench` against it (health check, Predict b1, Predict b256,
# PredictUncertainty T=100 on one row, at each concurrency level), then measures Predict b256
# throughput with the server at one and at two worker threads: --workers (calls computing at a
# time), --threads (engine threads of one call) and --rpc-threads (gRPC's threads for the
# synchronous calls) against the client's concurrency.
#
#   bench/service_bench.sh [--threads N] [--workers N] [--rpc-threads N] [--concurrency 1,2,4,8]
#                          [--duration S] [--warmup S] [--out DIR] [--no-scaling] [-- BENCH ARGS]
#
# Arguments after -- go to `dropnet bench` (e.g. --shared-channel). Results: the tables on stdout,
# and bench.json, scaling.json and the server logs in --out (default: a temporary directory that
# is removed). Each measurement waits (up to two minutes) until the machine is idle, other than
# this script's processes. Take the lock the machine's benchmarks share so that nothing else
# runs meanwhile:
#   flock /tmp/dropnet-build.lock bench/service_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

threads="" workers="" rpc_threads=16 concurrency=1,2,4,8 duration=3 warmup=1 out="" scaling=1
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --rpc-threads) rpc_threads="$2"; shift 2 ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --no-scaling) scaling=0; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "service_bench.sh: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done

bin="${DROPNET_BUILD_DIR:-build}/bin"
[[ -x "$bin/dropnet-server" && -x "$bin/dropnet" ]] || { echo "build first: cmake --build build" >&2; exit 1; }
[[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] ||
  { echo "Fashion-MNIST is missing: apt-get install dataset-fashion-mnist" >&2; exit 1; }

tmp=$(mktemp -d)
if [[ -z "$out" ]]; then out="$tmp/out"; fi
mkdir -p "$out"
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
  for _ in $(seq 200); do
    port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$log" | head -1)
    [[ -n "$port" ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  [[ -n "$port" ]] || { cat "$log" >&2; exit 1; }
  export DROPNET_SERVER="127.0.0.1:$port"
}

# Percentage of the machine busy over one second (all cores).
cpu_busy() {
  local a b
  read -r -a a < /proc/stat
  sleep 1
  read -r -a b < /proc/stat
  local total=0 idle=$(( (b[4] + b[5]) - (a[4] + a[5]) ))
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  echo $(( 100 * (total - idle) / (total > 0 ? total : 1) ))
}
# Waits until less than 10% of the machine is busy (the server idles meanwhile).
wait_quiet() {
  local busy
  for _ in $(seq 40); do
    busy=$(cpu_busy)
    (( busy < 10 )) && return 0
    echo "waiting for a quiet machine: ${busy}% busy" >&2
    sleep 2
  done
  echo "warning: the machine stayed busy (${busy}%); figures may be disturbed" >&2
}

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
server_args=(--rpc-threads "$rpc_threads")
[[ -n "$threads" ]] && server_args+=(--threads "$threads")
[[ -n "$workers" ]] && server_args+=(--workers "$workers")

# The example model: Fashion-MNIST imported and one epoch trained on the first start.
start_server "$out/server-example.log" --example --data-root /usr/share/datasets "${server_args[@]}"
for _ in $(seq 600); do
  grep -q "example: model 'fashion-mlp' is trained and ready" "$out/server-example.log" && break
  grep -q "example: training ended\|example: .*not found" "$out/server-example.log" &&
    { cat "$out/server-example.log" >&2; exit 1; }
  sleep 0.5
done
"$bin/dropnet" models get fashion-mlp | sed -n '1p;/^version/p;/^parameters/p'

echo
echo "## dropnet bench fashion-mlp --concurrency $concurrency --duration $duration --warmup $warmup ${extra[*]}"
echo "## server: ${server_args[*]} ($(grep -o '[0-9]* workers x [0-9]* threads' "$out/server-example.log"))"
wait_quiet
# Errors are counted in the results (exit status 1); the tables show them.
"$bin/dropnet" bench fashion-mlp --concurrency "$concurrency" --duration "$duration" \
  --warmup "$warmup" --json "${extra[@]}" > "$out/bench.json" || true
stop_server

python3 - "$out/bench.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['channels']}, {r['duration_seconds']} s per row after {r['warmup_seconds']} s warm-up, "
      f"random inputs, model version {r['model_version']}\n")
print("| workload | concurrency | calls | errors | p50 ms | p90 ms | p99 ms | calls/s | rows/s |")
print("|---|---|---|---|---|---|---|---|---|")
for x in r["results"]:
    rows = f"{x['rows_per_second']:.0f}" if x["rows"] else "-"
    print(f"| {x['name']} | {x['concurrency']} | {x['calls']} | {x['errors']} | {x['p50_ms']:.3f} | "
          f"{x['p90_ms']:.3f} | {x['p99_ms']:.3f} | {x['calls_per_second']:.0f} | {rows} |")
print("\n| concurrency | Predict b1 p50 / health p50 | PredictUncertainty T=100 p50 / health p50 |")
print("|---|---|---|")
fmt = lambda v: "-" if v is None else f"{v:.2f}x"
for x in r["ratios"]:
    print(f"| {x['concurrency']} | {fmt(x['predict_p50_over_health_p50'])} | "
          f"{fmt(x['uncertainty_p50_over_health_p50'])} |")
one = next((x for x in r["ratios"] if x["concurrency"] == 1), None)
if one:
    p, u = one["predict_p50_over_health_p50"], one["uncertainty_p50_over_health_p50"]
    print(f"\ntarget Predict b1 p50 <= 1.5x health p50 (concurrency 1): {fmt(p)}, "
          f"{'met' if p is not None and p <= 1.5 else 'not met'}")
    print(f"target PredictUncertainty T=100 p50 <= 3x health p50 (concurrency 1): {fmt(u)}, "
          f"{'met' if u is not None and u <= 3 else 'not met'}")
EOF

[[ $scaling == 1 ]] || exit 0

# Predict b256 throughput against the server's worker threads. The store of the run above is
# reused: each configuration restarts the server on it. The first row is one worker thread: one
# call at a time (--workers 1) on one engine thread (--threads 1).
echo
echo "## Predict b256 throughput: server --workers x --threads x --rpc-threads x client concurrency"
configs=(
  # workers threads rpc-threads concurrency
  "1 1 16 1"
  "1 1 16 2"
  "1 2 16 1"
  "2 1 16 2"
  "2 2 16 2"
  "2 2 16 4"
  "2 2 2 4"
  "2 2 16 8"
)
: > "$out/scaling.jsonl"
for c in "${configs[@]}"; do
  read -r w t r n <<< "$c"
  start_server "$out/server-w$w-t$t-r$r.log" --workers "$w" --threads "$t" --rpc-threads "$r"
  wait_quiet
  { "$bin/dropnet" bench fashion-mlp --workloads predict-batch --concurrency "$n" \
      --duration "$duration" --warmup "$warmup" --json --quiet "${extra[@]}" || true; } |
    jq -c --argjson w "$w" --argjson t "$t" --argjson r "$r" \
      '.results[0] + {workers: $w, threads: $t, rpc_threads: $r}' >> "$out/scaling.jsonl"
  stop_server
done
python3 - "$out/scaling.jsonl" "$out/scaling.json" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
json.dump(rows, open(sys.argv[2], "w"), indent=2)
base = rows[0]["rows_per_second"]
print("\n| --workers | --threads | --rpc-threads | concurrency | errors | p50 ms | p99 ms | rows/s | vs one worker thread |")
print("|---|---|---|---|---|---|---|---|---|")
for x in rows:
    print(f"| {x['workers']} | {x['threads']} | {x['rpc_threads']} | {x['concurrency']} | "
          f"{x['errors']} | {x['p50_ms']:.3f} | {x['p99_ms']:.3f} | {x['rows_per_second']:.0f} | "
          f"{x['rows_per_second'] / base:.2f}x |")
two = [x for x in rows if x["workers"] * x["threads"] >= 2 and x["errors"] == 0]
best = max(two, key=lambda x: x["rows_per_second"])
ratio = best["rows_per_second"] / base
print(f"\none worker thread (--workers 1 --threads 1, concurrency 1): {base:.0f} rows/s; two: best "
      f"{best['rows_per_second']:.0f} rows/s (--workers {best['workers']} --threads "
      f"{best['threads']}, concurrency {best['concurrency']}), {ratio:.2f}x; "
      f"target >= 1.7x: {'met' if ratio >= 1.7 else 'not met'}")
EOF
