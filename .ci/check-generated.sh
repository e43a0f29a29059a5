#!/usr/bin/env bash
# Fails when crds/ differs from what the Rust types generate.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cargo run --quiet -p starmesh-operator --bin crdgen -- --out "$tmp/crds"
if ! diff -u -r crds "$tmp/crds"; then
    echo >&2
    echo "check-generated: crds/ is out of date with the Rust types in operator/api." >&2
    echo "Run: cargo run -p starmesh-operator --bin crdgen -- --out crds   and commit the result." >&2
    exit 1
fi
echo "check-generated: crds/ is up to date."
