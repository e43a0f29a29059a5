#!/usr/bin/env bash
# Runs starmesh's benchmark suite and prints one table: each figure, its value, the
# baseline measured in the same run (raw loopback TCP, fsync'd appends, a plain
# encode or scan), and the ratio. What each figure means: BENCHMARKS.md.
#
# Usage: ./bench.sh            full suite, release build (~15-25 min on 2 cores)
#        ./bench.sh --short    every bench, small and short, on the dev build that
#                              ./test.sh already made: checks that each runs and prints
#                              finite numbers (never that a time is below a bound)
#        ./bench.sh [--short] NAME...   only those benches (throughput hot_tick hot_delta
#                              hot_query hot_crowd handoff players)
# Needs what ./test.sh installs (PostgreSQL, valgrind: e2e/install-deps.sh). Figures
# go to stdout as a table and to target/bench/<date>-<mode>.tsv.
set -euo pipefail
cd "$(dirname "$0")"

short=0
only=()
for a in "$@"; do
  case "$a" in
    --short) short=1 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    -*) echo "unknown flag $a (see --help)" >&2; exit 2 ;;
    *) only+=("$a") ;;
  esac
done
all=(throughput hot_tick hot_delta hot_query hot_crowd handoff players)
[ ${#only[@]} -gt 0 ] || only=("${all[@]}")

command -v valgrind >/dev/null || { echo "valgrind is missing: bash e2e/install-deps.sh" >&2; exit 1; }

if [ $short = 1 ]; then
  # Exactly test.sh's build (dev profile, whole workspace, so the same feature
  # unification): after it this is a no-op that only reports the executables.
  build=(cargo build --workspace --all-targets --locked --message-format=json)
  mode=short
  args=(--short)
else
  build=(cargo bench -p starmesh-node --no-run --locked --message-format=json)
  mode=full
  args=()
fi
echo "building: ${build[*]}" >&2
json=$("${build[@]}") || { echo "build failed" >&2; exit 1; }

exe_of() {
  # The executable cargo reported for bench target $1.
  printf '%s\n' "$json" | grep "\"kind\":\[\"bench\"\]" | grep "\"name\":\"$1\"" \
    | grep -o '"executable":"[^"]*"' | head -1 | cut -d'"' -f4
}

mkdir -p target/bench
out="target/bench/$(date -u +%Y%m%dT%H%M%SZ)-$mode.tsv"
{
  echo "# $(date -u '+%Y-%m-%d %H:%M UTC') mode=$mode nproc=$(nproc) cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') load=$(cut -d' ' -f1-3 /proc/loadavg)"
} > "$out"

failed=()
for b in "${only[@]}"; do
  exe=$(exe_of "$b")
  [ -n "$exe" ] && [ -x "$exe" ] || { echo "no executable for bench $b" >&2; exit 1; }
  echo "=== $b ($mode) ===" >&2
  start=$(date +%s)
  if ! "$exe" "${args[@]}" > "target/bench/$b.out"; then
    failed+=("$b")
    echo "bench $b FAILED" >&2
  fi
  lines=$(grep -c '^FIGURE' "target/bench/$b.out" || true)
  grep '^FIGURE' "target/bench/$b.out" | cut -f2- >> "$out" || true
  echo "=== $b: $lines figures in $(( $(date +%s) - start )) s ===" >&2
  if [ "$lines" -eq 0 ] && [[ ! " ${failed[*]} " == *" $b "* ]]; then
    failed+=("$b")
    echo "bench $b printed no figure" >&2
  fi
done

echo
head -1 "$out"
awk -F'\t' 'NR > 1 {
  base = ($4 == "-") ? "-" : $4 " " $5
  printf "%-78s %14s %-18s %-52s %8s\n", $1, $2, $3, base, $6
}' "$out"
echo "(saved in $out)"

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi
