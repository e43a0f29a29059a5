#!/usr/bin/env bash
# Builds every fuzz target and runs each for a bounded time from the committed seeds
# (fuzz/seeds/<target>). A crash, panic, timeout or memory blow-up fails the run; the input
# is kept in fuzz/artifacts/<target>/ and printed in hex, to become a regression test.
# Usage: fuzz/run.sh [target...]   (FUZZ_SECONDS per target, default 30; ./test.sh runs 20)
set -euo pipefail
cd "$(dirname "$0")"
seconds=${FUZZ_SECONDS:-30}
cargo_fuzz_version=0.13.2
export PATH="/var/cache/starmesh/cargo-fuzz-$cargo_fuzz_version/bin:$PATH"
command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz missing: run e2e/install-deps.sh" >&2; exit 1; }
# cargo-fuzz passes nightly-only flags (-Z, sanitizer-coverage passes); the machine has only
# the stable toolchain, and RUSTC_BOOTSTRAP=1 lets stable rustc and cargo accept them.
export RUSTC_BOOTSTRAP=1
# The build cache lives outside the checkout, so CI rebuilds only the starmesh crates.
target_dir=/var/cache/starmesh/fuzz-target
# No sanitizer: safe Rust needs none to find panics, and ASan doubles build and run time.
flags=(--sanitizer none --codegen-units 16 --target-dir "$target_dir")
started=$(date +%s)
cargo fuzz build "${flags[@]}"
echo "fuzz build: $(($(date +%s) - started)) s"

targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
work=$(mktemp -d /tmp/starmesh-fuzz.XXXXXX)
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  bin="$target_dir/x86_64-unknown-linux-gnu/release/$t"
  mkdir -p "$work/$t" "artifacts/$t"
  echo "--- fuzz $t for ${seconds}s"
  # New inputs go to the scratch corpus (first dir); the seeds are only read.
  if ! "$bin" "$work/$t" "seeds/$t" -max_total_time="$seconds" -timeout=10 \
      -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" >"$work/$t.log" 2>&1; then
    failed+=("$t")
    tail -n 40 "$work/$t.log"
    for a in "artifacts/$t"/*; do
      [ -f "$a" ] && echo "input $a: $(od -An -tx1 -v "$a" | tr -d ' \n' | head -c 4096)"
    done
  else
    grep -E "^stat::number_of_executed_units|^Done" "$work/$t.log" | tr '\n' ' '
    echo
  fi
done
echo "fuzz total: $(($(date +%s) - started)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets failed: ${failed[*]}" >&2
  exit 1
fi
