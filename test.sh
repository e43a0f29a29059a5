#!/usr/bin/env bash
# Runs every test of starmesh: formatting, lints, generated-file drift, unit and
# integration tests (real files, real PostgreSQL), then the e2e tests against a real
# Kubernetes 1.20 control plane booted on this machine. Installs what it needs.
# Usage: ./test.sh            (everything)
#        SKIP_E2E=1 ./test.sh  is deliberately not offered: CI runs it all.
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

step "build"
cargo build --workspace --all-targets --locked

step "unit and integration tests"
cargo test --workspace --locked --exclude starmesh-e2e

step "e2e: boot a Kubernetes 1.20 cluster"
cluster_dir=$(mktemp -d /tmp/starmesh-e2e.XXXXXX)
cleanup() {
  local rc=$?
  step "e2e: tear the cluster down"
  bash "$root/e2e/cluster/down.sh" "$cluster_dir" || true
  rm -rf "$cluster_dir"
  exit $rc
}
trap cleanup EXIT
STARMESH_CLUSTER_NODE=0 bash e2e/cluster/up.sh "$cluster_dir"
# shellcheck disable=SC1091
source "$cluster_dir/env"

step "e2e tests"
cargo test -p starmesh-e2e --locked -- --test-threads=2
