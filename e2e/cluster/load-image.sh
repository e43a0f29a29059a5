#!/usr/bin/env bash
# Imports an image tarball (docker-archive, as `docker save` writes, or an OCI
# image layout tarball) into the cluster's containerd, in the k8s.io namespace
# the kubelet uses. No registry exists, so pods must use
# `imagePullPolicy: Never` (or IfNotPresent) for images loaded this way.
#
#   e2e/cluster/load-image.sh WORKDIR IMAGE.tar [extra `ctr images import` flags]
#
# A docker-archive names its images (RepoTags). An OCI tarball should carry an
# `io.containerd.image.name` annotation (full name) in index.json; one with
# only a tag in `org.opencontainers.image.ref.name` needs `--base-name REPO`,
# else ctr names it "import-DATE".
# Prints the names of the images it imported ("unpacking NAME (DIGEST)...done").
set -euo pipefail

if [ $# -lt 2 ]; then echo "usage: $0 WORKDIR IMAGE.tar [ctr import flags...]" >&2; exit 2; fi
W=$(cd "$1" && pwd)
tarball=$2
shift 2
sock=$W/containerd/containerd.sock
[ -S "$sock" ] || { echo "load-image.sh: no containerd socket $sock (cluster not up, or control-plane-only)" >&2; exit 1; }
[ -f "$tarball" ] || { echo "load-image.sh: no such file $tarball" >&2; exit 1; }

# ctr talks to containerd over its unix socket, so it works from the root
# network namespace. Unpacked for the overlayfs snapshotter the CRI uses.
ctr --address "$sock" -n k8s.io images import --snapshotter overlayfs "$@" "$tarball"
