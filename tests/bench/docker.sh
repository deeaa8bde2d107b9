#!/usr/bin/env bash
# docker run latency: `docker run --rm --network none hull-test/busybox true` with
# `--runtime hull` against docker's default runtime (runc), side by side on one dockerd, reported
# as medians and the ratio hull / runc.
# The daemons are started as the docker test starts them (tests/src/daemons.rs): containerd
# with its own root, state and sockets, its root on a tmpfs (overlay snapshots cannot sit on the
# emulated host's overlay root), and HULL_CONFIG in its environment (containerd-shim-runc-v2
# inherits it and runs `hull` with it); dockerd on that containerd with --data-root on a tmpfs,
# a short --exec-root, no bridge and no iptables, and `--add-runtime hull=build/bin/hull`. The
# image is tests/images/build.sh's busybox, `docker load`ed. `--network none` for both runtimes
# (hull has no bridge networking yet).
# One warm-up run of each (discarded), then HULL_BENCH_DOCKER_ROUNDS rounds (default 7), hull
# first in odd rounds, runc first in even ones. Timed: the whole `docker run` (the client's
# process, from its start to its exit; with --rm the client waits for the removal too), with
# bash's $EPOCHREALTIME (no fork inside the interval). Every run must exit 0; after each, no
# container may be left (`docker ps -a`) and no hull-vmm may run.
# Needs bin/hull, bin/hull-vmm, vmlinux and hull-initrd.img in HULL_BUILD_DIR (default build/;
# make build kernel initrd). Runs inside the emulated KVM host (tests/testhost/run) unless
# called with --inside.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${HULL_BUILD_DIR:-$top/build}
ROUNDS=${HULL_BENCH_DOCKER_ROUNDS:-${HULL_BENCH_ROUNDS:-7}}
IMAGE=hull-test/busybox

if [ "${1:-}" != --inside ]; then
  exec "$top/tests/testhost/run" --timeout "${HULL_BENCH_TIMEOUT:-5400}" --memory 8192 -- "$0" --inside
fi

for f in "$build/bin/hull" "$build/bin/hull-vmm" "$build/vmlinux" "$build/hull-initrd.img"; do
  [ -e "$f" ] || { echo "docker bench: $f missing (make build kernel initrd, or set HULL_BUILD_DIR)" >&2; exit 1; }
done
for c in containerd dockerd docker; do
  command -v "$c" > /dev/null || { echo "docker bench: $c not found (packages containerd, docker.io; scripts/install-deps.sh)" >&2; exit 1; }
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
    kill -0 "$3" 2> /dev/null || { echo "docker bench: $1 exited before it listened on $2:" >&2; tail -20 "$4" >&2; exit 1; }
    sleep 0.1
  done
  echo "docker bench: $1 did not listen on $2 within 120 s:" >&2
  tail -20 "$4" >&2
  exit 1
}

cat > "$dir/hull.toml" << EOF
kernel = "$build/vmlinux"
initrd = "$build/hull-initrd.img"
vmm = "$build/bin/hull-vmm"
EOF

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
  --containerd "$dir/ctd/c.sock" --iptables=false --ip6tables=false --bridge=none --ip-masq=false \
  --storage-driver=overlay2 --add-runtime "hull=$build/bin/hull" < /dev/null > "$dir/dockerd.log" 2>&1 &
dkd_pid=$!
wait_socket dockerd "$dir/d.sock" "$dkd_pid" "$dir/dockerd.log"
docker() { command docker -H "unix://$dir/d.sock" "$@"; }

"$top/tests/images/build.sh" "$dir/busybox.tar" busybox 2> /dev/null
docker load -i "$dir/busybox.tar" > /dev/null

vmms() { ps -eo stat=,pid=,args= | awk '$1 !~ /^Z/ && $3 ~ /(^|\/)hull-vmm$/'; }

results=$dir/results
: > "$results"
one_run() {
  # $1 runtime (hull|runc), $2 round (0: warm-up). Appends "runtime round seconds".
  local start end out
  start=$EPOCHREALTIME
  if ! out=$(docker run --rm --network none --runtime "$1" "$IMAGE" true 2>&1); then
    echo "docker bench: docker run --runtime $1 failed: $out" >&2
    echo "--- dockerd log:" >&2
    tail -20 "$dir/dockerd.log" >&2
    exit 1
  fi
  end=$EPOCHREALTIME
  if [ -n "$(docker ps -aq)" ]; then
    echo "docker bench: containers left after docker run --rm --runtime $1:" >&2
    docker ps -a >&2
    exit 1
  fi
  if [ -n "$(vmms)" ]; then
    echo "docker bench: a hull-vmm still runs after docker run --rm --runtime $1:" >&2
    vmms >&2
    exit 1
  fi
  awk -v rt="$1" -v r="$2" -v s="$start" -v e="$end" 'BEGIN { printf "%s %d %.6f\n", rt, r, e - s }' >> "$results"
  awk -v rt="$1" -v r="$2" '$1 == rt && $2 == r {
    printf "%-8s %-5s %8.0f ms%s\n", (r ? "round " r : "warm-up"), rt, $3 * 1000, (r ? "" : "  (discarded)") }' "$results"
}

echo "docker $(docker version -f '{{.Server.Version}}'), runtimes: $(docker info -f '{{range $k, $v := .Runtimes}}{{$k}} {{end}}')(default $(docker info -f '{{.DefaultRuntime}}'))"
for r in $(seq 0 "$ROUNDS"); do
  if [ "$r" -gt 0 ] && [ $((r % 2)) = 0 ]; then order="runc hull"; else order="hull runc"; fi
  for rt in $order; do one_run "$rt" "$r"; done
done

echo
echo "docker run latency: \`docker run --rm --network none $IMAGE true\`, $ROUNDS rounds after a discarded warm-up"
python3 - "$results" << 'PY'
import statistics, sys
t = {}
for line in open(sys.argv[1]):
    rt, r, s = line.split()
    if int(r) > 0:
        t.setdefault(rt, []).append(float(s))
print(f"{'runtime':8s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s}")
for rt in ("hull", "runc"):
    print(f"{rt:8s} {statistics.median(t[rt]) * 1000:10.0f} {min(t[rt]) * 1000:8.0f} {max(t[rt]) * 1000:8.0f}")
print(f"ratio hull / runc (docker run, median): {statistics.median(t['hull']) / statistics.median(t['runc']):.2f}")
PY
echo "nothing left after any run (containers, hull-vmm)"
