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
#   STARMESH_E2E_TESTS      which tests to run, of "helm mesh chaos autoscale studio docs security bench_operator"
#                           (default: the `tests=` list below).
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
  charts/build-images.sh --profile "$profile" --studio "$images"
fi

step "build the test"
# Run the built binary itself later: no cargo (no rebuild, no lock waits behind
# other builds) while the cluster is up.
all_tests="helm mesh chaos autoscale studio docs bench_operator security"
tests=" ${STARMESH_E2E_TESTS:-helm mesh chaos autoscale studio docs security bench_operator} "
test_args=()
for t in $all_tests; do test_args+=(--test "$t"); done
built=$(cargo test --locked -p starmesh-e2e "${test_args[@]}" --no-run --message-format=json)
test_bin_of() {
  jq -r --arg t "$1" 'select(.reason == "compiler-artifact" and .target.name == $t and .profile.test) | .executable' <<<"$built"
}
declare -A test_bins
for t in $all_tests; do
  test_bins[$t]=$(test_bin_of "$t")
  [ -x "${test_bins[$t]}" ] || die "could not find the built $t test binary (got '${test_bins[$t]}')"
done

step "boot a full cluster"
# One cluster per machine: the harness's veth addresses are fixed. Another
# engineer's or test's cluster shows as a starmesh-* netns or a kube-apiserver.
other_cluster() {
  ip netns list 2>/dev/null | grep -q '^starmesh-' || pgrep -x kube-apiserver >/dev/null
}
# Two runs of this script must not both see "no cluster" and boot at once: the first to
# take the lock waits for any other cluster and boots; the lock is held (fd 9) until exit.
exec 9>/run/lock/starmesh-cluster-tests.lock
flock -w "$wait_s" 9 || die "another run-cluster-tests.sh still holds the cluster lock after ${wait_s}s"
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
for image in "$images"/starmesh-operator-*.tar "$images"/starmesh-node-*.tar "$images"/starmesh-studio-*.tar; do
  # A prebuilt STARMESH_IMAGE_DIR may lack the studio image: studio.rs then fails, naming it.
  [ -e "$image" ] || continue
  bash e2e/cluster/load-image.sh "$cluster" "$image"
done

# A second tag of the operator image: mesh.rs `helm upgrade`s the operator to it under
# load (a changed image reference rolls the Deployment; the node image stays, so the
# mesh must not notice).
step "tag the operator image for the upgrade test"
ctr_k8s() { ctr --address "$cluster/containerd/containerd.sock" -n k8s.io "$@"; }
operator_ref=$(ctr_k8s images ls -q | grep -E '/starmesh/operator:[^:]+$' | grep -v -- '-e2e-upgrade$' | head -n1)
[ -n "$operator_ref" ] || die "no starmesh/operator image in the cluster's containerd"
STARMESH_E2E_UPGRADE_TAG="${operator_ref##*:}-e2e-upgrade"
ctr_k8s images tag --force "$operator_ref" "${operator_ref%:*}:$STARMESH_E2E_UPGRADE_TAG"
export STARMESH_E2E_UPGRADE_TAG

# Each test leaves the cluster as it found it. The handbook's pages run last: its
# install page leaves the reader's `starmesh-system` installation behind, as a reader would.
run_test() { # NAME TITLE
  [[ $tests == *" $1 "* ]] || return 0
  step "e2e: $2"
  (cd e2e && "${test_bins[$1]}" --nocapture --test-threads=1) 2>&1 | tee "$work/$1-test.log"
}
for t in $all_tests; do touch "$work/$t-test.log"; done
run_test helm "helm chart in the cluster"
run_test mesh "the mesh runs in the cluster (Stanton + Pyro, bots through the gate, operator upgrade under load, pod deletion, scale)"
run_test security "least privilege (kubectl auth can-i), restricted pods, the chart's player-token Secret never leaked"
run_test chaos "chaos under load"
run_test autoscale "autoscaling (split, server added, merge back, drain) with Prometheus counts"
run_test studio "a studio's own game-server image (the SDK's beacons) runs a layout, bots play"
run_test docs "every cluster snippet of the handbook"
run_test bench_operator "benchmark: a 20-server layout to Ready beside the same objects applied plain"
echo
grep -ho 'TIMING.*' "$work"/*-test.log || true
