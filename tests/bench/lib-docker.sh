# Sourced by the docker benches (docker.sh, net.sh): starts containerd and dockerd as the docker
# test starts them (tests/src/daemons.rs): containerd with its own root, state and sockets, its
# root on a tmpfs (overlay snapshots cannot sit on the emulated host's overlay root), and
# HULL_CONFIG in its environment (containerd-shim-runc-v2 inherits it and runs `hull` with it);
# dockerd on that containerd with --data-root on a tmpfs, a short --exec-root, its default bridge
# network (docker0), no iptables (docker-proxy publishes ports) and
# `--add-runtime hull=$build/bin/hull`. Defines `docker` (the client on that dockerd), `dir` (a
# scratch directory) and an EXIT trap that stops both daemons and removes what they made.
# Needs: top, build; `bench` (the name errors start with); `tools` (commands the bench needs
# besides containerd, dockerd and docker).
for f in "$build/bin/hull" "$build/bin/hull-vmm" "$build/vmlinux" "$build/hull-initrd.img"; do
  [ -e "$f" ] || { echo "$bench: $f missing (make build kernel initrd, or set HULL_BUILD_DIR)" >&2; exit 1; }
done
for c in containerd dockerd docker ${tools:-}; do
  command -v "$c" > /dev/null || { echo "$bench: $c not found (scripts/install-deps.sh)" >&2; exit 1; }
done
# Short paths: the daemons' sockets live here, and docker's runtime roots below the exec root.
dir=$(mktemp -d /run/hb.XXXXXX)
exec_root=/run/hd$$
ctd_pid='' dkd_pid=''
stop_daemon() {
  # $1 pid: SIGTERM, up to 30 s, then SIGKILL.
  [ -n "$1" ] || return 0
  kill -TERM "$1" 2> /dev/null || return 0
  for _ in $(seq 300); do kill -0 "$1" 2> /dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2> /dev/null || true
  wait "$1" 2> /dev/null || true
}
cleanup() {
  # A bench that failed halfway: its containers (and their VMs) first.
  if [ -S "$dir/d.sock" ]; then
    local left
    left=$(command docker -H "unix://$dir/d.sock" ps -aq 2> /dev/null) || true
    [ -z "$left" ] || command docker -H "unix://$dir/d.sock" rm -f $left > /dev/null 2>&1 || true
  fi
  stop_daemon "$dkd_pid"
  stop_daemon "$ctd_pid"
  umount -R -l "$dir/data" "$dir/ctd/root" "$exec_root" 2> /dev/null || true
  rm -rf "$dir" "$exec_root"
}
trap cleanup EXIT

wait_socket() {
  # $1 name, $2 socket, $3 pid, $4 log
  for _ in $(seq 1200); do
    [ -S "$2" ] && return 0
    kill -0 "$3" 2> /dev/null || { echo "$bench: $1 exited before it listened on $2:" >&2; tail -20 "$4" >&2; exit 1; }
    sleep 0.1
  done
  echo "$bench: $1 did not listen on $2 within 120 s:" >&2
  tail -20 "$4" >&2
  exit 1
}

cat > "$dir/hull.toml" << EOF
kernel = "$build/vmlinux"
initrd = "$build/hull-initrd.img"
vmm = "$build/bin/hull-vmm"
EOF
# A second hull runtime, `hull-userspace`: the same but for virtio-net on hull-vmm's own device
# rather than the host's vhost-net (net_backend, runtime/src/config.rs), for benches that put
# the two side by side. docker runs it as it runs `hull`; the wrapper gives it its own config.
{ cat "$dir/hull.toml"; echo 'net_backend = "userspace"'; } > "$dir/hull-userspace.toml"
printf '#!/bin/sh\nHULL_CONFIG=%s exec %s "$@"\n' "$dir/hull-userspace.toml" "$build/bin/hull" > "$dir/hull-userspace"
chmod 755 "$dir/hull-userspace"

mkdir -p "$dir/ctd/root" "$dir/data" "$exec_root"
mount -t tmpfs tmpfs "$dir/ctd/root"
mount -t tmpfs tmpfs "$dir/data"
cat > "$dir/ctd/containerd.toml" << EOF
version = 2
root = "$dir/ctd/root/lib"
state = "$dir/ctd/root/run"
[grpc]
  address = "$dir/ctd/c.sock"
[ttrpc]
  address = "$dir/ctd/c.sock.ttrpc"
EOF
HULL_CONFIG=$dir/hull.toml containerd --config "$dir/ctd/containerd.toml" < /dev/null > "$dir/containerd.log" 2>&1 &
ctd_pid=$!
wait_socket containerd "$dir/ctd/c.sock" "$ctd_pid" "$dir/containerd.log"
dockerd --data-root "$dir/data" --exec-root "$exec_root" -H "unix://$dir/d.sock" --pidfile "$dir/dockerd.pid" \
  --containerd "$dir/ctd/c.sock" --iptables=false --ip6tables=false --ip-masq=false \
  --storage-driver=overlay2 --add-runtime "hull=$build/bin/hull" --add-runtime "hull-userspace=$dir/hull-userspace" < /dev/null > "$dir/dockerd.log" 2>&1 &
dkd_pid=$!
wait_socket dockerd "$dir/d.sock" "$dkd_pid" "$dir/dockerd.log"
docker() { command docker -H "unix://$dir/d.sock" "$@"; }

vmms() { ps -eo stat=,pid=,args= | awk '$1 !~ /^Z/ && $3 ~ /(^|\/)hull-vmm$/'; }

# Fails the bench (naming $1, what was just done) if a container is left, or if a hull-vmm still
# runs after $2 tenths of a second (default 0: at once).
nothing_left() {
  if [ -n "$(docker ps -aq)" ]; then
    echo "$bench: containers left after $1:" >&2
    docker ps -a >&2
    exit 1
  fi
  local i
  for ((i = 0; i < ${2:-0}; i++)); do [ -z "$(vmms)" ] && break; sleep 0.1; done
  if [ -n "$(vmms)" ]; then
    echo "$bench: a hull-vmm still runs after $1:" >&2
    vmms >&2
    exit 1
  fi
}

# Calls FN RUNTIME ROUND for a warm-up round (0) and rounds 1..$ROUNDS, for each runtime of
# $RUNTIMES (default "hull runc"): in that order in odd rounds and in the warm-up, in the
# reverse order in even ones.
alternate() {
  local r rt order reversed=''
  for rt in ${RUNTIMES:-hull runc}; do reversed="$rt $reversed"; done
  for r in $(seq 0 "$ROUNDS"); do
    if [ "$r" -gt 0 ] && [ $((r % 2)) = 0 ]; then order=$reversed; else order=${RUNTIMES:-hull runc}; fi
    for rt in $order; do "$1" "$rt" "$r"; done
  done
}
