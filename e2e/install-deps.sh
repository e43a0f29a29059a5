#!/usr/bin/env bash
# Installs the Debian packages the tests use, when missing. The cluster's own parts
# (etcd, containerd, the Kubernetes build) are installed by e2e/cluster/*.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

packages=(
  postgresql   # the node's PostgreSQL store is tested against a real server
  prometheus   # `promtool check metrics` validates `starmesh local`'s /metrics
  chromium     # the web map of `starmesh local` is tested in a real headless browser
  valgrind     # ./bench.sh counts the replicant's hot paths with callgrind (instructions)
)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  # policy-rc.d keeps the packages from starting system services: tests run their own.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo is required (rustup toolchain)" >&2; exit 1; }

# mdBook builds the handbook (docs/). Built from crates.io once per version into a cache
# outside the checkout and reused: CI pays the ~5 minute build only on a fresh machine.
# Only the `search` feature: the `serve`/`watch` ones (a web server, a file watcher)
# would double the build for nothing CI uses. Prints nothing when cached.
mdbook_version=0.5.4
mdbook_root=/var/cache/starmesh/mdbook-$mdbook_version
if [ ! -x "$mdbook_root/bin/mdbook" ]; then
  echo "building mdbook $mdbook_version into $mdbook_root (once per machine)"
  rm -rf "$mdbook_root.partial"
  mkdir -p "$(dirname "$mdbook_root")"
  CARGO_TARGET_DIR="$mdbook_root.partial/target" cargo install --quiet --locked \
    --no-default-features --features search --version "$mdbook_version" \
    --root "$mdbook_root.partial" mdbook
  rm -rf "$mdbook_root.partial/target"
  mv "$mdbook_root.partial" "$mdbook_root"
fi

# Python with grpcio + grpcio-tools: the Python game server example (node/sdk/examples/python/)
# is run by `node/tests/python_server.rs`, its stubs generated at test time from node/proto.
# Pinned; binary wheels from PyPI, so a few seconds when missing and nothing when present.
grpcio_version=1.84.0
if ! python3 -c "import grpc, grpc_tools, sys; sys.exit(grpc.__version__ != '$grpcio_version')" 2>/dev/null; then
  echo "installing grpcio $grpcio_version and grpcio-tools $grpcio_version (pip)"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq
    apt-get install -y -qq python3 python3-pip >/dev/null
  fi
  pip_args=(--quiet --disable-pip-version-check)
  # Debian's own python3 is "externally managed" (PEP 668); a pyenv/venv python is not.
  if python3 -c "import sysconfig, os, sys; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['stdlib'], 'EXTERNALLY-MANAGED')))"; then
    pip_args+=(--break-system-packages)
  fi
  python3 -m pip install "${pip_args[@]}" "grpcio==$grpcio_version" "grpcio-tools==$grpcio_version"
fi

# cargo-fuzz runs the fuzz targets (fuzz/run.sh). Built from crates.io once per version into
# a cache outside the checkout (about 3 minutes on a fresh machine; nothing when cached).
cargo_fuzz_version=0.13.2
cargo_fuzz_root=/var/cache/starmesh/cargo-fuzz-$cargo_fuzz_version
if [ ! -x "$cargo_fuzz_root/bin/cargo-fuzz" ]; then
  echo "building cargo-fuzz $cargo_fuzz_version into $cargo_fuzz_root (once per machine)"
  rm -rf "$cargo_fuzz_root.partial"
  mkdir -p "$(dirname "$cargo_fuzz_root")"
  CARGO_TARGET_DIR="$cargo_fuzz_root.partial/target" cargo install --quiet --locked \
    --version "$cargo_fuzz_version" --root "$cargo_fuzz_root.partial" cargo-fuzz
  rm -rf "$cargo_fuzz_root.partial/target"
  mv "$cargo_fuzz_root.partial" "$cargo_fuzz_root"
fi
