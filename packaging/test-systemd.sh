#!/usr/bin/env bash
# Live package test (run by .ci/run after test-packages.sh, as root): the .deb under a real
# systemd. A Debian root file system booted with systemd-nspawn as its PID 1, sharing this
# machine's network, with the dev cluster's node manifest directory bound to
# /etc/kubernetes/manifests:
#   install the .deb; before join the unit is skipped (not failed, not restarting); join;
#   an image change applied by the service and seen Ready; systemctl restart; a reboot (the
#   container booted again) with a change made while it was down; no sandbox denial from the
#   agent in the journal; systemd-analyze security of the live unit at most 2.0.
# Everything it starts it stops, and it removes what it made (the base root file system is
# kept in CACHE, made once with debootstrap from the mirror apt already uses).
#
# Needs: target/packages/staticpod-puller_<version>-1_amd64.deb (test-packages.sh builds it)
# and a staticpod-puller built with the dev cluster (DEV_BIN, default target/debug's, which
# `cargo test` builds). Takes about a minute with the cache, two without.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${CACHE:-/var/cache/staticpod-puller-ci}
DEV_BIN=${DEV_BIN:-target/debug/staticpod-puller}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
deb=${DEB:-target/packages/staticpod-puller_${version}-1_amd64.deb}
node=edge-node-1
unit=staticpod-puller.service

fail() {
  echo "live systemd test FAILED: $*" >&2
  exit 1
}
step() { echo "--- $*"; }

[ -f "$deb" ] || fail "no $deb (run packaging/test-packages.sh first)"
[ -x "$DEV_BIN" ] || fail "no dev-cluster binary at $DEV_BIN (run cargo test, or set DEV_BIN)"
command -v kubectl >/dev/null || fail "kubectl is needed (Debian's kubernetes-client)"
missing=()
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
command -v systemd-nspawn >/dev/null 2>&1 || missing+=(systemd-container)
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The base root file system: made once, reused while the machine keeps it.
base=$CACHE/bookworm-systemd
if [ ! -f "$base/.complete" ]; then
  step "debootstrap (once; cached in $base)"
  # The Debian mirror apt uses (one-line or deb822 sources; not the security archive).
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
    grep -oE '^(deb|URIs:)[^#]*https?://[^ ]+' | grep -oE 'https?://[^ ]+' | grep -E '/debian/?$' | head -1 || true)
  [ -n "$mirror" ] || fail "no Debian mirror found in apt's sources"
  rm -rf "$base"
  mkdir -p "$CACHE"
  debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$base" "$mirror" \
    >"$CACHE/debootstrap.log" 2>&1 || fail "debootstrap failed: $(tail -5 "$CACHE/debootstrap.log")"
  touch "$base/.complete"
fi

work=$(mktemp -d /var/tmp/staticpod-puller-live.XXXXXX)
machine=spp-live-$$
nspawn_pid=
cluster_pid=
controller_pid=
cleanup() {
  set +e
  stop_container
  [ -n "$controller_pid" ] && kill "$controller_pid" 2>/dev/null && wait "$controller_pid" 2>/dev/null
  [ -n "$cluster_pid" ] && kill "$cluster_pid" 2>/dev/null && wait "$cluster_pid" 2>/dev/null
  # nspawn unmounts what it bound when it exits; anything still mounted under the work
  # directory (a container killed hard) is unmounted before it is removed.
  grep -F " $work/" /proc/self/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l
  rm -rf "$work"
}
trap cleanup EXIT

# --- The dev cluster (one node) and a controller, on loopback -----------------------------
step "dev cluster and controller"
"$DEV_BIN" demo --serve --nodes 1 --dir "$work/dc" >"$work/cluster.log" 2>&1 &
cluster_pid=$!
deadline=$((SECONDS + 30))
until grep -q "Press Ctrl-C" "$work/cluster.log"; do
  ((SECONDS < deadline)) || fail "the dev cluster did not start: $(cat "$work/cluster.log")"
  kill -0 "$cluster_pid" 2>/dev/null || fail "the dev cluster exited: $(cat "$work/cluster.log")"
  sleep 0.2
done
export KUBECONFIG=$work/dc/admin.kubeconfig
"$DEV_BIN" --config /dev/null --log-level warn controller --kubeconfig "$KUBECONFIG" \
  --identity live-test --lease-namespace staticpod-system >"$work/controller.log" 2>&1 &
controller_pid=$!
manifests=$work/dc/nodes/$node/manifests

# Wait until `$@` succeeds, for at most $1 seconds; $2 says what is awaited.
wait_for() {
  local timeout=$1 what=$2
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "timed out after ${timeout}s waiting for $what"
    sleep 0.5
  done
}

# The nginx pod at image $1, each line indented by $2.
nginx_pod() {
  sed "s/^/$2/" <<EOF
metadata:
  name: nginx
  namespace: default
spec:
  containers:
  - name: nginx
    image: $1
EOF
}
# The seed: nginx placed by hand on the node, and the StaticPod declaring the same.
{
  printf 'apiVersion: v1\nkind: Pod\n'
  nginx_pod nginx:1.19.1 ""
} >"$manifests/nginx.yaml"
set_image() {
  kubectl apply -f - >/dev/null <<EOF
apiVersion: apps.openyurt.io/v1alpha1
kind: StaticPod
metadata:
  name: nginx
  namespace: default
spec:
  staticPodManifest: nginx
  upgradeStrategy:
    type: AdvancedRollingUpdate
    maxUnavailable: 1
  template:
$(nginx_pod "$1" "    ")
EOF
}
set_image nginx:1.19.1
# The node's mirror pod runs $1 and is Ready, and the StaticPod's status says so.
converged() {
  local image=$1
  [ "$(kubectl get pod "nginx-$node" -n default -o jsonpath='{.spec.containers[0].image}')" = "$image" ] &&
    [ "$(kubectl get pod "nginx-$node" -n default -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ] &&
    grep -q "image: $image" "$manifests/nginx.yaml"
}
wait_for 20 "the hand-placed pod Ready" converged nginx:1.19.1

# --- The container ---------------------------------------------------------------------------
root=$work/root
step "copying the base root file system"
cp -a "$base" "$root"
cp "$deb" "$root/root/staticpod-puller.deb"
cp "$work/dc/nodes/$node/agent.kubeconfig" "$root/root/agent.kubeconfig"
mkdir -p "$root/etc/kubernetes/manifests"

boot() {
  systemd-nspawn -D "$root" -b --register=no --keep-unit -M "$machine" \
    --bind="$manifests:/etc/kubernetes/manifests" >>"$work/console.log" 2>&1 </dev/null &
  nspawn_pid=$!
  local deadline=$((SECONDS + 60)) state=
  while :; do
    ((SECONDS < deadline)) || fail "the container did not boot (state: $state): $(tail -20 "$work/console.log")"
    kill -0 "$nspawn_pid" 2>/dev/null || fail "systemd-nspawn exited: $(tail -20 "$work/console.log")"
    pid1=$(pgrep -P "$nspawn_pid" | head -1 || true)
    if [ -n "$pid1" ]; then
      state=$(nsenter -t "$pid1" -a systemctl is-system-running 2>/dev/null || true)
      case $state in running | degraded) break ;; esac
    fi
    sleep 0.5
  done
}
stop_container() {
  [ -n "$nspawn_pid" ] || return 0
  if kill -0 "$nspawn_pid" 2>/dev/null; then
    [ -z "${pid1:-}" ] || nsenter -t "$pid1" -a systemctl poweroff >/dev/null 2>&1 || true
    local deadline=$((SECONDS + 30))
    while kill -0 "$nspawn_pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -9 "$nspawn_pid" 2>/dev/null || true
  fi
  wait "$nspawn_pid" 2>/dev/null || true
  nspawn_pid=
}
inside() { nsenter -t "$pid1" -a "$@"; }

step "booting the container"
boot
inside systemctl --version | head -1

step "installing the .deb"
inside dpkg -i /root/staticpod-puller.deb >/dev/null
inside systemctl is-enabled "$unit" >/dev/null || fail "the package did not enable the unit"

step "before join: skipped, not failed, not restarting"
# Three seconds and more: a crash loop (RestartSec=10s) would show as a restart or a failure.
for _ in 1 2 3 4 5 6; do
  show=$(inside systemctl show "$unit" -p ActiveState -p SubState -p ConditionResult -p NRestarts -p Result)
  grep -qx "ActiveState=inactive" <<<"$show" || fail "unit not inactive before join: $show"
  grep -qx "ConditionResult=no" <<<"$show" || fail "unit start not skipped by its condition: $show"
  grep -qx "NRestarts=0" <<<"$show" || fail "unit restarted before join: $show"
  grep -qx "Result=success" <<<"$show" || fail "unit failed before join: $show"
  inside systemctl is-failed --quiet "$unit" && fail "unit failed before join"
  sleep 0.5
done
inside systemctl status "$unit" --no-pager | sed 's/^/    /' || true

step "join"
inside staticpod-puller join --node-name "$node" --kubeconfig /root/agent.kubeconfig
inside systemctl is-active --quiet "$unit" || fail "the service is not active after join"

step "an image change, applied by the service"
set_image nginx:1.19.2
wait_for 30 "nginx:1.19.2 written by the service and Ready" converged nginx:1.19.2

step "systemctl restart"
inside systemctl restart "$unit"
wait_for 20 "the service active after the restart" inside systemctl is-active "$unit"
set_image nginx:1.19.3
wait_for 30 "nginx:1.19.3 after the restart" converged nginx:1.19.3

step "reboot (a change made while the node is down)"
stop_container
set_image nginx:1.19.4
boot
wait_for 30 "the service active after the reboot" inside systemctl is-active "$unit"
wait_for 30 "nginx:1.19.4 after the reboot" converged nginx:1.19.4
inside systemctl show "$unit" -p NRestarts | grep -qx "NRestarts=0" || fail "the service restarted after the reboot"

step "the journal: no sandbox denials"
journal=$(inside journalctl -u "$unit" --no-pager -o cat)
if grep -nE "Permission denied|Operation not permitted|SIGSYS|Bad system call" <<<"$journal"; then
  fail "the agent hit its sandbox (lines above)"
fi
starts=$(grep -c "agent started" <<<"$journal" || true)
echo "agent starts in the journal: $starts"
((starts >= 3)) || fail "expected at least 3 agent starts (join, restart, reboot), saw $starts"

step "systemd-analyze security (live unit)"
security=$(inside systemd-analyze security "$unit" --no-pager 2>&1 | tail -3)
echo "$security"
exposure=$(sed -n 's/.*Overall exposure level for .*: \([0-9.]*\).*/\1/p' <<<"$security")
awk -v e="$exposure" 'BEGIN { exit !(e != "" && e <= 2.0) }' || fail "exposure ${exposure:-unknown} is above 2.0"

step "poweroff"
stop_container
echo "live systemd test passed (exposure $exposure)"
