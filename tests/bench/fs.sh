#!/usr/bin/env bash
# virtio-fs throughput: the same workload in a guest on a virtio-fs share (hull-vmm, cache=auto)
# and directly on the shared directory in the (emulated) KVM host, reported as guest/host ratios.
#   - sequential write of HULL_BENCH_FS_MIB MiB (default 1024, as the issue asks; dd bs=1M, then sync),
#   - sequential read of a file of that size the guest has not seen (dd bs=1M),
#   - HULL_BENCH_FS_FILES small files (default 500): create, stat (ls -ln), unlink (rm).
# Both sides run the same busybox script; times come from /proc/uptime (10 ms resolution).
# Needs build/bin/hull-vmm and build/vmlinux (make build kernel). Runs inside the emulated
# KVM host (tests/testhost/run) unless called with --inside.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
MIB=${HULL_BENCH_FS_MIB:-1024}
FILES=${HULL_BENCH_FS_FILES:-500}

workload() {
  # $1: directory. Prints "BENCH <phase> <seconds>".
  cat <<'EOF'
d=$1; mib=$2; files=$3
t() { read up rest < /proc/uptime; echo $up; }
el() { echo "$1 $2" | awk '{ printf "%.2f", $2 - $1 }'; }
a=$(t); dd if=/dev/zero of=$d/seq-write bs=1048576 count=$mib 2>/dev/null; sync; b=$(t)
echo "BENCH seq_write $(el $a $b)"
a=$(t); dd if=$d/seq-read of=/dev/null bs=1048576 2>/dev/null; b=$(t)
echo "BENCH seq_read $(el $a $b)"
mkdir -p $d/small
a=$(t); i=0; while [ $i -lt $files ]; do : > $d/small/f$i; i=$((i+1)); done; b=$(t)
echo "BENCH create $(el $a $b)"
a=$(t); ls -ln $d/small > /dev/null; b=$(t)
echo "BENCH stat $(el $a $b)"
a=$(t); rm -f $d/small/*; b=$(t)
echo "BENCH unlink $(el $a $b)"
rm -rf $d/small $d/seq-write
EOF
}

if [ "${1:-}" != --inside ]; then
  exec "$top/tests/testhost/run" --timeout 3000 --memory 8192 -- "$0" --inside
fi

work=$(mktemp -d /var/tmp/hull-bench-fs.XXXXXX)
trap 'rm -rf "$work"' EXIT
workload > "$work/work.sh"
share=$work/share
mkdir -p "$share"
# A file neither side has read yet, for each side.
echo "fs bench: preparing $MIB MiB" >&2
head -c $((MIB << 20)) /dev/urandom > "$share/seq-read"
cp "$share/seq-read" "$work/seq-read-host"

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
sh /work.sh /mnt $MIB $FILES
echo BENCH-DONE
reboot -f
EOF
chmod +x "$work/rd/init"
(cd "$work/rd" && find . | cpio -o -H newc --quiet) > "$work/initrd.cpio"
cat > "$work/vm.json" <<EOF
{"kernel":"$top/build/vmlinux","initrd":"$work/initrd.cpio","memory_mib":1024,
 "serial":"$work/console.log","fs":[{"tag":"bench","shared_dir":"$share"}]}
EOF
echo "fs bench: guest" >&2
"$top/build/bin/hull-vmm" --config "$work/vm.json" > "$work/vmm.out" 2>&1 || {
  echo "hull-vmm failed:"; cat "$work/vmm.out" "$work/console.log"; exit 1; }
grep -q BENCH-DONE "$work/console.log" || { echo "the guest did not finish:"; cat "$work/console.log"; exit 1; }
tr -d '\r' < "$work/console.log" | grep '^BENCH ' > "$work/guest.txt"

# Host: the same script on a directory of the same file system, with its own unread file.
hostdir=$work/hostdir
mkdir -p "$hostdir"
mv "$work/seq-read-host" "$hostdir/seq-read"
echo "fs bench: host" >&2
/bin/busybox sh "$work/work.sh" "$hostdir" "$MIB" "$FILES" > "$work/host.txt"

echo "== virtio-fs: guest on a hull-vmm share vs the host directory ($MIB MiB, $FILES files)"
awk -v mib="$MIB" -v files="$FILES" '
  FNR == NR { g[$2] = $3; next } { h[$2] = $3 }
  END {
    printf "%-10s %14s %14s %10s\n", "phase", "guest", "host", "guest/host"
    split("seq_write seq_read create stat unlink", ph, " ")
    for (i = 1; i <= 5; i++) {
      p = ph[i]; n = (p ~ /^seq/) ? mib : files; u = (p ~ /^seq/) ? "MiB/s" : "ops/s"
      gr = (g[p] > 0) ? n / g[p] : 0; hr = (h[p] > 0) ? n / h[p] : 0
      printf "%-10s %8.1f %5s %8.1f %5s %10.2f\n", p, gr, u, hr, u, (hr > 0) ? gr / hr : 0
    }
  }' "$work/guest.txt" "$work/host.txt"
