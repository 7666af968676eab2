#!/usr/bin/env bash
# CI helper (run by .ci/run, as root on a throwaway machine): a real containerd with a local
# registry, so the CRI integration test can pull an image through containerd's CRI ImageService
# (runtime.v1.ImageService over the Unix socket).
#
#   bash packaging/ci-containerd.sh start DIR   # prints (and writes to DIR/env) the lines
#                                               #   STATICPOD_PULLER_CRI_ENDPOINT=unix://DIR/containerd/containerd.sock
#                                               #   STATICPOD_PULLER_CRI_IMAGE=127.0.0.1:PORT/staticpod-puller/tiny:1
#   bash packaging/ci-containerd.sh stop DIR    # idempotent: kills both, unmounts, removes DIR
#
# Everything (config, registry storage, containerd root/state/socket, logs, pid files) lives under
# DIR; no system service is used, started or touched (the Debian packages' units stay stopped).
# The image is built by hand as an OCI layout (one layer, one file /hello), so no network and no
# docker are needed; skopeo pushes it to the registry.
set -euo pipefail

IMAGE_REPO=staticpod-puller/tiny
IMAGE_TAG=1
DEADLINE=30 # seconds, for each wait below
FAILED=

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}

# DIR ends up in TOML, YAML, /proc/mounts and socket paths: keep it plain.
check_dir() {
  [ -n "$1" ] || usage
  case "$1" in
    *[[:space:]\"\'\\]*) echo "ci-containerd: DIR must not contain whitespace, quotes or backslashes: $1" >&2; exit 2 ;;
  esac
  [ "$(realpath -m "$1")" != / ] || { echo "ci-containerd: refusing DIR=/" >&2; exit 2; }
}

# The pid in FILE, if that process is still alive and was started for this DIR (the pid may have
# been reused by an unrelated process since).
live_pid() {
  local file=$1 dir=$2 pid cmd
  [ -f "$file" ] || return 1
  pid=$(cat "$file" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ "$cmd" == *"$dir/"* ]] || return 1
  echo "$pid"
}

# Running, that is neither gone nor a zombie (a child of this shell stays one until reaped; one
# that outlived its parent waits for PID 1 to reap it).
alive() { [ -e "/proc/$1" ] && [ "$(awk '{print $3}' 2>/dev/null "/proc/$1/stat")" != Z ]; }

# TERM, wait up to 20 s, then KILL: containerd normally exits within a second.
kill_and_wait() {
  local pid=$1 name=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 200; i++)); do
    alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  echo "ci-containerd: $name ($pid) ignored SIGTERM for 20 s; killing it" >&2
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
}

# Kill containerd (and any shim it left: a containerd-shim* whose command line names our socket)
# and the registry, then unmount whatever is still mounted under DIR (deepest first).
stop_processes() {
  local dir=$1 pid p cmd
  if pid=$(live_pid "$dir/containerd.pid" "$dir"); then kill_and_wait "$pid" containerd; fi
  for p in /proc/[0-9]*; do
    p=${p#/proc/}
    [[ "$(cat 2>/dev/null "/proc/$p/comm")" == containerd-shim* ]] || continue
    cmd=$(tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline") || continue
    [[ "$cmd" != *"$dir/containerd/containerd.sock"* ]] || kill_and_wait "$p" "containerd shim"
  done
  if pid=$(live_pid "$dir/registry.pid" "$dir"); then kill_and_wait "$pid" docker-registry; fi
  rm -f "$dir/containerd.pid" "$dir/registry.pid"
  local mounts m
  mounts=$(awk -v d="$dir" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/mounts | sort -r)
  for m in $mounts; do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
}

cmd_stop() {
  local dir
  dir=$(realpath -m "$1")
  [ -e "$dir" ] || return 0
  # Only remove a directory this script made (or an empty one), never someone's data.
  if [ ! -e "$dir/.ci-containerd" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
    echo "ci-containerd: $dir was not made by this script; not removing it" >&2
    exit 1
  fi
  stop_processes "$dir"
  rm -rf "$dir"
}

# --- start -------------------------------------------------------------------------------------

# Install what is missing without letting the packages start their own services: policy-rc.d
# (honoured by invoke-rc.d and deb-systemd-invoke) says no while apt runs; if one is already in
# place we keep it, and stop the units afterwards in case it allowed them.
install_packages() {
  local missing=()
  command -v containerd >/dev/null 2>&1 || missing+=(containerd)
  [ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
  command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  ((${#missing[@]})) || return 0
  echo "ci-containerd: installing ${missing[*]}" >&2
  local own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\n# ci-containerd.sh: no service starts while it installs packages\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
  [ -z "$own_policy" ] || rm -f /usr/sbin/policy-rc.d
  ((rc == 0)) || { echo "ci-containerd: apt-get install ${missing[*]} failed" >&2; return "$rc"; }
  # Only the units of packages just installed: a containerd the machine already ran stays as is.
  local units=()
  [[ " ${missing[*]} " == *" containerd "* ]] && units+=(containerd)
  [[ " ${missing[*]} " == *" docker-registry "* ]] && units+=(docker-registry)
  ((${#units[@]})) || return 0
  if [ -d /run/systemd/system ]; then
    systemctl stop "${units[@]}" 2>/dev/null || true
  else
    # No systemd (PID 1 is something else): docker-registry has a SysV script; containerd none.
    [ ! -x /etc/init.d/docker-registry ] || [[ " ${units[*]} " != *" docker-registry "* ]] ||
      /etc/init.d/docker-registry stop >/dev/null 2>&1 || true
  fi
}

# sha256 of FILE as "sha256:HEX".
digest() { echo "sha256:$(sha256sum "$1" | cut -d' ' -f1)"; }

# Write BLOB (a file) into the layout's blob store; prints its digest.
add_blob() {
  local layout=$1 file=$2 d
  d=$(digest "$file")
  mv "$file" "$layout/blobs/sha256/${d#sha256:}"
  echo "$d"
}

# A one-layer OCI image layout, tag "tiny", whose only file is /hello. Deterministic tar and gzip
# (fixed mtime, owner, order, no gzip name/time), so the digests are the same on every run.
build_image() {
  local work=$1/image layout=$1/image/layout arch
  case "$(dpkg --print-architecture)" in
    amd64) arch=amd64 ;; arm64) arch=arm64 ;; ppc64el) arch=ppc64le ;; s390x) arch=s390x ;;
    *) arch=$(dpkg --print-architecture) ;;
  esac
  mkdir -p "$work/rootfs" "$layout/blobs/sha256"
  printf 'hello from staticpod-puller CI\n' >"$work/rootfs/hello"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$work/rootfs" -cf "$work/layer.tar" hello
  local diff_id layer layer_size config config_size manifest manifest_size
  diff_id=$(digest "$work/layer.tar")
  gzip -9 -n -c "$work/layer.tar" >"$work/layer.tar.gz"
  layer_size=$(stat -c %s "$work/layer.tar.gz")
  layer=$(add_blob "$layout" "$work/layer.tar.gz")
  printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/"]},"rootfs":{"type":"layers","diff_ids":["%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"packaging/ci-containerd.sh"}]}' \
    "$arch" "$diff_id" >"$work/config.json"
  config_size=$(stat -c %s "$work/config.json")
  config=$(add_blob "$layout" "$work/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" >"$work/manifest.json"
  manifest_size=$(stat -c %s "$work/manifest.json")
  manifest=$(add_blob "$layout" "$work/manifest.json")
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"tiny"}}]}' \
    "$manifest" "$manifest_size" >"$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"
  rm -f "$work/layer.tar"
}

# Poll until COMMAND succeeds, for DEADLINE seconds, giving up early if process PID has exited.
wait_for() {
  local what=$1 pid=$2 i
  shift 2
  for ((i = 0; i < DEADLINE * 10; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    if ! alive "$pid"; then
      echo "ci-containerd: $what exited" >&2
      return 1
    fi
    sleep 0.1
  done
  echo "ci-containerd: $what not ready after ${DEADLINE}s" >&2
  return 1
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The registry on the first free loopback port from 5000; a port taken between the check and the
# bind (the registry then exits with "address already in use") moves on to the next one.
start_registry() {
  local dir=$1 port pid
  mkdir -p "$dir/registry/data"
  for ((port = 5000; port < 5050; port++)); do
    port_in_use "$port" && continue
    cat >"$dir/registry/config.yml" <<EOF
version: 0.1
# warn: at info every request is logged, which would bury a failure in the tail shown below.
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/registry/data
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
  # Only this one registry: a fixed secret just silences the warning about a generated one.
  secret: ci-containerd
EOF
    # setsid: its own session, so the caller's Ctrl-C or a closed terminal does not reach it; no
    # inherited stdout, so `$(... start DIR)` returns.
    setsid /usr/bin/docker-registry serve "$dir/registry/config.yml" >"$dir/registry.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/registry.pid"
    if wait_for "docker-registry on 127.0.0.1:$port" "$pid" curl -sf "http://127.0.0.1:$port/v2/"; then
      REGISTRY_PORT=$port
      return 0
    fi
    grep -q "address already in use" "$dir/registry.log" || return 1
    echo "ci-containerd: 127.0.0.1:$port was taken meanwhile; trying the next port" >&2
    wait "$pid" 2>/dev/null || true
  done
  echo "ci-containerd: no free port in 127.0.0.1:5000-5049" >&2
  return 1
}

write_containerd_config() {
  local dir=$1 port=$2 c=$1/containerd
  mkdir -p "$c/root" "$c/state" "$c/opt" "$c/certs.d/127.0.0.1:$port" "$c/cni/bin" "$c/cni/net.d"
  # The registry speaks plain http on loopback (hosts.toml: the registry host configuration of
  # containerd 1.5 and later, which replaces the deprecated registry.mirrors tables).
  cat >"$c/certs.d/127.0.0.1:$port/hosts.toml" <<EOF
server = "http://127.0.0.1:$port"

[host."http://127.0.0.1:$port"]
  capabilities = ["pull", "resolve", "push"]
EOF
  cat >"$c/config.toml" <<EOF
# Written by packaging/ci-containerd.sh: a containerd of its own, everything under $dir.
version = 2
root = "$c/root"
state = "$c/state"
# Snapshotters that cannot work here (no btrfs/zfs file system, no aufs module, no thin pool):
# they would only log load errors.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "$c/containerd.sock"

[ttrpc]
  address = "$c/containerd.sock.ttrpc"

[plugins]
  # Default /opt/containerd: keep it under DIR too.
  [plugins."io.containerd.internal.v1.opt"]
    path = "$c/opt"

  # Only the image service is used: no pod runs, so the pod settings (sandbox image, cgroups,
  # AppArmor, OOM score) stay at their defaults, which load fine even without a cgroup of its own.
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".containerd]
      # native: plain copies, no overlay mounts, works on any file system and in a container.
      snapshotter = "native"

    # No pod networking is needed; an empty conf dir of our own rather than the host's.
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$c/cni/bin"
      conf_dir = "$c/cni/net.d"

    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "$c/certs.d"
EOF
}

# The socket first: ctr would otherwise sit in its dial timeout.
ctr_answers() { [ -S "$1" ] && timeout 5 ctr --address "$1" version; }

start_containerd() {
  local dir=$1 c=$1/containerd pid
  # A Unix socket path is at most 107 bytes (ttrpc's is the longer one).
  if ((${#c} + 22 > 107)); then
    echo "ci-containerd: $c is too long for a Unix socket path; use a shorter DIR" >&2
    return 1
  fi
  setsid containerd --config "$c/config.toml" >>"$dir/containerd.log" 2>&1 </dev/null &
  pid=$!
  echo "$pid" >"$dir/containerd.pid"
  wait_for containerd "$pid" ctr_answers "$c/containerd.sock"
  # The CRI plugin loads even when half broken; it must say ok, or the image service is missing.
  local cri
  cri=$(ctr --address "$c/containerd.sock" plugins ls | awk '$1 == "io.containerd.grpc.v1" && $2 == "cri" { $1 = $1; print }')
  echo "ci-containerd: CRI plugin: ${cri:-missing}" >&2
  [ "$(awk '{print $NF}' <<<"$cri")" = ok ] || {
    echo "ci-containerd: containerd's CRI plugin did not load" >&2
    return 1
  }
}

fail() {
  echo "ci-containerd: $*" >&2
  exit 1
}

on_start_exit() {
  local rc=$? dir=$1 f
  ((rc != 0)) || return 0
  echo "ci-containerd: start FAILED${FAILED:+ ($FAILED)}" >&2
  for f in registry.log containerd.log; do
    [ -f "$dir/$f" ] || continue
    echo "--- tail of $dir/$f" >&2
    tail -n 30 "$dir/$f" >&2
  done
  # Stop what was started; DIR stays (its logs) until `stop DIR`.
  stop_processes "$dir"
  exit "$rc"
}

cmd_start() {
  local dir start_time
  start_time=$(date +%s.%N)
  mkdir -p "$1"
  dir=$(realpath "$1")
  if [ -n "$(ls -A "$dir")" ]; then
    echo "ci-containerd: $dir is not empty (run: $0 stop $dir)" >&2
    exit 1
  fi
  touch "$dir/.ci-containerd"
  # Any failure from here on (set -e): say which command, show the logs, stop what was started.
  # (Functions are called plainly, not under ||, which would switch set -e off inside them.)
  set -E
  trap '[ -n "$FAILED" ] || FAILED="${FUNCNAME[0]:-main}, line $LINENO: $BASH_COMMAND"' ERR
  # shellcheck disable=SC2064 # DIR is expanded now on purpose (it is a local variable).
  trap "on_start_exit '$dir'" EXIT

  install_packages
  build_image "$dir"
  start_registry "$dir"
  local registry=127.0.0.1:$REGISTRY_PORT image
  image=$registry/$IMAGE_REPO:$IMAGE_TAG
  # --insecure-policy: the host's /etc/containers/policy.json is not ours to rely on.
  skopeo --insecure-policy copy --quiet --dest-tls-verify=false \
    "oci:$dir/image/layout:tiny" "docker://$image" >&2 || fail "skopeo could not push $image"
  curl -sf -o /dev/null -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "http://$registry/v2/$IMAGE_REPO/manifests/$IMAGE_TAG" || fail "the registry does not serve $image"
  write_containerd_config "$dir" "$REGISTRY_PORT"
  start_containerd "$dir"

  printf 'STATICPOD_PULLER_CRI_ENDPOINT=unix://%s\nSTATICPOD_PULLER_CRI_IMAGE=%s\n' \
    "$dir/containerd/containerd.sock" "$image" >"$dir/env"
  echo "ci-containerd: started in $(awk -v s="$start_time" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s" >&2
  cat "$dir/env"
}

[ $# -eq 2 ] || usage
check_dir "$2"
case "$1" in
  start) cmd_start "$2" ;;
  stop) cmd_stop "$2" ;;
  *) usage ;;
esac
