#!/usr/bin/env bash
# Checks the C++ sources: clang-format (.clang-format) over every tracked .cc/.h, then clang-tidy
# (.clang-tidy) over the project's own sources in server/, client/ and common/, with the compile
# database of a configured build (DROPNET_BUILD_DIR, default build). Exit status non-zero on a
# badly formatted file or on any clang-tidy finding.
#   DROPNET_LINT_JOBS   clang-tidy processes at once (default 2)
#   CLANG_FORMAT, CLANG_TIDY   the programs (default clang-format, clang-tidy)
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${DROPNET_BUILD_DIR:-build}
jobs=${DROPNET_LINT_JOBS:-2}
clang_format=${CLANG_FORMAT:-clang-format}
clang_tidy=${CLANG_TIDY:-clang-tidy}
start=$SECONDS

mapfile -t format_files < <(git ls-files '*.cc' '*.h')
echo "lint: clang-format --dry-run --Werror over ${#format_files[@]} files"
"$clang_format" --dry-run --Werror "${format_files[@]}" || {
  echo "lint: files above are not formatted (clang-format -i FILE formats one)" >&2
  exit 1
}
echo "lint: clang-format clean ($((SECONDS - start)) s)"

if [ ! -f "$build_dir/compile_commands.json" ]; then
  echo "lint: $build_dir/compile_commands.json is missing (configure the build first)" >&2
  exit 1
fi
# GCC's precompiled headers (-include .../cmake_pch.hxx, -Winvalid-pch) mean nothing to clang:
# clang-tidy reads a copy of the compile database without them.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$build_dir/compile_commands.json" "$tmp/compile_commands.json" <<'PY'
import json, shlex, sys
entries = json.load(open(sys.argv[1]))
for e in entries:
    args = e.pop("arguments", None) or shlex.split(e["command"])
    out, i = [], 0
    while i < len(args):
        if args[i] == "-include" and i + 1 < len(args) and "cmake_pch" in args[i + 1]:
            i += 2
            continue
        if args[i] != "-Winvalid-pch" and not (args[i].startswith("-include") and "cmake_pch" in args[i]):
            out.append(args[i])
        i += 1
    e["arguments"] = out
json.dump(entries, open(sys.argv[2], "w"), indent=1)
PY
mapfile -t tidy_files < <(git ls-files 'server/*.cc' 'client/*.cc' 'common/*.cc' |
                          grep -v '^client/examples/')
echo "lint: clang-tidy over ${#tidy_files[@]} files (server/, client/, common/), $jobs at a time"
tidy_start=$SECONDS
status=0
printf '%s\n' "${tidy_files[@]}" |
  xargs -P "$jobs" -n 1 "$clang_tidy" -p "$tmp" --quiet >"$tmp/tidy.log" 2>&1 || status=$?
grep -v -E '^[0-9]+ warnings? (and [0-9]+ errors? )?generated\.$|^Suppressed [0-9]+ warnings' \
  "$tmp/tidy.log" || true
echo "lint: clang-tidy took $((SECONDS - tidy_start)) s"
if ((status != 0)); then
  echo "lint: clang-tidy found problems" >&2
  exit 1
fi
echo "lint: all clean in $((SECONDS - start)) s"
