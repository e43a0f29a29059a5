#!/usr/bin/env bash
# The in-cluster e2e tests (e2e/tests/helm.rs, e2e/tests/mesh.rs): builds the images, boots a FULL
# single-node cluster (e2e/cluster/up.sh, with a kubelet), loads the images,
# runs the tests and always tears the cluster down, pass or fail.
#
#   e2e/run-cluster-tests.sh
#
# Env:
#   STARMESH_IMAGE_PROFILE  cargo profile of the image binaries: debug (default) or
#                           release. Debug by default because a release build of
#                           both binaries costs minutes of CI's 2 cores and changes
#                           nothing this test checks (the same binaries, the same
#                           image layout; build-images.sh strips debug info).
#   STARMESH_CLUSTER_WAIT   seconds to wait for another cluster on this machine to go
#                           away first (only one can run at a time); default 900.
#   STARMESH_IMAGE_DIR      use the image tarballs already in this directory
#                           (charts/build-images.sh output) instead of building them.
#   STARMESH_KEEP_WORKDIR=1 keep the work dir (cluster logs) after a pass too.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
profile=${STARMESH_IMAGE_PROFILE:-debug}
wait_s=${STARMESH_CLUSTER_WAIT:-900}

step() { printf '\n=== %s ===\n' "$*"; }
die() { echo "run-cluster-tests.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (the cluster harness creates a netns, cgroups, mounts)"

work=$(mktemp -d /tmp/starmesh-cluster-tests.XXXXXX)
cluster=$work/cluster
mkdir -p "$cluster"
cleanup() {
  local rc=$?
  step "tear the cluster down"
  bash "$root/e2e/cluster/down.sh" "$cluster" || rc=1
  if [ "$rc" = 0 ] && [ "${STARMESH_KEEP_WORKDIR:-0}" != 1 ]; then
    rm -rf "$work"
  else
    echo "run-cluster-tests.sh: logs kept in $work (cluster logs: $cluster/logs)" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT

step "helm"
HELM=$(e2e/cluster/install-helm.sh | tail -n1)
export HELM

# Everything that compiles runs before the cluster boots, so the cluster is up
# only for the test itself.
if [ -n "${STARMESH_IMAGE_DIR:-}" ]; then
  step "images: prebuilt in $STARMESH_IMAGE_DIR"
  ls "$STARMESH_IMAGE_DIR"/starmesh-operator-*.tar "$STARMESH_IMAGE_DIR"/starmesh-node-*.tar >/dev/null \
    || die "STARMESH_IMAGE_DIR=$STARMESH_IMAGE_DIR lacks the starmesh-operator/-node tarballs"
  images=$STARMESH_IMAGE_DIR
else
  step "images ($profile binaries)"
  images=$work/images
  charts/build-images.sh --profile "$profile" "$images"
fi

step "build the test"
# Run the built binary itself later: no cargo (no rebuild, no lock waits behind
# other builds) while the cluster is up.
built=$(cargo test --locked -p starmesh-e2e --test helm --test mesh --no-run --message-format=json)
test_bin_of() {
  jq -r --arg t "$1" 'select(.reason == "compiler-artifact" and .target.name == $t and .profile.test) | .executable' <<<"$built"
}
test_bin=$(test_bin_of helm)
mesh_bin=$(test_bin_of mesh)
[ -x "$test_bin" ] || die "could not find the built helm test binary (got '$test_bin')"
[ -x "$mesh_bin" ] || die "could not find the built mesh test binary (got '$mesh_bin')"

step "boot a full cluster"
# One cluster per machine: the harness's veth addresses are fixed. Another
# engineer's or test's cluster shows as a starmesh-* netns or a kube-apiserver.
other_cluster() {
  ip netns list 2>/dev/null | grep -q '^starmesh-' || pgrep -x kube-apiserver >/dev/null
}
if other_cluster; then
  echo "run-cluster-tests.sh: another cluster runs on this machine; waiting up to ${wait_s}s for it to stop" >&2
  deadline=$((SECONDS + wait_s))
  while other_cluster; do
    [ "$SECONDS" -lt "$deadline" ] || die "another cluster is still running after ${wait_s}s: $(ip netns list | tr '\n' ' ')"
    sleep 5
  done
fi

bash e2e/cluster/up.sh "$cluster"
# shellcheck disable=SC1091  # written by up.sh
source "$cluster/env"
[ "${STARMESH_CLUSTER_HAS_NODE:-0}" = 1 ] || die "up.sh booted a cluster without a node"

step "load the images"
for image in "$images"/starmesh-operator-*.tar "$images"/starmesh-node-*.tar; do
  bash e2e/cluster/load-image.sh "$cluster" "$image"
done

step "e2e: helm chart in the cluster"
(cd e2e && "$test_bin" --nocapture --test-threads=1) 2>&1 | tee "$work/helm-test.log"

step "e2e: the mesh runs in the cluster (Stanton Ready, bots, pod deletion, scale)"
(cd e2e && "$mesh_bin" --nocapture --test-threads=1) 2>&1 | tee "$work/mesh-test.log"
echo
grep -ho 'TIMING.*' "$work/helm-test.log" "$work/mesh-test.log" || true
