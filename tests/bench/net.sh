#!/usr/bin/env bash
# Container networking: TCP throughput (iperf3) and round-trip latency (ping) between the host and
# a container on docker's bridge network, `--runtime hull` (virtio-net on the host's vhost-net,
# the default) and `--runtime hull-userspace` (on hull-vmm's own device) against docker's
# default runtime (runc), side by side on one dockerd (lib-docker.sh), reported as medians and
# ratios to runc.
# The same bridge, veth and address plumbing serve both; with hull the container's veth is
# mirrored into its VM by tc (runtime/src/network) and the packets cross virtio-net.
# Per runtime and round: `docker run -d --runtime R hull-test/iperf` (tests/images/build.sh
# iperf: Debian's iperf3 and its libraries; CMD iperf3 -s), then from the host to the
# container's docker IP: `iperf3 -c IP -t T -J` (host -> container, the receiver's rate) and with
# -R (container -> host), and `busybox ping -c N -i 0.2` (the average round trip); then
# `docker rm -f`. One warm-up round (discarded), then HULL_BENCH_NET_ROUNDS rounds (default 3),
# hull, hull-userspace, runc in odd rounds, the reverse in even ones. After each round no container and no
# hull-vmm may be left. HULL_BENCH_NET_SECONDS (default 5): iperf3's -t; HULL_BENCH_NET_PINGS
# (default 20).
# Needs bin/hull, bin/hull-vmm, vmlinux and hull-initrd.img in HULL_BUILD_DIR (default build/;
# make build kernel initrd). Runs inside the emulated KVM host (tests/testhost/run) unless
# called with --inside.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${HULL_BUILD_DIR:-$top/build}
ROUNDS=${HULL_BENCH_NET_ROUNDS:-3}
SECONDS_T=${HULL_BENCH_NET_SECONDS:-5}
PINGS=${HULL_BENCH_NET_PINGS:-20}
IMAGE=hull-test/iperf

if [ "${1:-}" != --inside ]; then
  exec "$top/tests/testhost/run" --timeout "${HULL_BENCH_TIMEOUT:-5400}" --memory 8192 -- "$0" --inside
fi

bench="net bench" tools="iperf3 busybox"
. "$top/tests/bench/lib-docker.sh"

"$top/tests/images/build.sh" "$dir/iperf.tar" iperf 2> /dev/null
docker load -i "$dir/iperf.tar" > /dev/null

results=$dir/results
: > "$results"
fail() {
  echo "net bench: $*" >&2
  exit 1
}
rate() {
  # $1 runtime, $2 IP, [-R]: the receiver's bits/s of one iperf3 test. iperf3's server takes one
  # test at a time and may still be finishing the previous one ("the server is busy"): an error
  # is printed and the test retried, up to 5 times (each retry is shown: a data path that
  # stalls shows up here, not as a lower number).
  local j e attempt
  for attempt in 1 2 3 4 5; do
    j=$(iperf3 -c "$2" -t "$SECONDS_T" -J "${@:3}") || true
    e=$(jq -r '.error // empty' <<< "$j" 2> /dev/null) || e="not iperf3's JSON: $j"
    if [ -z "$e" ]; then
      jq '.end.sum_received.bits_per_second' <<< "$j"
      return 0
    fi
    echo "net bench: iperf3 ${*:3} with the $1 container ($2), attempt $attempt: $e" >&2
    sleep 2
  done
  fail "iperf3 ${*:3} with the $1 container ($2) failed 5 times"
}
one_round() {
  # $1 runtime (hull|hull-userspace|runc), $2 round (0: warm-up). Appends "runtime round metric value".
  local rt=$1 r=$2 ip j up down rtt
  docker run -d --runtime "$rt" --name "net-$rt" "$IMAGE" > /dev/null || fail "docker run --runtime $rt failed"
  ip=$(docker inspect -f '{{.NetworkSettings.IPAddress}}' "net-$rt")
  [ -n "$ip" ] || fail "no docker IP for the $rt container"
  # The server is up when a one-second test gets through (with -J, iperf3 reports a refused
  # connection in its JSON's "error", not always in its exit status).
  for _ in $(seq 600); do
    j=$(iperf3 -c "$ip" -t 1 -J 2> /dev/null) || true
    if jq -e 'has("error") | not' <<< "$j" > /dev/null 2>&1; then break; fi
    sleep 0.5
  done
  up=$(rate "$rt" "$ip")
  down=$(rate "$rt" "$ip" -R)
  rtt=$(busybox ping -c "$PINGS" -i 0.2 "$ip" | sed -n 's|.*min/avg/max = [^/]*/\([^/]*\)/.*|\1|p')
  [ -n "$rtt" ] || fail "ping of the $rt container ($ip) failed"
  docker rm -f "net-$rt" > /dev/null
  nothing_left "docker rm -f net-$rt" 300
  printf '%s %d up %s\n%s %d down %s\n%s %d rtt %s\n' "$rt" "$r" "$up" "$rt" "$r" "$down" "$rt" "$r" "$rtt" >> "$results"
  awk -v rt="$rt" -v r="$r" '$1 == rt && $2 == r { v[$3] = $4 } END {
    printf "%-8s %-15s host->container %8.1f Mbit/s  container->host %8.1f Mbit/s  rtt %7.3f ms%s\n",
      (r ? "round " r : "warm-up"), rt, v["up"] / 1e6, v["down"] / 1e6, v["rtt"], (r ? "" : "  (discarded)") }' "$results"
}

echo "docker $(docker version -f '{{.Server.Version}}'), $(iperf3 --version | head -1)"
RUNTIMES="hull hull-userspace runc" alternate one_round

echo
echo "host <-> container on docker's bridge: iperf3 -t $SECONDS_T (TCP, receiver's rate), ping x$PINGS; $ROUNDS rounds after a discarded warm-up"
python3 - "$results" << 'PY'
import statistics, sys
v = {}
for line in open(sys.argv[1]):
    rt, r, m, x = line.split()
    if int(r) > 0:
        v.setdefault((rt, m), []).append(float(x))
med = lambda rt, m: statistics.median(v[(rt, m)])
print(f"{'runtime':16s} {'host->ctr Mbit/s':>17s} {'ctr->host Mbit/s':>17s} {'rtt ms':>8s}")
for rt in ("hull", "hull-userspace", "runc"):
    print(f"{rt:16s} {med(rt, 'up') / 1e6:17.1f} {med(rt, 'down') / 1e6:17.1f} {med(rt, 'rtt'):8.3f}")
for rt, what in (("hull", "vhost-net"), ("hull-userspace", "hull-vmm's device")):
    print(f"ratio {rt} ({what}) / runc (medians): host->container throughput {med(rt, 'up') / med('runc', 'up'):.2f}, "
          f"container->host throughput {med(rt, 'down') / med('runc', 'down'):.2f}, "
          f"round trip {med(rt, 'rtt') / med('runc', 'rtt'):.2f}")
PY
echo "nothing left after any round (containers, hull-vmm)"
