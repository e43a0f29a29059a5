#!/usr/bin/env bash
# Builds the handbook (docs/) into DIR (default docs/book) with mdBook, offline.
# mdBook is installed by e2e/install-deps.sh into /var/cache/starmesh/mdbook-<version>;
# MDBOOK=/path/to/mdbook overrides.
#
#   docs/build.sh [DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/docs/book}
mdbook=${MDBOOK:-$(ls -d /var/cache/starmesh/mdbook-*/bin/mdbook 2>/dev/null | sort -V | tail -n1)}
[ -x "$mdbook" ] || { echo "docs/build.sh: no mdbook; run e2e/install-deps.sh" >&2; exit 1; }
# The reference pages are generated: a missing one is a broken checkout, not a warning.
for page in resources cli metrics-node metrics-operator; do
  [ -s "$root/docs/src/reference/$page.md" ] || { echo "docs/build.sh: docs/src/reference/$page.md missing (see docs/README.md)" >&2; exit 1; }
done
"$mdbook" build "$root/docs" --dest-dir "$out"
echo "docs/build.sh: the handbook is in $out/index.html"
