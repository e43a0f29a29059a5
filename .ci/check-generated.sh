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

# The handbook's reference pages (docs/src/reference/): resource fields, CLI, metrics,
# generated from the CRD schema, the clap definition and the metric registries.
mkdir -p "$tmp/reference"
cargo run --quiet -p starmesh-operator --bin operator-reference -- "$tmp/reference"
cargo run --quiet -p starmesh-node --bin node-reference -- "$tmp/reference"
for page in resources cli metrics-node metrics-operator; do
    if ! diff -u "docs/src/reference/$page.md" "$tmp/reference/$page.md"; then
        echo >&2
        echo "check-generated: docs/src/reference/$page.md is out of date with the code." >&2
        echo "Run: cargo run -p starmesh-operator --bin operator-reference && cargo run -p starmesh-node --bin node-reference   and commit the result." >&2
        exit 1
    fi
done
echo "check-generated: docs/src/reference/ is up to date."

# The Helm chart: lint-clean, its crds/ the generated ones, and
# manifests/install.yaml the chart rendered with default values.
helm="$(e2e/cluster/install-helm.sh | tail -n1)"
if [ "$(readlink charts/starmesh/crds)" != "../../crds" ]; then
    echo "check-generated: charts/starmesh/crds must be the symlink ../../crds (the chart ships the generated CRDs as they are)." >&2
    exit 1
fi
# Both RBAC shapes: cluster-wide (default) and one watched namespace (Roles).
"$helm" lint --strict charts/starmesh 2> >(grep -v 'found symbolic link' >&2)
"$helm" lint --strict charts/starmesh --set watchNamespace=games 2> >(grep -v 'found symbolic link' >&2)
# The opt-in monitoring objects (monitoring/: the Grafana dashboard, the PrometheusRule).
"$helm" lint --strict charts/starmesh --set monitoring.dashboard.enabled=true,monitoring.prometheusRule.enabled=true \
    2> >(grep -v 'found symbolic link' >&2)
if [ "$(readlink charts/starmesh/monitoring)" != "../../monitoring" ]; then
    echo "check-generated: charts/starmesh/monitoring must be the symlink ../../monitoring (the chart ships monitoring/ as it is)." >&2
    exit 1
fi
HELM="$helm" charts/render-install.sh "$tmp/install.yaml"
if ! diff -u manifests/install.yaml "$tmp/install.yaml"; then
    echo >&2
    echo "check-generated: manifests/install.yaml is out of date with charts/starmesh (or crds/)." >&2
    echo "Run: charts/render-install.sh   and commit the result." >&2
    exit 1
fi
echo "check-generated: charts/starmesh lints clean; manifests/install.yaml is up to date."
