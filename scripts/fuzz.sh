#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan; fuzz/) in build-fuzz/ and runs each for
# SECONDS over a scratch copy of its seed corpus fuzz/corpus/<target>/ (the committed corpus does
# not grow). A crash, leak, timeout or out-of-memory input is kept in build-fuzz/artifacts/<target>/
# and fails the run; each target's log is build-fuzz/logs/<target>.log.
#   scripts/fuzz.sh                 # 60 s a target
#   scripts/fuzz.sh 240 spec csv    # four minutes each, these targets only
#   scripts/fuzz.sh 0               # build only
# Reproduce a kept input: build-fuzz/bin/<target>_fuzzer build-fuzz/artifacts/<target>/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(spec checkpoint csv idx request)
dir=${DROPNET_FUZZ_BUILD_DIR:-build-fuzz}
cxx=${DROPNET_FUZZ_CXX:-$(command -v clang++-14 || command -v clang++ || true)}
[ -n "$cxx" ] || { echo "fuzz: clang++ is not installed (scripts/setup.sh installs it)" >&2; exit 1; }

if [ ! -f "$dir/CMakeCache.txt" ]; then
  cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER="$cxx" \
    -DDROPNET_FUZZ=ON -DDROPNET_BUILD_TESTS=OFF >/dev/null
fi
cmake --build "$dir" --target fuzzers
((seconds > 0)) || exit 0

mkdir -p "$dir/logs"
failed=()
for t in "${targets[@]}"; do
  bin="$dir/bin/${t}_fuzzer"
  [ -x "$bin" ] || { echo "fuzz: no target '$t'" >&2; exit 2; }
  work=$(mktemp -d)
  cp fuzz/corpus/"$t"/* "$work"/
  artifacts="$dir/artifacts/$t"
  mkdir -p "$artifacts"
  dict=()
  [ -f "fuzz/$t.dict" ] && dict=(-dict="fuzz/$t.dict")
  rc=0
  # Leak checks on; an input that runs 30 s or needs 2 GB is a finding too.
  "$bin" "$work" "${dict[@]}" -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts/" -print_final_stats=1 >"$dir/logs/$t.log" 2>&1 || rc=$?
  rm -rf "$work"
  summary=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$dir/logs/$t.log" | tail -1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$dir/logs/$t.log")
  echo "fuzz: $t: ${execs:-?} runs in ${seconds} s; ${summary:-no DONE line}; exit $rc"
  if ((rc != 0)); then
    failed+=("$t")
    grep -E 'ERROR: |SUMMARY: |Test unit written' "$dir/logs/$t.log" | head -5 >&2 || true
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: FAILED: ${failed[*]} (inputs in $dir/artifacts/, logs in $dir/logs/)" >&2
  exit 1
fi
