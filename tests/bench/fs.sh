#!/usr/bin/env bash
# virtio-fs throughput: the same workload in a guest on a virtio-fs share (hull-vmm, cache=auto)
# and directly on a directory of the same file system in the (emulated) KVM host, reported as
# medians over rounds and guest/host ratios.
#   - sequential write of HULL_BENCH_FS_MIB MiB (default 1024, as the issue asks; dd bs=1M, then sync),
#   - sequential read of a file of that size (dd bs=1M); every round's guest is a fresh VM, so
#     its page cache is cold, and both sides read from the host's page cache,
#   - HULL_BENCH_FS_FILES small files (default 500): create, stat (ls -ln), unlink (rm).
# The guest sets its mount's read-ahead to HULL_BENCH_FS_READ_AHEAD_KB (default 1024, what
# hull-agent sets on every virtio-fs mount: guest-agent/src/mounts.rs; 128 is the kernel's own).
# HULL_BENCH_FS_ROUNDS rounds (default 5), each one guest run (a fresh VM) and one host run,
# the guest first in odd rounds, the host first in even ones.
# Both sides run the same busybox script. The clock is the kernel's monotonic clock in
# nanoseconds ("now at N nsecs" in /proc/timer_list), read with shell builtins only, so no fork
# falls inside a timed interval (busybox's date has no %N; /proc/uptime only has 10 ms).
# hull-vmm is started as the runtime starts it (runtime/src/vmm/process.rs): --config vm.json,
# stdout (the console) to console.log, stderr to vmm.log, in its own process group.
# Needs bin/hull-vmm and vmlinux in HULL_BUILD_DIR (default build/; make build kernel). Runs
# inside the emulated KVM host (tests/testhost/run) unless called with --inside.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
build=${HULL_BUILD_DIR:-$top/build}
MIB=${HULL_BENCH_FS_MIB:-1024}
FILES=${HULL_BENCH_FS_FILES:-500}
READ_AHEAD_KB=${HULL_BENCH_FS_READ_AHEAD_KB:-1024}
ROUNDS=${HULL_BENCH_FS_ROUNDS:-5}

workload() {
  # $1: directory. Prints "BENCH <phase> <nanoseconds>".
  cat <<'EOF'
d=$1; mib=$2; files=$3
now() { { read -r _; read -r _; read -r _ _ ns _; } < /proc/timer_list; }
now
case ${ns:-} in ''|*[!0-9]*) echo "BENCH-ERROR no clock: /proc/timer_list has no 'now at N nsecs'"; exit 1;; esac
took() { now; echo "BENCH $1 $((ns - a))"; }
now; a=$ns; dd if=/dev/zero of=$d/seq-write bs=1048576 count=$mib 2>/dev/null; sync; took seq_write
now; a=$ns; dd if=$d/seq-read of=/dev/null bs=1048576 2>/dev/null; took seq_read
mkdir -p $d/small
now; a=$ns; i=0; while [ $i -lt $files ]; do : > $d/small/f$i; i=$((i+1)); done; took create
now; a=$ns; ls -ln $d/small > /dev/null; took stat
now; a=$ns; rm -f $d/small/*; took unlink
rm -rf $d/small $d/seq-write
EOF
}

if [ "${1:-}" != --inside ]; then
  exec "$top/tests/testhost/run" --timeout "${HULL_BENCH_TIMEOUT:-5400}" --memory 8192 -- "$0" --inside
fi

work=$(mktemp -d /var/tmp/hull-bench-fs.XXXXXX)
trap 'rm -rf "$work"' EXIT
workload > "$work/work.sh"
share=$work/share
hostdir=$work/hostdir
mkdir -p "$share" "$hostdir"
echo "fs bench: preparing $MIB MiB" >&2
head -c $((MIB << 20)) /dev/urandom > "$share/seq-read"
cp "$share/seq-read" "$hostdir/seq-read"

# Guest: busybox initramfs that mounts the share and runs the workload.
mkdir -p "$work/rd/bin" "$work/rd/dev" "$work/rd/proc" "$work/rd/mnt"
cp /bin/busybox "$work/rd/bin/busybox"
for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$work/rd/bin/$a"; done
cp "$work/work.sh" "$work/rd/work.sh"
cat > "$work/rd/init" <<EOF
#!/bin/sh
mount -t proc proc /proc
mknod /dev/null c 1 3; mknod /dev/zero c 1 5
mount -t virtiofs bench /mnt
mkdir -p /sys && mount -t sysfs sys /sys
# The share is the guest's only FUSE mount, so the only backing device named 0:N.
for f in /sys/class/bdi/0:*/read_ahead_kb; do echo $READ_AHEAD_KB > \$f || echo BENCH-ERROR read-ahead \$f; done
sh /work.sh /mnt $MIB $FILES
echo BENCH-DONE
reboot -f
EOF
chmod +x "$work/rd/init"
(cd "$work/rd" && find . | cpio -o -H newc --quiet) > "$work/initrd.cpio"

results=$work/results  # lines: side round phase nanoseconds
: > "$results"

guest_round() {
  local vm=$work/vm$1
  mkdir -p "$vm"
  cat > "$vm/vm.json" <<EOF
{"kernel":"$build/vmlinux","initrd":"$work/initrd.cpio","memory_mib":1024,"serial":"stdout",
 "fs":[{"tag":"bench","shared_dir":"$share"}]}
EOF
  setsid -w "$build/bin/hull-vmm" --config "$vm/vm.json" < /dev/null > "$vm/console.log" 2> "$vm/vmm.log" || {
    echo "hull-vmm failed:"; cat "$vm/vmm.log" "$vm/console.log"; exit 1; }
  grep -q BENCH-DONE "$vm/console.log" || { echo "the guest did not finish:"; cat "$vm/console.log"; exit 1; }
  ! grep -q BENCH-ERROR "$vm/console.log" || { echo "the guest's set-up failed:"; cat "$vm/console.log"; exit 1; }
  tr -d '\r' < "$vm/console.log" | grep '^BENCH ' | sed "s/^BENCH /guest $1 /" | tee -a "$results" > "$vm/bench"
  [ "$(wc -l < "$vm/bench")" = 5 ] || { echo "the guest's workload failed:"; cat "$vm/console.log"; exit 1; }
}

host_round() {
  /bin/busybox sh "$work/work.sh" "$hostdir" "$MIB" "$FILES" > "$work/host$1" ||
    { echo "the host's workload failed:"; cat "$work/host$1"; exit 1; }
  grep '^BENCH ' "$work/host$1" | sed "s/^BENCH /host $1 /" >> "$results"
}

show_round() {
  # $1 side, $2 round: one line with the round's times.
  awk -v side="$1" -v r="$2" '$1 == side && $2 == r { s = s sprintf("  %s %.3f s", $3, $4 / 1e9) }
    END { printf "round %d %-5s%s\n", r, side, s }' "$results"
}

echo "fs bench: $ROUNDS rounds" >&2
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then order="guest host"; else order="host guest"; fi
  for side in $order; do
    "${side}_round" "$r"
    show_round "$side" "$r"
  done
done

echo
echo "== virtio-fs: guest on a hull-vmm share vs the host directory ($MIB MiB, $FILES files, median of $ROUNDS rounds, guest read-ahead $READ_AHEAD_KB KiB)"
awk -v mib="$MIB" -v files="$FILES" '
  { n[$1, $3]++; t[$1, $3, n[$1, $3]] = $4 / 1e9 }
  function median(side, p,   m, i, j, x) {
    m = n[side, p]; delete v
    for (i = 1; i <= m; i++) v[i] = t[side, p, i]
    for (i = 2; i <= m; i++) { x = v[i]; for (j = i - 1; j >= 1 && v[j] > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
    return (m % 2) ? v[(m + 1) / 2] : (v[m / 2] + v[m / 2 + 1]) / 2
  }
  END {
    printf "%-10s %27s %27s %11s\n", "phase", "guest (median)", "host (median)", "guest/host"
    split("seq_write seq_read create stat unlink", ph, " ")
    for (i = 1; i <= 5; i++) {
      p = ph[i]; k = (p ~ /^seq/) ? mib : files; u = (p ~ /^seq/) ? "MiB/s" : "ops/s"
      g = median("guest", p); h = median("host", p)
      printf "%-10s %9.1f %s (%7.3f s) %9.1f %s (%7.3f s) %11.2f\n", p, k / g, u, g, k / h, u, h, h / g
    }
    print "guest/host: the guest'"'"'s throughput over the host'"'"'s (median times: host / guest)"
  }' "$results"
