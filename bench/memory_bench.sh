#!/usr/bin/env bash
# Server memory against parameter bytes: starts dropnet-server on a temporary store on loopback,
# imports the first ROWS Fashion-MNIST training images, creates MODELS copies of the example MLP
# (examples/fashion_mlp.json: 784-512-512-10, ReLU, dropout 0.5; 669,706 float32 parameters) and
# trains each for EPOCHS epochs on those rows, one after the other. Then it reads VmRSS (resident
# now) and VmHWM (the peak) from /proc/<pid>/status and compares VmRSS with the target
# 1.5 x parameter bytes + 60 MB (MB: 10^6 bytes).
#
# With --csv-mb N it measures a CSV upload instead: it writes a CSV of about N MB (32 numeric
# columns and a class label, about 151 bytes a row), uploads it with `dropnet data upload`, and
# reports the server's VmHWM before and after next to the parsed size (rows x 33 x 4 bytes).
#
#   bench/memory_bench.sh [--rows N] [--epochs N] [--models N] [--threads N] [--json FILE]
#   bench/memory_bench.sh --csv-mb N [--json FILE]
#
# Defaults: 10 models, 10,000 rows, 1 epoch, the server's default threads. Take the lock the
# machine's benchmarks share so that nothing else runs meanwhile:
#   flock /tmp/dropnet-build.lock bench/memory_bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."

rows=10000 epochs=1 models=10 threads="" json="" csv_mb=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rows) rows="$2"; shift 2 ;;
    --epochs) epochs="$2"; shift 2 ;;
    --models) models="$2"; shift 2 ;;
    --threads) threads="$2"; shift 2 ;;
    --json) json="$2"; shift 2 ;;
    --csv-mb) csv_mb="$2"; shift 2 ;;
    -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "memory_bench.sh: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done

bin="${DROPNET_BUILD_DIR:-build}/bin"
data_root=/usr/share/datasets
[[ -x "$bin/dropnet-server" && -x "$bin/dropnet" ]] || { echo "build first: cmake --build build" >&2; exit 1; }
[[ -n "$csv_mb" ]] || [[ -f "$data_root/fashion-mnist/train-images-idx3-ubyte.gz" ]] ||
  { echo "Fashion-MNIST is missing: apt-get install dataset-fashion-mnist" >&2; exit 1; }

tmp=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

server_args=(--listen 127.0.0.1:0 --store "$tmp/store" --data-root "$data_root" --log-level info)
[[ -n "$threads" ]] && server_args+=(--threads "$threads")
"$bin/dropnet-server" "${server_args[@]}" 2> "$tmp/server.log" &
server_pid=$!
port=""
for _ in $(seq 100); do
  port=$(sed -n 's/.*(port \([0-9]*\)).*/\1/p' "$tmp/server.log" | head -1)
  [[ -n "$port" ]] && break
  sleep 0.1
done
[[ -n "$port" ]] || { cat "$tmp/server.log" >&2; exit 1; }
export DROPNET_SERVER="127.0.0.1:$port"

status_kb() { awk -v k="$1:" '$1 == k { print $2 }' "/proc/$server_pid/status"; }
mb() { awk -v kb="$1" 'BEGIN { printf "%.1f", kb * 1024 / 1e6 }'; }  # kB (KiB) -> MB (10^6 bytes)

rss_start=$(status_kb VmRSS)
echo "server pid $server_pid on $DROPNET_SERVER: VmRSS $(mb "$rss_start") MB at start" >&2

if [[ -n "$csv_mb" ]]; then
  csv_rows=$((csv_mb * 1000000 / 151))
  awk -v rows="$csv_rows" 'BEGIN {
    split("0.5 1.25 -2 3.75 0.125", v, " "); split("dog cat eel", k, " ")
    for (c = 0; c < 32; ++c) printf "f%d,", c; print "kind"
    for (r = 0; r < rows; ++r) {
      line = ""
      for (c = 0; c < 32; ++c) line = line v[(r + c) % 5 + 1] ","
      print line k[r % 3 + 1]
    }
  }' > "$tmp/upload.csv"
  csv_bytes=$(stat -c %s "$tmp/upload.csv")
  parsed_bytes=$((csv_rows * 33 * 4))
  hwm_before=$(status_kb VmHWM)
  start_ns=$(date +%s%N)
  "$bin/dropnet" --timeout 600 data upload csv-bench "$tmp/upload.csv" >&2
  seconds=$(awk -v ns=$(($(date +%s%N) - start_ns)) 'BEGIN { printf "%.1f", ns / 1e9 }')
  hwm_after=$(status_kb VmHWM)
  printf '| CSV | rows | parsed (rows x 33 x 4) | upload | VmHWM before | VmHWM after | growth |\n'
  printf '|---|---|---|---|---|---|---|\n'
  printf '| %s MB | %d | %s MB | %s s | %s MB | %s MB | %s MB |\n' \
    "$(awk -v b="$csv_bytes" 'BEGIN { printf "%.1f", b / 1e6 }')" "$csv_rows" \
    "$(awk -v b="$parsed_bytes" 'BEGIN { printf "%.1f", b / 1e6 }')" "$seconds" \
    "$(mb "$hwm_before")" "$(mb "$hwm_after")" "$(mb $((hwm_after - hwm_before)))"
  if [[ -n "$json" ]]; then
    printf '{"csv_bytes": %d, "rows": %d, "parsed_bytes": %d, "seconds": %s, "vm_hwm_before_kb": %d, "vm_hwm_after_kb": %d}\n' \
      "$csv_bytes" "$csv_rows" "$parsed_bytes" "$seconds" "$hwm_before" "$hwm_after" > "$json"
  fi
  exit 0
fi

"$bin/dropnet" data import fashion-train fashion-mnist/train-images-idx3-ubyte.gz \
  fashion-mnist/train-labels-idx1-ubyte.gz --limit "$rows" >&2
echo "after the import: VmRSS $(mb "$(status_kb VmRSS)") MB, VmHWM $(mb "$(status_kb VmHWM)") MB" >&2
for i in $(seq 1 "$models"); do
  "$bin/dropnet" models create "mlp-$i" --spec examples/fashion_mlp.json > /dev/null
  "$bin/dropnet" train "mlp-$i" --data fashion-train --epochs "$epochs" --seed "$i" > "$tmp/train-$i.log"
  echo "trained mlp-$i: $(grep -o 'epoch [0-9]*/[0-9]*  loss [0-9.]*  acc [0-9.]*' "$tmp/train-$i.log" | tail -1);" \
    "VmRSS $(mb "$(status_kb VmRSS)") MB" >&2
done
sleep 1  # let the last training's thread finish releasing

params=$("$bin/dropnet" models get mlp-1 --format json | sed -n 's/.*"parameter_count": "\([0-9]*\)".*/\1/p')
rss=$(status_kb VmRSS)
hwm=$(status_kb VmHWM)
param_bytes=$((models * params * 4))  # the engine computes in float32
budget_bytes=$((param_bytes * 3 / 2 + 60000000))
met=$([[ $((rss * 1024)) -lt $budget_bytes ]] && echo yes || echo no)

printf '| models | parameters each | parameter bytes | VmRSS at start | VmRSS | VmHWM | target (1.5 x params + 60 MB) | met |\n'
printf '|---|---|---|---|---|---|---|---|\n'
printf '| %d | %d | %s MB | %s MB | %s MB | %s MB | %s MB | %s |\n' "$models" "$params" \
  "$(awk -v b="$param_bytes" 'BEGIN { printf "%.1f", b / 1e6 }')" "$(mb "$rss_start")" \
  "$(mb "$rss")" "$(mb "$hwm")" "$(awk -v b="$budget_bytes" 'BEGIN { printf "%.1f", b / 1e6 }')" "$met"
if [[ -n "$json" ]]; then
  printf '{"models": %d, "rows": %d, "epochs": %d, "parameters_each": %d, "parameter_bytes": %d, "vm_rss_start_kb": %d, "vm_rss_kb": %d, "vm_hwm_kb": %d, "target_bytes": %d, "met": %s}\n' \
    "$models" "$rows" "$epochs" "$params" "$param_bytes" "$rss_start" "$rss" "$hwm" "$budget_bytes" \
    "$([[ $met == yes ]] && echo true || echo false)" > "$json"
fi
