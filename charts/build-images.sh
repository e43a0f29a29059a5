#!/usr/bin/env bash
# Builds the two starmesh container images as tarballs, without a base image,
# a registry or a container engine (none exists on the project's machines):
#
#   starmesh/operator:<version>  the `starmesh-operator` binary (the chart's Deployment)
#   starmesh/node:<version>      the `starmesh` binary (replicant, servers, gateway;
#                                the default of ServerLayout spec.image)
#   starmesh/studio-beacons:<version>  with --studio only: the SDK example game
#                                (node/sdk/examples/beacons.rs), a studio's own game-server
#                                image as ServerLayout spec.gameServerImage names it
#                                (e2e/tests/studio.rs)
#
#   charts/build-images.sh [--profile release|debug] [--no-build] [--studio] OUTDIR
#
# Writes OUTDIR/starmesh-operator-<version>.tar and OUTDIR/starmesh-node-<version>.tar
# (and OUTDIR/starmesh-studio-beacons-<version>.tar with --studio) and prints their
# paths, one a line. <version> is the workspace version from Cargo.
#
# Each image is a single layer holding exactly: the binary, the shared libraries
# `ldd` lists for it plus the dynamic loader, and a minimal /etc (passwd/group
# with the non-root user 65532, hosts, nsswitch.conf). It runs as 65532:65532.
#
# The tarball is both an OCI image layout (oci-layout, index.json, blobs/) and a
# docker-archive (manifest.json with RepoTags), the format `docker save` writes
# since Docker 25, so every loader understands it:
#   ctr -n k8s.io images import FILE      (e2e/cluster/load-image.sh WORKDIR FILE)
#   kind load image-archive FILE
#   docker load -i FILE
# The layer is an uncompressed tar with sorted names, zero owners and a fixed
# mtime, so the same binaries give the same image digest.
#
# --profile: cargo profile of the binaries (default release). Tests may use debug
#   to save CPU; debug binaries get their DWARF stripped in the image (200+ MB
#   otherwise). Release binaries keep the line tables the release profile asks for.
# --no-build: use the binaries already in the target directory.
set -euo pipefail

die() { echo "build-images.sh: $*" >&2; exit 1; }
usage() { echo "usage: $0 [--profile release|debug] [--no-build] [--studio] OUTDIR" >&2; exit 2; }

profile=release
build=1
studio=0
out=
while [ $# -gt 0 ]; do
  case $1 in
    --profile) [ $# -ge 2 ] || usage; profile=$2; shift 2 ;;
    --profile=*) profile=${1#--profile=}; shift ;;
    --no-build) build=0; shift ;;
    --studio) studio=1; shift ;;
    -h|--help) usage ;;
    -*) echo "build-images.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$out" ] || usage; out=$1; shift ;;
  esac
done
[ -n "$out" ] || usage
case $profile in release|debug) ;; *) die "--profile must be release or debug, not '$profile'" ;; esac
for tool in cargo jq ldd sha256sum tar objcopy; do
  command -v "$tool" >/dev/null || die "$tool is required"
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mkdir -p "$out"
out=$(cd "$out" && pwd)

meta=$(cargo metadata --no-deps --format-version 1 --locked)
version=$(jq -r '.packages[] | select(.name == "starmesh-operator") | .version' <<<"$meta")
target_dir=$(jq -r '.target_directory' <<<"$meta")
if [ -z "$version" ] || [ "$version" = null ]; then
  die "cannot read the starmesh-operator version from cargo metadata"
fi
# cargo's `dev` profile lives in target/debug.
bin_dir=$target_dir/$profile

if [ "$build" = 1 ]; then
  cargo_profile=$profile
  [ "$profile" = debug ] && cargo_profile=dev
  echo "build-images.sh: cargo build --profile $cargo_profile" >&2
  cargo build --locked --profile "$cargo_profile" \
    -p starmesh-operator --bin starmesh-operator \
    -p starmesh-node --bin starmesh >&2
  if [ "$studio" = 1 ]; then
    cargo build --locked --profile "$cargo_profile" -p starmesh-sdk --example beacons >&2
  fi
fi

# Fixed timestamps: reproducible layers and config (SOURCE_DATE_EPOCH if set).
epoch=${SOURCE_DATE_EPOCH:-0}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
uid=65532

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Copies a file into the rootfs at the same absolute path, following symlinks
# (the loader /lib64/ld-linux-x86-64.so.2 is a symlink on the host; in the
# image it is a plain file, so the image never depends on the host's layout).
put() {
  local src=$1 rootfs=$2 dst=${3:-$1}
  mkdir -p "$rootfs$(dirname "$dst")"
  cp -L "$src" "$rootfs$dst"
}

# The shared objects ldd resolves for BIN, plus the loader, one path a line.
# linux-vdso has no file (the kernel maps it) and is skipped. A library ldd
# cannot find is an error: the image would not start.
libs_of() {
  local bin=$1 line
  ldd "$bin" | while read -r line; do
    case $line in
      *"not found"*) die "ldd: $bin: $line" ;;
      *"=> /"*) line=${line#*=> }; echo "${line%% (*}" ;;
      /*) echo "${line%% (*}" ;;
      *) ;;
    esac
  done
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

# Writes FILE into blobs/sha256/<digest> of the layout dir and prints the digest.
blob() {
  local file=$1 layout=$2 d
  d=$(sha "$file")
  mv "$file" "$layout/blobs/sha256/$d"
  echo "$d"
}

# build_image NAME REPOSITORY BINARY
build_image() {
  local name=$1 repo=$2 binary=$3
  local img=$work/$name rootfs=$work/$name/rootfs layout=$work/$name/layout
  local exe
  exe=/usr/local/bin/$(basename "$binary")
  [ -x "$binary" ] || die "no binary $binary (build it, or drop --no-build)"
  mkdir -p "$rootfs" "$layout/blobs/sha256"

  put "$binary" "$rootfs" "$exe"
  if [ "$profile" = debug ]; then
    objcopy --strip-debug "$rootfs$exe"
  fi
  chmod 0755 "$rootfs$exe"
  # A variable first, not `< <(...)`: set -e then stops the build when ldd fails.
  local lib libs
  libs=$(libs_of "$binary")
  while read -r lib; do
    put "$lib" "$rootfs"
  done <<<"$libs"

  mkdir -p "$rootfs/etc" "$rootfs/tmp"
  printf 'root:x:0:0:root:/:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/:/sbin/nologin\n' "$uid" "$uid" >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:%d:\n' "$uid" >"$rootfs/etc/group"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
  # glibc >= 2.34 has the files and dns NSS modules built in: no libnss_* needed.
  printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
  chmod 1777 "$rootfs/tmp"

  # The layer: deterministic tar, everything owned by root (the non-root user
  # can read and execute but not change anything).
  tar --create --file "$img/layer.tar" --directory "$rootfs" \
    --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" \
    --format=gnu .
  local layer_size layer
  layer_size=$(stat -c %s "$img/layer.tar")
  layer=$(blob "$img/layer.tar" "$layout")

  jq -n --arg created "$created" --arg exe "$exe" --arg user "$uid:$uid" \
    --arg layer "sha256:$layer" --arg version "$version" --arg repo "$repo" '{
      architecture: "amd64", os: "linux", created: $created,
      config: {
        User: $user, Entrypoint: [$exe], Env: ["PATH=/usr/local/bin"], WorkingDir: "/",
        Labels: {
          "org.opencontainers.image.title": $repo,
          "org.opencontainers.image.version": $version,
          "org.opencontainers.image.source": "https://github.com/starmesh/starmesh",
          "org.opencontainers.image.licenses": "Apache-2.0"
        }
      },
      rootfs: {type: "layers", diff_ids: [$layer]},
      history: [{created: $created, created_by: "charts/build-images.sh"}]
    }' >"$img/config.json"
  local config_size config
  config_size=$(stat -c %s "$img/config.json")
  config=$(blob "$img/config.json" "$layout")

  jq -n --arg config "sha256:$config" --argjson config_size "$config_size" \
    --arg layer "sha256:$layer" --argjson layer_size "$layer_size" '{
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.manifest.v1+json",
      config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $config, size: $config_size},
      layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar", digest: $layer, size: $layer_size}]
    }' >"$img/manifest.json"
  local manifest_size manifest
  manifest_size=$(stat -c %s "$img/manifest.json")
  manifest=$(blob "$img/manifest.json" "$layout")

  # OCI: io.containerd.image.name carries the full name (ctr uses it as is);
  # ref.name the tag, as the OCI spec wants.
  jq -n --arg manifest "sha256:$manifest" --argjson size "$manifest_size" \
    --arg full "docker.io/$repo:$version" --arg tag "$version" '{
      schemaVersion: 2,
      mediaType: "application/vnd.oci.image.index.v1+json",
      manifests: [{
        mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $manifest, size: $size,
        platform: {architecture: "amd64", os: "linux"},
        annotations: {"io.containerd.image.name": $full, "org.opencontainers.image.ref.name": $tag}
      }]
    }' >"$layout/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  # docker-archive view of the same blobs (docker load, older kind versions).
  jq -n --arg config "blobs/sha256/$config" --arg layer "blobs/sha256/$layer" \
    --arg tag "$repo:$version" \
    '[{Config: $config, RepoTags: [$tag], Layers: [$layer]}]' >"$layout/manifest.json"

  local tarball=$out/$name-$version.tar
  tar --create --file "$tarball.tmp" --directory "$layout" \
    --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" --format=gnu \
    oci-layout index.json manifest.json blobs
  mv -f "$tarball.tmp" "$tarball"
  echo "build-images.sh: $repo:$version ($(du -h "$tarball" | cut -f1), manifest sha256:$manifest)" >&2
  echo "$tarball"
}

build_image starmesh-operator starmesh/operator "$bin_dir/starmesh-operator"
build_image starmesh-node starmesh/node "$bin_dir/starmesh"
if [ "$studio" = 1 ]; then
  build_image starmesh-studio-beacons starmesh/studio-beacons "$bin_dir/examples/beacons"
fi
