#!/usr/bin/env bash
# Builds the Kubernetes 1.20 control-plane and node binaries from Debian's source
# package and caches them outside the checkout, keyed by source version and the
# reflect2 swap (see shared/docs/kubernetes-on-this-machine.md for why).
# Prints the cache directory holding the binaries on its last line.
set -euo pipefail

CACHE_ROOT=${STARMESH_CACHE:-/var/cache/starmesh}
BINARIES="kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy"

export DEBIAN_FRONTEND=noninteractive
need_pkgs=()
for p in golang-go golang-github-modern-go-reflect2-dev rsync jq dpkg-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || need_pkgs+=("$p")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

# A deb-src line for the machine's own suites, so `apt-get source` works.
if ! grep -rqs '^Types: deb-src\|^deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > /etc/apt/sources.list.d/starmesh-deb-src.sources <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt-get update -qq
fi

src_version=$(apt-cache showsrc kubernetes | awk '/^Version:/{print $2; exit}')
reflect2_version=$(dpkg-query -W -f '${Version}' golang-github-modern-go-reflect2-dev)
key="kubernetes-${src_version}-reflect2-${reflect2_version}"
out="$CACHE_ROOT/$key"

have_all=1
for b in $BINARIES; do [ -x "$out/$b" ] || have_all=0; done
if [ "$have_all" = 1 ]; then
  echo "cached: $out" >&2
  echo "$out"
  exit 0
fi

work="$CACHE_ROOT/build-$key"
rm -rf "$work"
mkdir -p "$work"
cd "$work"
echo "building $key in $work (6-10 minutes cold)" >&2
apt-get source --download-only kubernetes >/dev/null 2>&1
orig=$(ls kubernetes_*.orig.tar.* | head -n1)
mkdir src
tar -xf "$orig" -C src --strip-components=1
cd src
# The vendored reflect2 1.0.1 crashes the apiserver under Go >= 1.18.
rm -rf vendor/github.com/modern-go/reflect2
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 vendor/github.com/modern-go/reflect2
mkdir -p .go/src/k8s.io
ln -sfn "$PWD" .go/src/k8s.io/kubernetes
cd .go/src/k8s.io/kubernetes
export GOPATH="$work/src/.go" GO111MODULE=off CGO_ENABLED=0 GOFLAGS=
make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kube-scheduler cmd/kubelet cmd/kube-proxy" >&2

mkdir -p "$out.tmp"
for b in $BINARIES; do
  cp "_output/local/bin/linux/amd64/$b" "$out.tmp/$b" 2>/dev/null || cp "_output/bin/$b" "$out.tmp/$b"
done
rm -rf "$out"
mv "$out.tmp" "$out"
cd /
rm -rf "$work"
echo "$out"
