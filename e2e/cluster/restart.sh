#!/usr/bin/env bash
# Restarts one component of the cluster up.sh booted in WORKDIR: stops the
# process recorded in WORKDIR/pids (by PID, start time checked), starts it
# again with the command line up.sh recorded in WORKDIR/cmdlines/COMPONENT,
# inside the same netns and cgroup, appending to its log, records the new PID
# in pids (so down.sh stops it) and waits for its health check.
#
#   e2e/cluster/restart.sh WORKDIR COMPONENT      # e.g. etcd, kube-apiserver
#
# Env: STARMESH_RESTART_SIGNAL  how to stop it: TERM (default) or KILL (a crash);
#      STARMESH_DOWN_TIMEOUT    seconds from TERM to KILL (default 15).
# Prints "restarted NAME: down Xs, healthy Ys after start" on success.
set -euo pipefail

if [ $# -ne 2 ]; then echo "usage: $0 WORKDIR COMPONENT" >&2; exit 2; fi
W=$(cd "$1" && pwd)
name=$2
sig=${STARMESH_RESTART_SIGNAL:-TERM}
timeout=${STARMESH_DOWN_TIMEOUT:-15}
die() { echo "restart.sh: $*" >&2; exit 1; }
case "$sig" in TERM|KILL) ;; *) die "STARMESH_RESTART_SIGNAL must be TERM or KILL" ;; esac
[ -f "$W/state" ] || die "no $W/state: not an up.sh WORKDIR"
[ -f "$W/cmdlines/$name" ] || die "no recorded command line for $name in $W/cmdlines"
NETNS="" CGROUP=""
# shellcheck source=/dev/null
. "$W/state"
[ -e "/run/netns/$NETNS" ] || die "netns $NETNS is gone: is the cluster up?"

# The newest record of NAME (an earlier restart appends a new one).
read -r _ pid st < <(awk -v n="$name" '$1==n' "$W/pids" | tail -n 1) || die "$name is not in $W/pids"
alive() { # same process as recorded: a reused PID is never signalled
  local now
  now=$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [ "$now" = "$st" ]
}

t0=$(date +%s.%N)
if alive; then
  kill -"$sig" "$pid"
  deadline=$(( $(date +%s) + timeout ))
  while alive; do
    if [ "$(date +%s)" -ge "$deadline" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    sleep 0.1
  done
else
  echo "restart.sh: $name (pid $pid) was not running; starting it" >&2
fi
t_down=$(date +%s.%N)

# As up.sh's start_component: own session, stdin closed, in the components cgroup.
procs=/sys/fs/cgroup/pids/$CGROUP/components/cgroup.procs
echo "=== restart.sh: $name restarted at $(date -u +%FT%TZ) ===" >> "$W/logs/$name.log"
(
  [ -w "$procs" ] && echo "$BASHPID" > "$procs"
  eval "set -- $(cat "$W/cmdlines/$name")"
  exec setsid nsenter "--net=/run/netns/$NETNS" -- "$@" </dev/null >>"$W/logs/$name.log" 2>&1
) &
pid=$!
st=$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null || echo 0)
echo "$name $pid $st" >> "$W/pids"

NS=(nsenter "--net=/run/netns/$NETNS" --)
healthy() {
  case "$name" in
    etcd) "${NS[@]}" curl -fsS --max-time 2 http://127.0.0.1:2379/health ;;
    kube-apiserver)
      # shellcheck source=/dev/null
      . "$W/env"
      curl -fsS --max-time 2 --cacert "$STARMESH_CA_CERT" \
        -H "Authorization: Bearer $STARMESH_ADMIN_TOKEN" "$STARMESH_API_SERVER/readyz" ;;
    kube-controller-manager) "${NS[@]}" curl -fsSk --max-time 2 https://127.0.0.1:10257/healthz ;;
    kube-scheduler) "${NS[@]}" curl -fsSk --max-time 2 https://127.0.0.1:10259/healthz ;;
    containerd) ctr --address "$W/containerd/containerd.sock" version ;;
    kubelet) "${NS[@]}" curl -fsS --max-time 2 http://127.0.0.1:10248/healthz ;;
    kube-proxy) "${NS[@]}" curl -fsS --max-time 2 http://127.0.0.1:10256/healthz ;;
    *) true ;;
  esac
}
deadline=$(( $(date +%s) + 90 ))
until healthy >/dev/null 2>&1; do
  alive || die "$name (pid $pid) exited after the restart; see $W/logs/$name.log"
  [ "$(date +%s)" -lt "$deadline" ] || die "$name: not healthy 90s after the restart; see $W/logs/$name.log"
  sleep 0.2
done
t_up=$(date +%s.%N)
awk -v n="$name" -v p="$pid" -v a="$t0" -v b="$t_down" -v c="$t_up" \
  'BEGIN { printf "restarted %s (pid %s): down %.1fs, healthy %.1fs after start\n", n, p, b - a, c - b }'
