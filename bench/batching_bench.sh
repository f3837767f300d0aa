#!/usr/bin/env bash
# Dynamic batching, measured: the same dropnet-server (same store, same model) with merging off
# (--batch-window-us 0) and on (--batch-window-us W, 200 unless given), in alternation, each time
# under `dropnet bench` with Predict of one row and PredictUncertainty T = 100 of one row at each
# concurrency. Prints every run and the medians, and the ratios of the medians (calls/s on over
# off, p50 on over off). The model is the trained example (Fashion-MNIST test rows), or with
# --spec FILE a model created from that spec, untrained (uniform random rows).
#
#   flock /tmp/dropnet-build.lock bench/batching_bench.sh [--concurrency 8,16,32] [--duration 2]
#       [--warmup 0.5] [--repeat 3] [--window W] [--spec FILE] [--out DIR]
#       [-- extra server flags]
set -euo pipefail
cd "$(dirname "$0")/.."

concurrency=8,16,32 duration=2 warmup=0.5 repeat=3 window=200 spec="" out=""
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --concurrency) concurrency="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --repeat) repeat="$2"; shift 2 ;;
    --window) window="$2"; shift 2 ;;
    --spec) spec="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "batching_bench.sh: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done

bin="${DROPNET_BUILD_DIR:-build}/bin"
[[ -x "$bin/dropnet-server" && -x "$bin/dropnet" ]] || { echo "build first: cmake --build build" >&2; exit 1; }
tmp=$(mktemp -d)
[[ -n "$out" ]] || out="$tmp/out"
mkdir -p "$out"
# shellcheck source=bench/server_lib.sh
source bench/server_lib.sh

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
model=fashion-mlp
data_flags=()
if [[ -z "$spec" ]]; then
  fashion_rows_csv "$tmp/rows.csv"
  data_flags=(--data "$tmp/rows.csv")
  start_server "$out/example.log" --example --data-root /usr/share/datasets "${extra[@]}"
  for _ in $(seq 600); do
    grep -q "example: model 'fashion-mlp' is trained and ready" "$out/example.log" && break
    sleep 0.5
  done
else
  model=batching-bench
  start_server "$out/create.log" "${extra[@]}"
  "$bin/dropnet" models create "$model" --spec "$spec" > /dev/null
fi
stop_server

for r in $(seq "$repeat"); do
  for mode in off on; do
    if [[ $mode == off ]]; then flags=(--batch-window-us 0); else flags=(--batch-window-us "$window"); fi
    start_server "$out/server-$mode-$r.log" "${flags[@]}" "${extra[@]}"
    "$bin/dropnet" bench "$model" --concurrency "$concurrency" --duration "$duration" \
      --warmup "$warmup" --workloads predict,uncertainty "${data_flags[@]}" --json -q \
      > "$out/bench-$mode-$r.json" || true
    stop_server
    grep -ho 'dynamic batching: .*' "$out/server-$mode-$r.log" | sed "s/^/  $mode $r: /" || true
  done
done

python3 - "$out" "$repeat" <<'EOF'
import json, statistics, sys
out, repeat = sys.argv[1], int(sys.argv[2])
runs = {m: [json.load(open(f"{out}/bench-{m}-{r}.json")) for r in range(1, repeat + 1)]
        for m in ("off", "on")}
def rows(m):
    table = {}
    for run in runs[m]:
        for x in run["results"]:
            table.setdefault((x["name"], x["concurrency"]), []).append(x)
    return table
off, on = rows("off"), rows("on")
print("| workload | concurrency | off: calls/s | on: calls/s | on/off calls/s | off: p50 ms | on: p50 ms | on/off p50 | errors |")
print("|---|---|---|---|---|---|---|---|---|")
for key in off:
    a, b = off[key], on.get(key, [])
    if not b:
        continue
    ca = statistics.median(x["calls_per_second"] for x in a)
    cb = statistics.median(x["calls_per_second"] for x in b)
    pa = statistics.median(x["p50_ms"] for x in a)
    pb = statistics.median(x["p50_ms"] for x in b)
    errors = sum(x["errors"] for x in a + b)
    print(f"| {key[0]} | {key[1]} | {ca:.0f} | {cb:.0f} | {cb / ca:.2f}x | {pa:.3f} | {pb:.3f} | "
          f"{pb / pa:.2f}x | {errors} |")
print()
print("every run (calls/s):")
for key in off:
    print(f"  {key[0]} c{key[1]}: off {[round(x['calls_per_second']) for x in off[key]]}, "
          f"on {[round(x['calls_per_second']) for x in on.get(key, [])]}")
EOF
