#!/usr/bin/env bash
# docker run latency: `docker run --rm --network none hull-test/busybox true` with
# `--runtime hull` against docker's default runtime (runc), side by side on one dockerd, reported
# as medians and the ratio hull / runc.
# The daemons are started as the docker test starts them (lib-docker.sh). The image is
# tests/images/build.sh's busybox, `docker load`ed. `--network none` for both runtimes: the
# start of a container, not of its network (the net bench measures the network).
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

bench="docker bench"
. "$top/tests/bench/lib-docker.sh"

"$top/tests/images/build.sh" "$dir/busybox.tar" busybox 2> /dev/null
docker load -i "$dir/busybox.tar" > /dev/null

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
  nothing_left "docker run --rm --runtime $1"
  awk -v rt="$1" -v r="$2" -v s="$start" -v e="$end" 'BEGIN { printf "%s %d %.6f\n", rt, r, e - s }' >> "$results"
  awk -v rt="$1" -v r="$2" '$1 == rt && $2 == r {
    printf "%-8s %-5s %8.0f ms%s\n", (r ? "round " r : "warm-up"), rt, $3 * 1000, (r ? "" : "  (discarded)") }' "$results"
}

echo "docker $(docker version -f '{{.Server.Version}}'), runtimes: $(docker info -f '{{range $k, $v := .Runtimes}}{{$k}} {{end}}')(default $(docker info -f '{{.DefaultRuntime}}'))"
alternate one_run

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
