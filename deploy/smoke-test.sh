#!/usr/bin/env bash
# Smoke test of the container image, from the project root or anywhere:
#   deploy/smoke-test.sh
# Builds the image (docker when a Docker engine answers, else buildah + podman, prepared by
# ../shared/tools/container-base.sh when missing), runs the server on the host network with a
# named volume as its store, and through the `dropnet` client of the image checks health (and the
# image's HEALTHCHECK), creates and trains a small model (8x8 digits), predicts, asks for
# uncertainty; starts a read-only replica on the same volume (mounted read-only) that serves the
# trained version and refuses Train; then sends SIGTERM and checks a clean exit (0) within 10 s.
# Prints the image size and fails above DROPNET_IMAGE_MAX_MB (default 300). Exits non-zero on any
# failure.
#
# Environment: DROPNET_IMAGE (default dropnet:smoke), DROPNET_SMOKE_PORT (default: a free port),
# CONTAINER_BASE (path of container-base.sh), NO_BUILD=1 (use an existing image).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
image=${DROPNET_IMAGE:-dropnet:smoke}
tag=$$
server=dropnet-smoke-$tag
replica=dropnet-smoke-replica-$tag
volume=dropnet-smoke-$tag
tmp=$(mktemp -d)
chmod 755 "$tmp"
started=$(date +%s)
engine=""

step() { printf '\n== %s\n' "$*"; }
ok() { printf 'ok: %s\n' "$*"; }
fail() {
  printf 'FAIL: %s\n' "$*" >&2
  for c in "$server" $( [ -n "${replica_started:-}" ] && echo "$replica" ); do
    printf -- '--- logs of %s ---\n' "$c" >&2
    $engine logs "$c" >&2 2>&1 || true
  done
  exit 1
}

# ---- the container engine ----
engine_flags=()
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  engine=docker
  build() { nice -n 19 docker build -t "$image" .; }
  client_flags=""
else
  base=${CONTAINER_BASE:-}
  for c in "$root/../shared/tools/container-base.sh" /work/shared/tools/container-base.sh; do
    [ -z "$base" ] && [ -f "$c" ] && base=$c
  done
  if ! command -v buildah >/dev/null 2>&1 || ! command -v podman >/dev/null 2>&1 ||
     ! podman image exists docker.io/library/debian:bookworm-slim 2>/dev/null; then
    [ -n "$base" ] || { echo "smoke-test: no Docker engine, no buildah/podman and no container-base.sh" >&2; exit 1; }
    [ "$(id -u)" -eq 0 ] || { echo "smoke-test: $base needs root (sudo $base)" >&2; exit 1; }
    step "preparing buildah/podman with $base"
    sh "$base"
  fi
  engine=podman
  # The default isolation and crun fail on this machine's cgroup setup; these flags work.
  engine_flags=(--runtime runc --cgroup-manager=cgroupfs --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
  # A client container needs no healthcheck timer (podman would complain that there is no systemd).
  client_flags="--no-healthcheck"
  build() { nice -n 19 buildah bud --layers --format docker --isolation chroot --pull=never -t "$image" .; }
fi

cleanup() {
  [ -n "${engine:-}" ] || { rm -rf "$tmp"; return; }
  $engine rm -f "$server" "$replica" >/dev/null 2>&1 || true
  $engine volume rm -f "$volume" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 30000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "smoke-test: no free port" >&2; exit 1
}
port=${DROPNET_SMOKE_PORT:-$(free_port)}
replica_port=$(free_port)

# `dropnet ARGS` through the client in the image, in its own container on the host network.
client() {  # PORT ARGS...
  local p=$1; shift
  timeout 300 $engine run --rm "${engine_flags[@]}" $client_flags --network=host -e "DROPNET_SERVER=127.0.0.1:$p" \
    -v "$tmp:/smoke:ro" --entrypoint dropnet "$image" "$@"
}

# ---- build ----
if [ "${NO_BUILD:-0}" != 1 ]; then
  step "building $image with $engine"
  t0=$(date +%s)
  build > "$tmp/build.log" 2>&1 || { tail -50 "$tmp/build.log" >&2; fail "image build"; }
  tail -3 "$tmp/build.log"
  ok "image built in $(( $(date +%s) - t0 )) s"
fi
size_bytes=$($engine image inspect "$image" --format '{{.Size}}')
size_mb=$(awk -v b="$size_bytes" 'BEGIN{printf "%.1f", b/1e6}')
ok "image $image: $size_bytes bytes ($size_mb MB)"
# The runtime stage carries two programs and their shared libraries: a large jump means a
# builder's package or build tree leaked into it.
max_mb=${DROPNET_IMAGE_MAX_MB:-300}
awk -v s="$size_mb" -v m="$max_mb" 'BEGIN{exit !(s <= m)}' \
  || fail "image $image is $size_mb MB, over the $max_mb MB limit (DROPNET_IMAGE_MAX_MB)"

# ---- run the server ----
step "running the server on 127.0.0.1:$port (host network, volume $volume)"
$engine volume create "$volume" >/dev/null
$engine run -d --name "$server" "${engine_flags[@]}" --network=host \
  -e "DROPNET_LISTEN=127.0.0.1:$port" -e "DROPNET_SERVER=127.0.0.1:$port" -e DROPNET_THREADS=2 \
  -v "$volume:/var/lib/dropnet" "$image" >/dev/null 2>"$tmp/run.err" \
  || { cat "$tmp/run.err" >&2; fail "podman run"; }
for _ in $(seq 1 100); do
  client "$port" health >/dev/null 2>&1 && break
  sleep 0.3
done
out=$(client "$port" health) || fail "dropnet health"
[ "$out" = SERVING ] || fail "dropnet health said '$out'"
ok "dropnet health: $out"
uid=$($engine exec "$server" id -u)
[ "$uid" != 0 ] || fail "the server runs as root"
ok "the server runs as uid $uid, PID 1 is $($engine exec "$server" cat /proc/1/comm)"
if [ "$engine" = podman ]; then
  $engine healthcheck run "$server" || fail "the image's HEALTHCHECK"
  ok "HEALTHCHECK (podman healthcheck run): healthy"
else
  for _ in $(seq 1 30); do
    [ "$(docker inspect --format '{{.State.Health.Status}}' "$server")" = healthy ] && break
    sleep 1
  done
  [ "$(docker inspect --format '{{.State.Health.Status}}' "$server")" = healthy ] || fail "HEALTHCHECK"
  ok "HEALTHCHECK: healthy"
fi

# ---- create, train, predict, uncertainty ----
head -6 data/digits.csv > "$tmp/five.csv"
step "dropnet models create digits --spec /usr/share/dropnet/examples/digits_mlp.json"
client "$port" models create digits --spec /usr/share/dropnet/examples/digits_mlp.json || fail "models create"
step "dropnet data upload digits /usr/share/dropnet/data/digits.csv"
client "$port" data upload digits /usr/share/dropnet/data/digits.csv || fail "data upload"
step "dropnet train digits --data digits --epochs 20 --validation-split 0.2 --standardize --seed 1"
client "$port" train digits --data digits --epochs 20 --validation-split 0.2 --standardize --seed 1 \
  | tee "$tmp/train.out" || fail "train"
grep -q "published version 21" "$tmp/train.out" || fail "train did not end on version 21"
step "dropnet predict digits --input five.csv"
client "$port" predict digits --input /smoke/five.csv --format json > "$tmp/predict.json" || fail "predict"
client "$port" predict digits --input /smoke/five.csv || fail "predict (table)"
grep -q '"probabilities"' "$tmp/predict.json" || fail "predict printed no probabilities"
step "dropnet uncertainty digits --input five.csv --samples 100 --seed 1"
client "$port" uncertainty digits --input /smoke/five.csv --samples 100 --seed 1 > "$tmp/unc.out" \
  || fail "uncertainty"
cat "$tmp/unc.out"
head -1 "$tmp/unc.out" | grep -q "mutual_info" || fail "uncertainty printed no table"
[ "$(wc -l < "$tmp/unc.out")" -eq 6 ] || fail "uncertainty: 5 rows expected"

step "the Python client package in the image: uncertainty on the same five rows"
cat > "$tmp/smoke.py" <<'PY'
import csv, sys
import dropnet
rows = [[float(v) for v in r[:-1]] for r in list(csv.reader(open("/smoke/five.csv")))[1:]]
r = dropnet.Client(sys.argv[1]).uncertainty("digits", rows, samples=100, seed=1)
print(r.model, r.version, r.seed, " ".join(str(int(c)) for c in r.predicted_class))
PY
py_out=$(timeout 120 $engine run --rm "${engine_flags[@]}" $client_flags --network=host -v "$tmp:/smoke:ro" \
  --entrypoint python3 "$image" /smoke/smoke.py "127.0.0.1:$port") || fail "the Python client"
echo "$py_out"
cli_classes=$(awk 'NR > 1 {printf "%s%s", sep, $3; sep=" "}' "$tmp/unc.out")
[ "$py_out" = "digits 21 1 $cli_classes" ] \
  || fail "the Python client answered '$py_out', the command line 'digits 21 1 $cli_classes'"
ok "the Python client agrees with the command line"

# ---- a read-only replica on the same volume ----
step "a read-only replica on 127.0.0.1:$replica_port, the volume mounted read-only"
$engine run -d --name "$replica" "${engine_flags[@]}" --network=host \
  -e "DROPNET_LISTEN=127.0.0.1:$replica_port" -e "DROPNET_SERVER=127.0.0.1:$replica_port" \
  -e DROPNET_READ_ONLY=true -e DROPNET_POLL_INTERVAL=1 -e DROPNET_THREADS=1 \
  -v "$volume:/var/lib/dropnet:ro" "$image" >/dev/null 2>"$tmp/run.err" \
  || { cat "$tmp/run.err" >&2; fail "replica run"; }
replica_started=1
for _ in $(seq 1 100); do
  client "$replica_port" health >/dev/null 2>&1 && break
  sleep 0.3
done
client "$replica_port" models list || fail "replica: models list"
listing=$(client "$replica_port" models list --format json | tr -d ' \n')
grep -q '"name":"digits"[^}]*"version":21' <<<"$listing" \
  || fail "the replica does not serve digits version 21"
ok "the replica serves digits version 21"
client "$replica_port" predict digits --input /smoke/five.csv --format json > "$tmp/replica.json" \
  || fail "replica: predict"
cmp -s "$tmp/predict.json" "$tmp/replica.json" || fail "replica's answers differ from the trainer's"
ok "the replica answers as the trainer does"
set +e
client "$replica_port" train digits --data digits --epochs 1 2>"$tmp/refused.err"
code=$?
set -e
grep -q FAILED_PRECONDITION "$tmp/refused.err" && [ "$code" -eq 19 ] \
  || { cat "$tmp/refused.err" >&2; fail "replica Train: exit 19 FAILED_PRECONDITION expected, got $code"; }
ok "the replica refuses Train: exit $code, $(cat "$tmp/refused.err")"

# ---- SIGTERM: clean exit within 10 s ----
for c in "$replica" "$server"; do
  step "SIGTERM to $c"
  t0=$(date +%s.%N)
  $engine kill --signal TERM "$c" >/dev/null
  code=$(timeout 10 $engine wait "$c") || fail "$c did not exit within 10 s of SIGTERM"
  t1=$(date +%s.%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
  # Into a file first: `grep -q` on a pipe stops reading at the first match, and pipefail would
  # then count the writer's SIGPIPE as a failure.
  $engine logs "$c" > "$tmp/$c.log" 2>&1 || true
  tail -4 "$tmp/$c.log"
  [ "$code" = 0 ] || fail "$c exited with $code after SIGTERM"
  grep -q "received SIGTERM" "$tmp/$c.log" || fail "$c did not log SIGTERM"
  ok "$c exited with code $code, $secs s after SIGTERM"
done

step "summary"
$engine images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -F "${image%%:*}" | grep -F "${image##*:}" || true
echo "image size: $size_bytes bytes ($(awk -v b="$size_bytes" 'BEGIN{printf "%.1f MB", b/1e6}'))"
echo "smoke-test: PASS ($engine, $(( $(date +%s) - started )) s)"
