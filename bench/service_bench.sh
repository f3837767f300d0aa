#!/usr/bin/env bash
# Service latency and throughput: starts dropnet-server on a temporary store on loopback with the
# example model 'fashion-mlp' (Fashion-MNIST MLP 784-512-512-10, ReLU, dropout 0.5, trained for one
# epoch by --example), runs `dropnet bench` against it (health check, Predict b1, Predict b256,
# PredictUncertainty T=100 on one row, at each concurrency level), then measures Predict b256
# throughput with the server at one and at two worker threads: --workers (calls computing at a
# time), --threads (engine threads of one call) and --rpc-threads (gRPC's threads for the
# synchronous calls) against the client's concurrency.
#
#   bench/service_bench.sh [--threads N] [--workers N] [--rpc-threads N] [--spin-us N]
#                          [--concurrency 1,2,4,8]
#                          [--duration S] [--warmup S] [--repeat N] [--out DIR] [--no-scaling]
#                          [--random-inputs] [-- BENCH ARGS]
#
# The throughput configurations run --repeat times (default 3), in turn, and report the median.
#
# The calls send rows of the Fashion-MNIST test set (the first 1,000 images, scaled to [0, 1] as
# the model was trained), written to a CSV for `dropnet bench --data`; --random-inputs sends
# uniform random rows instead (no zero pixels, so the engine skips nothing).
#
# Arguments after -- go to `dropnet bench` (e.g. --shared-channel). Results: the tables on stdout,
# and bench.json, scaling.json and the server logs in --out (default: a temporary directory that
# is removed). Each measurement waits (up to two minutes) until the machine is idle, other than
# this script's processes. Take the lock the machine's benchmarks share so that nothing else
# runs meanwhile:
#   flock /tmp/dropnet-build.lock bench/service_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

threads="" workers="" spin_us="" rpc_threads=16 concurrency=1,2,4,8 duration=3 warmup=1 out="" scaling=1
repeat=3 random_inputs=0
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --rpc-threads) rpc_threads="$2"; shift 2 ;;
    --spin-us) spin_us="$2"; shift 2 ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --no-scaling) scaling=0; shift ;;
    --random-inputs) random_inputs=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
# shellcheck source=bench/server_lib.sh
source bench/server_lib.sh

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

if [[ $random_inputs == 0 ]]; then
  fashion_rows_csv "$tmp/fashion-test.csv"
  extra=(--data "$tmp/fashion-test.csv" "${extra[@]}")
fi

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
server_args=(--rpc-threads "$rpc_threads")
[[ -n "$threads" ]] && server_args+=(--threads "$threads")
[[ -n "$workers" ]] && server_args+=(--workers "$workers")
[[ -n "$spin_us" ]] && server_args+=(--spin-us "$spin_us")

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

python3 - "$out/bench.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{r['channels']}, {r['duration_seconds']} s per row after {r['warmup_seconds']} s warm-up, "
      f"{r['inputs']}, model version {r['model_version']}\n")
print("| workload | concurrency | calls | errors | p50 ms | p90 ms | p99 ms | calls/s | rows/s | client CPU (cores) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for x in r["results"]:
    rows = f"{x['rows_per_second']:.0f}" if x["rows"] else "-"
    print(f"| {x['name']} | {x['concurrency']} | {x['calls']} | {x['errors']} | {x['p50_ms']:.3f} | "
          f"{x['p90_ms']:.3f} | {x['p99_ms']:.3f} | {x['calls_per_second']:.0f} | {rows} | "
          f"{x['client_cpu']:.2f} |")
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

# Where the time of one call goes, at concurrency 1: the client's p50, the server's own p50 for
# the call (from its arrival to its answer, as the server's log line gives it) and the engine's
# alone (build/bin/dropnet-bench, in-process, warm, two threads), against the health check's p50.
echo
echo "## Breakdown at concurrency 1"
log="$out/server-example.log"
from=$(( $(wc -l < "$log") + 1 ))
wait_quiet
"$bin/dropnet" bench fashion-mlp --concurrency 1 --workloads health,predict,uncertainty \
  --duration "$duration" --warmup "$warmup" --json --quiet "${extra[@]}" > "$out/breakdown.json" || true
tail -n "+$from" "$log" | grep -a ' Predict model=fashion-mlp .* rows=1 status=OK' |
  sed 's/.* \([0-9.]*\) ms$/\1/' > "$out/handler-predict.txt"
tail -n "+$from" "$log" | grep -a ' PredictUncertainty model=fashion-mlp .* status=OK' |
  sed 's/.* \([0-9.]*\) ms$/\1/' > "$out/handler-uncertainty.txt"
stop_server
engine_json=""
if [[ -x "$bin/dropnet-bench" ]]; then
  wait_quiet
  "$bin/dropnet-bench" --benchmark_filter='BM_MlpEval/1/|BM_MlpMonteCarlo/100/' \
    --benchmark_format=json > "$out/engine.json" 2> /dev/null && engine_json="$out/engine.json"
fi
python3 - "$out/breakdown.json" "$out/handler-predict.txt" "$out/handler-uncertainty.txt" \
  "$engine_json" <<'EOF'
import json, statistics, sys
bench = {x["workload"]: x for x in json.load(open(sys.argv[1]))["results"]}
def median_us(path):
    v = [float(l) * 1000 for l in open(path) if l.strip()]
    return statistics.median(v) if v else float("nan")
engine = {}
if sys.argv[4]:
    for b in json.load(open(sys.argv[4]))["benchmarks"]:
        scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3}[b["time_unit"]]
        key = "predict" if b["name"].startswith("BM_MlpEval/1/") else "uncertainty"
        engine[key] = b["real_time"] * scale
floor = bench["health"]["p50_ms"] * 1000
print(f"\nhealth check p50 (the floor): {floor:.0f} us\n")
print("| call | client p50 (us) | server, arrival to answer, p50 (us) | engine alone (us) "
      "| client p50 - server p50 (us) | client p50 / floor |")
print("|---|---|---|---|---|---|")
for key, name, path in (("predict", "Predict b1", sys.argv[2]),
                        ("uncertainty", "PredictUncertainty T=100, 1 row", sys.argv[3])):
    client = bench[key]["p50_ms"] * 1000
    server = median_us(path)
    e = engine.get(key)
    print(f"| {name} | {client:.0f} | {server:.0f} | {'-' if e is None else f'{e:.0f}'} | "
          f"{client - server:.0f} | {client / floor:.2f}x |")
EOF

[[ $scaling == 1 ]] || exit 0

# Predict b256 throughput against the server's worker threads. The store of the run above is
# reused: each configuration restarts the server on it. One worker thread is --workers 1
# --threads 1 (one call computes at a time, on one thread); two are two calls side by side
# (--workers 2 --threads 1), one call on two threads (--workers 1 --threads 2), or both as the
# server shares them out (--workers 2 --threads 2). Each at the client concurrency levels 1, 2 and
# 4: at 1 the server idles while a request and its answer travel, so one thread's capacity shows
# only with a call waiting behind the one computing.
echo
echo "## Predict b256 throughput: server --workers x --threads x --rpc-threads x client concurrency"
configs=(
  # workers threads rpc-threads concurrency
  "1 1 16 1" "1 2 16 1"
  "1 1 16 2" "2 1 16 2" "1 2 16 2" "2 2 16 2"
  "1 1 16 4" "2 1 16 4" "1 2 16 4" "2 2 16 4" "2 2 2 4"
)
: > "$out/scaling.jsonl"
for round in $(seq "$repeat"); do for c in "${configs[@]}"; do
  read -r w t r n <<< "$c"
  start_server "$out/server-w$w-t$t-r$r.log" --workers "$w" --threads "$t" --rpc-threads "$r" \
    ${spin_us:+--spin-us "$spin_us"}
  wait_quiet
  { "$bin/dropnet" bench fashion-mlp --workloads predict-batch --concurrency "$n" \
      --duration "$duration" --warmup "$warmup" --json --quiet "${extra[@]}" || true; } |
    jq -c --argjson w "$w" --argjson t "$t" --argjson r "$r" \
      '.results[0] + {workers: $w, threads: $t, rpc_threads: $r}' >> "$out/scaling.jsonl"
  stop_server
done; done
python3 - "$out/scaling.jsonl" "$out/scaling.json" <<'EOF'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
json.dump(runs, open(sys.argv[2], "w"), indent=2)
# The median run of each configuration (by rows/s), keeping the configurations' order.
groups = {}
for x in runs:
    groups.setdefault((x["workers"], x["threads"], x["rpc_threads"], x["concurrency"]), []).append(x)
rows = []
for g in groups.values():
    g = sorted(g, key=lambda x: x["rows_per_second"])
    m = dict(g[len(g) // 2])
    m["all"] = [x["rows_per_second"] for x in g]
    m["errors"] = sum(x["errors"] for x in g)
    rows.append(m)
one = {x["concurrency"]: x["rows_per_second"] for x in rows
       if x["workers"] == 1 and x["threads"] == 1}
print(f"\nmedian of {len(next(iter(groups.values())))} runs each (rows/s of every run in brackets)")
print("\n| --workers | --threads | --rpc-threads | concurrency | errors | p50 ms | p99 ms | rows/s "
      "| vs one worker thread at this concurrency | client CPU (cores) |")
print("|---|---|---|---|---|---|---|---|---|---|")
for x in rows:
    runs_text = ", ".join(f"{v:.0f}" for v in x["all"])
    print(f"| {x['workers']} | {x['threads']} | {x['rpc_threads']} | {x['concurrency']} | "
          f"{x['errors']} | {x['p50_ms']:.3f} | {x['p99_ms']:.3f} | {x['rows_per_second']:.0f} "
          f"({runs_text}) | {x['rows_per_second'] / one[x['concurrency']]:.2f}x | "
          f"{x['client_cpu']:.2f} |")
best1 = max((x for x in rows if x["workers"] * x["threads"] == 1), key=lambda x: x["rows_per_second"])
best2 = max((x for x in rows if x["workers"] * x["threads"] >= 2 and x["errors"] == 0),
            key=lambda x: x["rows_per_second"])
ratio = best2["rows_per_second"] / best1["rows_per_second"]
print(f"\none worker thread, at its best (concurrency {best1['concurrency']}): "
      f"{best1['rows_per_second']:.0f} rows/s; two worker threads at their best (--workers "
      f"{best2['workers']} --threads {best2['threads']}, concurrency {best2['concurrency']}): "
      f"{best2['rows_per_second']:.0f} rows/s; {ratio:.2f}x; target >= 1.7x: "
      f"{'met' if ratio >= 1.7 else 'not met'}")
EOF
