#!/usr/bin/env bash
# Boots a real single-node Kubernetes 1.20 cluster whose every component runs
# inside a network namespace of its own (see
# shared/docs/kubernetes-on-this-machine.md for why each choice is made).
#
#   e2e/cluster/up.sh WORKDIR            # full cluster: control plane + node
#   STARMESH_CLUSTER_NODE=0 e2e/cluster/up.sh WORKDIR
#   e2e/cluster/up.sh --control-plane-only WORKDIR
#                                        # etcd, apiserver, controller-manager,
#                                        # scheduler only
#
# WORKDIR must be empty or absent. All state, logs and certificates go under it.
# On success it holds `kubeconfig` and `env` (shell exports; `. WORKDIR/env`).
# On failure it prints the failing component's log tail, tears the cluster down
# with down.sh (unless STARMESH_KEEP_ON_FAILURE=1) and exits non-zero.
# Always run `down.sh WORKDIR` afterwards; it is safe after a partial up.sh.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

node_mode=${STARMESH_CLUSTER_NODE:-1}
if [ "${1:-}" = "--control-plane-only" ]; then node_mode=0; shift; fi
if [ $# -ne 1 ]; then
  echo "usage: $0 [--control-plane-only] WORKDIR" >&2
  exit 2
fi
case "$node_mode" in 0|1) ;; *) echo "STARMESH_CLUSTER_NODE must be 0 or 1" >&2; exit 2 ;; esac

mkdir -p "$1"
W=$(cd "$1" && pwd)
if [ -n "$(ls -A "$W")" ]; then
  echo "up.sh: $W is not empty; use a fresh WORKDIR (and down.sh the old one)" >&2
  exit 2
fi

# Addresses (198.18.0.0/15 is reserved for network tests and clashes with nothing).
HOST_IP=198.18.0.1
NODE_IP=198.18.0.2
POD_CIDR=198.19.0.0/16
SERVICE_CIDR=198.18.128.0/17
FIRST_SERVICE_IP=198.18.128.1
NODE_NAME=starmesh-node

ID=$$
NETNS=starmesh-$ID
VETH_HOST=smh$ID   # interface names are limited to 15 characters
VETH_NODE=smn$ID
CGROUP=starmesh-$ID
# Only the network namespace: `ip netns exec` would also make a new mount
# namespace, hiding the kubelet's volume mounts from containerd.
NS=(nsenter "--net=/run/netns/$NETNS" --)
t0=$(date +%s)

log() { echo "[up.sh +$(( $(date +%s) - t0 ))s] $*" >&2; }

# --- failure handling -------------------------------------------------------
failed_component=""
on_exit() {
  local rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "up.sh: FAILED (exit $rc)${failed_component:+ while starting $failed_component}" >&2
    local f=$W/logs/$failed_component.log
    if [ -n "$failed_component" ] && [ -f "$f" ]; then
      # Go components end a fatal error with usage text or goroutine dumps,
      # so show their last klog error/fatal lines as well as the tail.
      echo "---- last E/F lines of $f ----" >&2
      grep -E '^[EF][0-9]{4} ' "$f" | tail -n 10 >&2 || true
      echo "---- last 40 lines of $f ----" >&2
      tail -n 40 "$f" >&2 || true
      echo "----" >&2
    fi
    if [ "${STARMESH_KEEP_ON_FAILURE:-0}" = 1 ]; then
      echo "up.sh: STARMESH_KEEP_ON_FAILURE=1: left running; run $here/down.sh $W" >&2
    else
      echo "up.sh: tearing down with down.sh (logs stay in $W/logs)" >&2
      "$here/down.sh" "$W" >&2 || true
    fi
  fi
  exit "$rc"
}
trap on_exit EXIT

# --- packages ---------------------------------------------------------------
pkgs=(etcd-server openssl iproute2 util-linux curl)
if [ "$node_mode" = 1 ]; then
  pkgs+=(containerd runc containernetworking-plugins iptables ipset busybox-static conntrack)
else
  pkgs+=(iptables)   # for the netns' own drop rule
fi
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- binaries ---------------------------------------------------------------
log "kubernetes binaries (build-kubernetes.sh)"
BIN=$("$here/build-kubernetes.sh" | tail -n 1)
for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  [ -x "$BIN/$b" ] || { echo "up.sh: $BIN/$b missing" >&2; exit 1; }
done

if ip -4 addr show | grep -q "inet $HOST_IP/"; then
  echo "up.sh: $HOST_IP is already assigned on this machine: is another starmesh cluster running? (one at a time)" >&2
  exit 1
fi

t_boot=$(date +%s)   # boot timings below exclude packages and the build
mkdir -p "$W/logs" "$W/pki" "$W/kube-cache"
: > "$W/pids"

# --- state for down.sh, written before each change it must undo ----------------
# Values are plain words; down.sh sources this file.
{
  echo "NETNS=$NETNS"
  echo "VETH_HOST=$VETH_HOST"
  echo "CGROUP=$CGROUP"
  # `ip netns add` creates /run/netns and bind-mounts it onto itself.
  if [ -d /run/netns ]; then echo "RUN_NETNS_EXISTED=1"; else echo "RUN_NETNS_EXISTED=0"; fi
  if mountpoint -q /run/netns 2>/dev/null; then echo "RUN_NETNS_WAS_MOUNT=1"; else echo "RUN_NETNS_WAS_MOUNT=0"; fi
  # Paths the kubelet, containerd and CNI create outside WORKDIR whatever their
  # flags say; down.sh removes those that did not exist before.
  created=""
  for p in /run/containerd /var/lib/cni /var/lib/kubelet /var/log/pods /var/log/containers; do
    [ -e "$p" ] || created="$created $p"
  done
  echo "CREATED_PATHS=\"${created# }\""
  # Global sysctls the kubelet sets (setupKernelTunables); down.sh restores them.
  if [ "$node_mode" = 1 ]; then
    sc=""
    for k in vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops \
             kernel.keys.root_maxkeys kernel.keys.root_maxbytes; do
      sc="$sc $k=$(sysctl -n "$k")"
    done
    echo "SYSCTLS=\"${sc# }\""
  fi
} > "$W/state"

# start_component NAME CMD...: runs CMD inside the netns, detached from this
# shell (own session, stdin closed), logging to logs/NAME.log; records
# "NAME PID STARTTIME" in pids and CMD in cmdlines/NAME (for restart.sh).
# The process is also put in the pids cgroup $CGROUP/components so down.sh
# can find what it forked (containerd shims).
start_component() {
  local name=$1; shift
  local procs=/sys/fs/cgroup/pids/$CGROUP/components/cgroup.procs
  (
    [ -w "$procs" ] && echo "$BASHPID" > "$procs"
    # setsid: survive the caller's process group ending; not a group leader
    # here, so it (and nsenter, without --fork) exec in place: $! is the PID.
    exec setsid "${NS[@]}" "$@" </dev/null >>"$W/logs/$name.log" 2>&1
  ) &
  local pid=$!
  local st
  st=$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null || echo 0)
  echo "$name $pid $st" >> "$W/pids"
  # The command line, shell-quoted, for restart.sh (same arguments again).
  mkdir -p "$W/cmdlines" && printf '%q ' "$@" > "$W/cmdlines/$name"
  log "started $name (pid $pid)"
}

# wait_for NAME TIMEOUT WHAT CMD...: polls CMD until it succeeds; fails if
# NAME's process died or TIMEOUT seconds passed. WHAT names the check.
wait_for() {
  local name=$1 timeout=$2 what=$3; shift 3
  local pid deadline=$(( $(date +%s) + timeout ))
  pid=$(awk -v n="$name" '$1==n {print $2}' "$W/pids" | tail -n 1)
  failed_component=$name
  until "$@" >/dev/null 2>&1; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      echo "up.sh: $name (pid $pid) exited" >&2
      return 1
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "up.sh: $name: no $what after ${timeout}s" >&2
      return 1
    fi
    sleep 0.5
  done
  failed_component=""
  log "$name: $what"
}

# --- cgroups ------------------------------------------------------------------
# One tree per cluster in every v1 hierarchy: the kubelet's cgroupRoot (pods
# go to $CGROUP/kubepods) and, in the pids hierarchy, $CGROUP/components for
# the processes started here. down.sh kills what is left in it and removes it.
if [ -d /sys/fs/cgroup/pids ] && [ "$(stat -fc %T /sys/fs/cgroup)" = tmpfs ]; then
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [ "$(stat -fc %T "$h")" = cgroupfs ] || continue   # skip cgroup2 "unified"
    mkdir -p "$h/$CGROUP"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" > "$h/$CGROUP/cpuset.cpus"
      cat "$h/cpuset.mems" > "$h/$CGROUP/cpuset.mems"
    fi
  done
  mkdir -p "/sys/fs/cgroup/pids/$CGROUP/components"
else
  echo "up.sh: needs cgroup v1 (as on the project's machines)" >&2
  exit 1
fi

# --- network namespace ----------------------------------------------------
log "netns $NETNS"
ip netns add "$NETNS"
ip link add "$VETH_HOST" type veth peer name "$VETH_NODE"
ip link set "$VETH_NODE" netns "$NETNS"
ip addr add "$HOST_IP/24" dev "$VETH_HOST"
ip link set "$VETH_HOST" up
"${NS[@]}" ip link set lo up
"${NS[@]}" ip addr add "$NODE_IP/24" dev "$VETH_NODE"
"${NS[@]}" ip link set "$VETH_NODE" up
# No default route inside the netns, and nothing forwarded out of the veth:
# pods can reach neither the host nor the outside world.
"${NS[@]}" iptables -t mangle -A FORWARD -o "$VETH_NODE" -j DROP

# --- certificates -------------------------------------------------------------
log "certificates"
P=$W/pki
failed_component=openssl
(
  cd "$P"
  exec 2>"$W/logs/openssl.log"
  openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 \
    -keyout ca.key -out ca.crt -subj "/CN=starmesh-ca"
  cat > apiserver.ext <<EOF
basicConstraints=CA:FALSE
keyUsage=digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:$NODE_IP,IP:$FIRST_SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
  openssl req -newkey rsa:2048 -nodes -sha256 -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver"
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -sha256 -extfile apiserver.ext -out apiserver.crt
  # The apiserver's client cert towards kubelets (kubectl logs/exec).
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > client.ext
  openssl req -newkey rsa:2048 -nodes -sha256 -keyout kubelet-client.key -out kubelet-client.csr \
    -subj "/O=system:masters/CN=kube-apiserver-kubelet-client"
  openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -sha256 -extfile client.ext -out kubelet-client.crt
  openssl genrsa -out sa.key 2048
  openssl rsa -in sa.key -pubout -out sa.pub
  chmod 600 ./*.key
)
TOKEN=$(openssl rand -hex 24)
echo "$TOKEN,admin,admin,\"system:masters\"" > "$P/tokens.csv"
chmod 600 "$P/tokens.csv"
failed_component=""

cat > "$W/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: starmesh
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority-data: $(base64 -w0 < "$P/ca.crt")
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: starmesh
  context: {cluster: starmesh, user: admin}
current-context: starmesh
EOF
chmod 600 "$W/kubeconfig"
KC=$W/kubeconfig

# --- etcd -------------------------------------------------------------------
# Peer and metrics URLs pinned to loopback so etcd opens no other ports.
start_component etcd etcd --name starmesh --data-dir "$W/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster starmesh=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
wait_for etcd 30 healthy "${NS[@]}" curl -fsS http://127.0.0.1:2379/health

# --- kube-apiserver ---------------------------------------------------------
# Bind and advertise the node IP: with loopback it would advertise some other
# interface and pods could not reach the API through the kubernetes Service.
start_component kube-apiserver "$BIN/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:2379 \
  --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port=6443 \
  --insecure-port=0 --cert-dir="$W/apiserver" \
  --tls-cert-file="$P/apiserver.crt" --tls-private-key-file="$P/apiserver.key" \
  --client-ca-file="$P/ca.crt" --token-auth-file="$P/tokens.csv" \
  --service-account-key-file="$P/sa.pub" --service-account-signing-key-file="$P/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --authorization-mode=RBAC --allow-privileged=true \
  --kubelet-client-certificate="$P/kubelet-client.crt" --kubelet-client-key="$P/kubelet-client.key" \
  --kubelet-preferred-address-types=InternalIP
# Checked from the root namespace, through the veth, as the tests will use it.
wait_for kube-apiserver 90 ready curl -fsS --max-time 2 --cacert "$P/ca.crt" \
  -H "Authorization: Bearer $TOKEN" "https://$NODE_IP:6443/readyz"
api_ready=$(( $(date +%s) - t_boot ))

# --- controller-manager and scheduler ---------------------------------------
# --leader-elect=false: with it they exit whenever the apiserver restarts.
# --flex-volume-plugin-dir: else it creates /usr/libexec/kubernetes.
# -nodeipam: pod CIDRs come from the CNI config, not from node objects.
start_component kube-controller-manager "$BIN/kube-controller-manager" \
  --kubeconfig="$KC" --authentication-kubeconfig="$KC" --authorization-kubeconfig="$KC" \
  --leader-elect=false --bind-address=127.0.0.1 --port=0 --secure-port=10257 \
  --service-account-private-key-file="$P/sa.key" --root-ca-file="$P/ca.crt" \
  --cluster-signing-cert-file="$P/ca.crt" --cluster-signing-key-file="$P/ca.key" \
  --controllers='*,-nodeipam' --service-cluster-ip-range="$SERVICE_CIDR" \
  --flex-volume-plugin-dir="$W/flexvolume" --cert-dir="$W/controller-manager"
start_component kube-scheduler "$BIN/kube-scheduler" \
  --kubeconfig="$KC" --authentication-kubeconfig="$KC" --authorization-kubeconfig="$KC" \
  --leader-elect=false --bind-address=127.0.0.1 --port=0 --secure-port=10259 \
  --cert-dir="$W/scheduler"
wait_for kube-controller-manager 60 healthy "${NS[@]}" curl -fsSk https://127.0.0.1:10257/healthz
wait_for kube-scheduler 60 healthy "${NS[@]}" curl -fsSk https://127.0.0.1:10259/healthz
# The token controller must have made the default service account before pods
# (and most tests) can be created in a namespace.
wait_for kube-controller-manager 60 "default service account" env KUBECONFIG="$KC" KUBECACHEDIR="$W/kube-cache" \
  kubectl get serviceaccount default -n default

# --- env file -----------------------------------------------------------------
write_env() {
  cat > "$W/env" <<EOF
export STARMESH_CLUSTER_WORKDIR=$W
export KUBECONFIG=$W/kubeconfig
export KUBECACHEDIR=$W/kube-cache
export STARMESH_CLUSTER_NETNS=$NETNS
export STARMESH_NETNS_PATH=/run/netns/$NETNS
export STARMESH_NODE_IP=$NODE_IP
export STARMESH_HOST_IP=$HOST_IP
export STARMESH_API_SERVER=https://$NODE_IP:6443
export STARMESH_CA_CERT=$P/ca.crt
export STARMESH_ADMIN_TOKEN=$TOKEN
export STARMESH_POD_CIDR=$POD_CIDR
export STARMESH_SERVICE_CIDR=$SERVICE_CIDR
export STARMESH_KUBE_BIN_DIR=$BIN
export STARMESH_CLUSTER_HAS_NODE=$node_mode
EOF
  if [ "$node_mode" = 1 ]; then
    cat >> "$W/env" <<EOF
export STARMESH_NODE_NAME=$NODE_NAME
export STARMESH_CONTAINERD_SOCK=$W/containerd/containerd.sock
export STARMESH_BUSYBOX_IMAGE=$BUSYBOX_IMAGE
EOF
  fi
}

if [ "$node_mode" = 0 ]; then
  write_env
  log "control plane up: API ready ${api_ready}s after boot start; . $W/env"
  exit 0
fi

# --- local images -------------------------------------------------------------
# No registry exists: the pod sandbox (and a general-purpose test image) is a
# busybox-static image built here as a docker-archive tarball. Its default
# command never exits, as a sandbox's must.
BUSYBOX_IMAGE=starmesh.local/busybox:1
make_busybox_image() {
  local out=$1 d
  d=$(mktemp -d "$W/image.XXXXXX")
  mkdir -p "$d/rootfs/bin" "$d/rootfs/etc" "$d/rootfs/proc" "$d/rootfs/sys" \
    "$d/rootfs/dev" "$d/rootfs/tmp" "$d/rootfs/root"
  chmod 1777 "$d/rootfs/tmp"
  cp /bin/busybox "$d/rootfs/bin/busybox"
  local a
  for a in $(/bin/busybox --list); do
    [ "$a" = busybox ] || ln -s busybox "$d/rootfs/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$d/rootfs/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$d/rootfs/etc/group"
  tar -C "$d/rootfs" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -cf "$d/layer.tar" .
  local diff_id config_id
  diff_id=$(sha256sum "$d/layer.tar" | cut -d' ' -f1)
  mkdir "$d/$diff_id"
  mv "$d/layer.tar" "$d/$diff_id/layer.tar"
  printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sleep","2147483647"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$diff_id" > "$d/config.json"
  config_id=$(sha256sum "$d/config.json" | cut -d' ' -f1)
  mv "$d/config.json" "$d/$config_id.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
    "$config_id" "$BUSYBOX_IMAGE" "$diff_id" > "$d/manifest.json"
  tar -C "$d" -cf "$out" manifest.json "$config_id.json" "$diff_id/layer.tar"
  rm -rf "$d"
}
mkdir -p "$W/images"
make_busybox_image "$W/images/busybox.tar"

# --- containerd -----------------------------------------------------------------
C=$W/containerd
mkdir -p "$C/root" "$C/state" "$C/opt" "$C/runc" "$W/cni/net.d" "$W/cni/ipam"
cat > "$W/cni/net.d/10-starmesh.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "starmesh",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$W/cni/ipam"
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF
# restrict_oom_score_adj: without it every sandbox fails with "can't get final
#   child's PID from pipe: EOF" (the session may not lower oom_score_adj).
# opt path, runc Root: else /opt/containerd and /run/containerd/runc.
# netns_mounts_under_state_dir: pod netns mounts stay under WORKDIR.
cat > "$C/config.toml" <<EOF
version = 2
root = "$C/root"
state = "$C/state"

[grpc]
  address = "$C/containerd.sock"
[ttrpc]
  address = "$C/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$C/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$BUSYBOX_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$C/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$W/cni/net.d"
EOF
start_component containerd containerd --config "$C/config.toml"
wait_for containerd 30 ready ctr --address "$C/containerd.sock" version
failed_component=containerd
"$here/load-image.sh" "$W" "$W/images/busybox.tar" >> "$W/logs/load-image.log" 2>&1 || {
  cat "$W/logs/load-image.log" >&2; exit 1; }
failed_component=""

# --- kubelet ------------------------------------------------------------------
K=$W/kubelet
mkdir -p "$K/root" "$K/certs" "$K/volume-plugins"
# imageGC 100/99: local images cannot be pulled again, so never collect them.
# cgroupRoot: the pods' cgroups live in this cluster's own tree.
# nodeStatusUpdateFrequency 2s (default 10s): node Ready is seen sooner.
cat > "$K/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
cgroupDriver: cgroupfs
cgroupRoot: /$CGROUP
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $P/ca.crt}
authorization:
  mode: Webhook
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
clusterDomain: cluster.local
serializeImagePulls: false
runtimeRequestTimeout: 5m
nodeStatusUpdateFrequency: 2s
volumePluginDir: $K/volume-plugins
EOF
# AWS_EC2_METADATA_DISABLED: else its credential provider probes a cloud
# metadata address at start.
start_component kubelet env AWS_EC2_METADATA_DISABLED=true "$BIN/kubelet" \
  --config="$K/config.yaml" --kubeconfig="$KC" \
  --container-runtime=remote --container-runtime-endpoint="unix://$C/containerd.sock" \
  --node-ip="$NODE_IP" --hostname-override="$NODE_NAME" \
  --root-dir="$K/root" --cert-dir="$K/certs"

# --- kube-proxy ---------------------------------------------------------------
# --conntrack-max-per-core=0: else it changes the global nf_conntrack_max.
start_component kube-proxy "$BIN/kube-proxy" \
  --kubeconfig="$KC" --proxy-mode=iptables --cluster-cidr="$POD_CIDR" \
  --hostname-override="$NODE_NAME" \
  --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
  --conntrack-max-per-core=0

wait_for kubelet 60 healthy "${NS[@]}" curl -fsS http://127.0.0.1:10248/healthz
node_ready() {
  [ "$(KUBECONFIG="$KC" KUBECACHEDIR="$W/kube-cache" kubectl get node "$NODE_NAME" \
      -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
wait_for kubelet 120 "node Ready" node_ready
wait_for kube-proxy 30 healthy "${NS[@]}" curl -fsS http://127.0.0.1:10256/healthz
node_ready_s=$(( $(date +%s) - t_boot ))

write_env
log "cluster up: API ready ${api_ready}s, node Ready ${node_ready_s}s after boot start; . $W/env"
