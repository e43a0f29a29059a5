#!/usr/bin/env bash
# Runs every test of starmesh: formatting, lints, generated-file drift, unit and
# integration tests (real files, real PostgreSQL), then the e2e tests against a real
# Kubernetes 1.20 control plane booted on this machine. Installs what it needs.
# Usage: ./test.sh   (root, Debian bookworm; every step must pass, nothing is skipped)
set -euo pipefail
cd "$(dirname "$0")"
root=$PWD

step() { printf '\n=== %s ===\n' "$*"; }

step "prerequisites"
bash e2e/install-deps.sh

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "generated files are up to date"
bash .ci/check-generated.sh

step "docs: the handbook builds (mdBook, offline)"
docs_out=$(mktemp -d /tmp/starmesh-book.XXXXXX)
bash docs/build.sh "$docs_out"
rm -rf "$docs_out"

step "build"
cargo build --workspace --all-targets --locked

step "unit and integration tests"
cargo test --workspace --locked --exclude starmesh-e2e

step "benchmarks (short)"
# Every bench runs, small, on the build above and prints finite numbers; no time is
# compared with a bound (figures: BENCHMARKS.md, full suite: ./bench.sh).
bash bench.sh --short

step "fuzz: every target for a bounded time (fuzz/run.sh)"
FUZZ_SECONDS=20 bash fuzz/run.sh

step "e2e: the operator against a Kubernetes 1.20 control plane"
cluster_dir=$(mktemp -d /tmp/starmesh-e2e.XXXXXX)
teardown() {
  bash "$root/e2e/cluster/down.sh" "$cluster_dir" || true
  rm -rf "$cluster_dir"
}
trap teardown EXIT
STARMESH_CLUSTER_NODE=0 bash e2e/cluster/up.sh "$cluster_dir"
(
  # shellcheck disable=SC1091
  source "$cluster_dir/env"
  cargo test -p starmesh-e2e --locked --test operator -- --test-threads=2
  # Alone: it kills and restarts kube-apiserver, which would fail the tests above.
  cargo test -p starmesh-e2e --locked --test apiserver_restart -- --nocapture
)
# Only one cluster runs on a machine at a time: this one goes before the next boots.
teardown
trap - EXIT

step "e2e: Helm install, failover, upgrade, uninstall on a full single-node cluster"
bash e2e/run-cluster-tests.sh
