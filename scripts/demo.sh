#!/usr/bin/env bash
# `make demo`: boot hull's guest kernel in a KVM microVM and show what the guest reports.
# Where this machine cannot boot KVM guests itself (PVM), the VM runs inside the emulated KVM
# host (tests/testhost/run); HULL_TESTHOST=direct|emulated forces one or the other.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
kernel=$top/build/vmlinux
vcpus=${HULL_DEMO_VCPUS:-2}

if [ "${1:-}" = --inside ]; then
  initrd=$2
  echo "demo: starting a microVM: hull-vmm + KVM, $vcpus vCPU, 256 MiB, kernel $kernel"
  start=$(date +%s.%N)
  "$top/build/bin/hull-vmm" --kernel "$kernel" --initrd "$initrd" --vcpus "$vcpus" --memory-mib 256 \
    --serial stdout </dev/null | grep --line-buffered '^guest:'
  echo "demo: the guest rebooted and hull-vmm exited 0 after $(echo "$(date +%s.%N) - $start" | bc | cut -c1-4) s"
  exit 0
fi

[ -f "$kernel" ] || { echo "demo: $kernel missing: run make kernel (make demo does)" >&2; exit 1; }
work=$(mktemp -d /var/tmp/hull-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/rd/bin" "$work/rd/proc"
cp /bin/busybox "$work/rd/bin/busybox"
cat > "$work/rd/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox mount -t proc proc /proc
echo "guest: uname -r: $(/bin/busybox uname -r)"
echo "guest: CPUs: $(/bin/busybox grep -c ^processor /proc/cpuinfo)"
echo "guest: $(/bin/busybox dmesg | /bin/busybox grep -o 'Hypervisor detected: .*')"
echo "guest: memory: $(/bin/busybox awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"
/bin/busybox reboot -f
INIT
chmod +x "$work/rd/init"
(cd "$work/rd" && find . | cpio -o -H newc --quiet) > "$work/initrd.cpio"
"$top/tests/testhost/run" --timeout 300 -- "$0" --inside "$work/initrd.cpio"
