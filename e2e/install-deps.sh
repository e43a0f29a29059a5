#!/usr/bin/env bash
# Installs the Debian packages the tests use, when missing. The cluster's own parts
# (etcd, containerd, the Kubernetes build) are installed by e2e/cluster/*.sh.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

packages=(
  postgresql   # the node's PostgreSQL store is tested against a real server
  prometheus   # `promtool check metrics` validates `starmesh local`'s /metrics
  chromium     # the web map of `starmesh local` is tested in a real headless browser
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
