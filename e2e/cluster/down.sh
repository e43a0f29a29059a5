#!/usr/bin/env bash
# Stops the cluster that up.sh booted in WORKDIR and undoes everything it
# changed on the machine: processes (by recorded PID, TERM then KILL), whatever
# they forked (containerd shims, pod processes: found in the cluster's own
# cgroup tree), mounts under WORKDIR, the cgroups, the network namespace (and
# with it the veth and every iptables rule), the global sysctls the kubelet
# set, and the paths outside WORKDIR that the kubelet, containerd and CNI
# create. Idempotent, and safe after a partial or failed up.sh.
# WORKDIR itself (logs, certificates) stays; `rm -rf WORKDIR` is safe afterwards.
#
#   e2e/cluster/down.sh WORKDIR
set -euo pipefail

if [ $# -ne 1 ]; then echo "usage: $0 WORKDIR" >&2; exit 2; fi
if [ ! -d "$1" ]; then echo "down.sh: no $1, nothing to do" >&2; exit 0; fi
W=$(cd "$1" && pwd)
if [ ! -f "$W/state" ]; then echo "down.sh: no $W/state, nothing to do" >&2; exit 0; fi

NETNS="" VETH_HOST="" CGROUP="" RUN_NETNS_WAS_MOUNT=1 RUN_NETNS_EXISTED=1 CREATED_PATHS="" SYSCTLS=""
# shellcheck source=/dev/null
. "$W/state"
TIMEOUT=${STARMESH_DOWN_TIMEOUT:-15}
t0=$(date +%s)
log() { echo "[down.sh +$(( $(date +%s) - t0 ))s] $*" >&2; }
problems=0
warn() { echo "down.sh: WARNING: $*" >&2; problems=1; }

# alive PID STARTTIME: the process exists and is still the one up.sh started
# (same start time), so a reused PID is never signalled. (A Go process whose
# main thread is already a zombie may still have threads exiting: it counts
# as alive until it is gone.)
alive() {
  local st
  st=$(awk '{print $22}' "/proc/$1/stat" 2>/dev/null) || return 1
  [ -n "$st" ] && { [ "$2" = 0 ] || [ "$st" = "$2" ]; }
}

# --- 1. recorded processes: TERM, then KILL after $TIMEOUT seconds ---------
if [ -s "$W/pids" ]; then
  # Newest first: node components before the control plane before etcd.
  mapfile -t entries < <(tac "$W/pids")
  for e in "${entries[@]}"; do
    read -r name pid st <<<"$e"
    if alive "$pid" "$st"; then log "TERM $name ($pid)"; kill -TERM "$pid" 2>/dev/null || true; fi
  done
  deadline=$(( $(date +%s) + TIMEOUT ))
  while :; do
    left=()
    for e in "${entries[@]}"; do
      read -r name pid st <<<"$e"
      alive "$pid" "$st" && left+=("$name:$pid")
    done
    [ ${#left[@]} -eq 0 ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
      for e in "${entries[@]}"; do
        read -r name pid st <<<"$e"
        if alive "$pid" "$st"; then log "KILL $name ($pid)"; kill -KILL "$pid" 2>/dev/null || true; fi
      done
      sleep 0.5
      break
    fi
    sleep 0.2
  done
fi

# --- 2. what they forked: everything left in the cluster's pids cgroup tree ---
cg_procs() {
  [ -n "$CGROUP" ] && [ -d "/sys/fs/cgroup/pids/$CGROUP" ] || return 0
  find "/sys/fs/cgroup/pids/$CGROUP" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u
}
killed=()
for _ in $(seq 1 50); do
  mapfile -t rest < <(cg_procs)
  [ ${#rest[@]} -eq 0 ] && break
  log "KILL ${#rest[@]} leftover process(es) in cgroup $CGROUP: ${rest[*]}"
  kill -KILL "${rest[@]}" 2>/dev/null || true
  killed+=("${rest[@]}")
  sleep 0.2
done
mapfile -t rest < <(cg_procs)
[ ${#rest[@]} -eq 0 ] || warn "processes still in cgroup $CGROUP: ${rest[*]}"
# A killed process leaves its cgroup before it is fully gone; wait for that
# (or for it to be a zombie its new parent has not reaped yet).
running() {
  local line
  read -r line < "/proc/$1/stat" 2>/dev/null || return 1
  line=${line##*) }          # state follows the parenthesised command name
  [ "${line%% *}" != Z ]
}
for pid in "${killed[@]}"; do
  for _ in $(seq 1 50); do running "$pid" || break; sleep 0.1; done
  if running "$pid"; then warn "process $pid still running after KILL"; fi
done
# Orphans are reaped by PID 1; give it a moment so none is seen afterwards.
for pid in "${killed[@]}"; do
  for _ in $(seq 1 30); do [ -e "/proc/$pid" ] || break; sleep 0.1; done
done

# --- 3. mounts under WORKDIR and under the paths created outside it ---------
# (the kubelet's root-dir bind mount, Secret tmpfs, pod netns bind mounts,
# container rootfs overlays), deepest first.
mounts_under() {
  # mountinfo field 5 is the mount point, with spaces etc. as octal escapes.
  awk -v p="$1" '{ m=$5; gsub(/\\040/, " ", m); if (m == p || index(m, p "/") == 1) print m }' \
    /proc/self/mountinfo | awk '{ print length($0) " " $0 }' | sort -rn | cut -d' ' -f2-
}
roots=("$W")
for p in $CREATED_PATHS; do roots+=("$p"); done
for _ in 1 2 3 4 5; do
  found=0
  for r in "${roots[@]}"; do
    while IFS= read -r m; do
      [ -n "$m" ] || continue
      found=1
      umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done < <(mounts_under "$r")
  done
  [ "$found" = 0 ] && break
done
for r in "${roots[@]}"; do
  [ -z "$(mounts_under "$r")" ] || warn "mounts left under $r: $(mounts_under "$r" | tr '\n' ' ')"
done

# --- 4. cgroups -------------------------------------------------------------
if [ -n "$CGROUP" ]; then
  for h in /sys/fs/cgroup/*/; do
    d=${h%/}/$CGROUP
    [ -d "$d" ] || continue
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
      [ -d "$d" ] || break
      sleep 0.3
    done
    [ -d "$d" ] && warn "could not remove cgroup $d"
  done
fi

# --- 5. network namespace (takes the veth pair, bridge and rules with it) ----
if [ -n "$NETNS" ] && [ -e "/run/netns/$NETNS" ]; then
  log "deleting netns $NETNS"
  ip netns delete "$NETNS" || warn "ip netns delete $NETNS failed"
fi
if [ -n "$VETH_HOST" ]; then
  for _ in $(seq 1 20); do
    ip link show "$VETH_HOST" >/dev/null 2>&1 || break
    sleep 0.25
  done
  if ip link show "$VETH_HOST" >/dev/null 2>&1; then
    ip link delete "$VETH_HOST" 2>/dev/null || warn "veth $VETH_HOST still present"
  fi
fi
if [ "$RUN_NETNS_WAS_MOUNT" = 0 ] && mountpoint -q /run/netns 2>/dev/null \
   && [ -z "$(ls -A /run/netns 2>/dev/null)" ]; then
  umount /run/netns 2>/dev/null || umount -l /run/netns || warn "could not unmount /run/netns"
fi
if [ "$RUN_NETNS_EXISTED" = 0 ] && [ -d /run/netns ] && ! mountpoint -q /run/netns \
   && [ -z "$(ls -A /run/netns)" ]; then
  rmdir /run/netns || true
fi

# --- 6. global sysctls the kubelet changed -----------------------------------
if [ -n "$SYSCTLS" ] && [ ! -e "$W/.sysctls-restored" ]; then
  for kv in $SYSCTLS; do
    sysctl -q -w "$kv" >/dev/null || warn "could not restore $kv"
  done
  touch "$W/.sysctls-restored"
  log "restored sysctls $SYSCTLS"
fi

# --- 7. paths outside WORKDIR that did not exist before up.sh ----------------
# Left alone (with a warning) while another containerd or kubelet runs on the
# machine, which may be using them.
other_running() {  # other_running COMM...: is any process with this name alive?
  local c d
  for d in /proc/[0-9]*; do
    read -r c < "$d/comm" 2>/dev/null || continue
    for n in "$@"; do [ "$c" = "$n" ] && running "${d#/proc/}" && return 0; done
  done
  return 1
}
for p in $CREATED_PATHS; do
  [ -e "$p" ] || continue
  case "$p" in
    /run/containerd|/var/lib/cni) users=(containerd containerd-shim containerd-shim-runc-v2) ;;
    *) users=(kubelet) ;;
  esac
  if other_running "${users[@]}"; then
    warn "leaving $p: another ${users[0]} is running"
  else
    rm -rf "$p" || warn "could not remove $p"
  fi
done

log "done"
exit "$problems"
