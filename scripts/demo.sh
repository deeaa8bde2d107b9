#!/usr/bin/env bash
# `make demo`: what a new user wants to see. A containerd of the demo's own (its own root, state
# and socket, nothing of the machine's touched) runs a locally built busybox image with
# `ctr run --runtime io.containerd.hull.v2`: the container reports the kernel it runs on, which
# is hull's guest kernel in a KVM microVM, not the host's.
# Where this machine cannot boot KVM guests itself (PVM), it all runs inside the emulated KVM
# host (tests/testhost/run); HULL_TESTHOST=direct|emulated forces one or the other.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
build=$top/build

if [ "${1:-}" = --inside ]; then
  work=$2
  # containerd's root on a tmpfs: overlay snapshots cannot sit on the emulated host's overlay.
  mkdir -p "$work/root"
  mount -t tmpfs tmpfs "$work/root"
  cleanup() {
    [ -n "${ctd_pid:-}" ] && kill "$ctd_pid" 2>/dev/null && wait "$ctd_pid" 2>/dev/null
    umount -R -l "$work/root" 2>/dev/null || true
  }
  trap cleanup EXIT
  cat > "$work/hull.toml" <<EOF
kernel = "$build/vmlinux"
initrd = "$build/hull-initrd.img"
vmm = "$build/bin/hull-vmm"
EOF
  cat > "$work/containerd.toml" <<EOF
version = 2
root = "$work/root/lib"
state = "$work/root/run"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[ttrpc]
  address = "$work/containerd.sock.ttrpc"
EOF
  if grep -q "hull.ctl=" /proc/cmdline 2>/dev/null; then
    echo "demo: (this machine cannot run KVM guests itself: the demo runs in the emulated KVM host, whose kernel is the host kernel below)"
  fi
  echo "demo: host kernel: $(uname -r)"
  echo "demo: starting containerd $(containerd --version | awk '{print $3}') (its own root and socket, log in containerd.log)"
  PATH=$build/bin:$PATH HULL_CONFIG=$work/hull.toml \
    containerd --config "$work/containerd.toml" >"$work/containerd.log" 2>&1 &
  ctd_pid=$!
  ctr="ctr -a $work/containerd.sock -n demo"
  for _ in $(seq 100); do $ctr version >/dev/null 2>&1 && break; sleep 0.2; done
  $ctr version >/dev/null || { echo "demo: containerd did not start:"; cat "$work/containerd.log"; exit 1; }
  $ctr images import "$work/busybox.tar" >/dev/null
  image=docker.io/hull-test/busybox:latest
  echo "demo: \$ ctr run --rm --runtime io.containerd.hull.v2 $image demo sh -c '...'"
  start=$(date +%s.%N)
  $ctr run --rm --runtime io.containerd.hull.v2 "$image" demo sh -c '
    echo "container: kernel: $(uname -r)"
    echo "container: CPUs: $(nproc), memory: $(awk "/MemTotal/ {print int(\$2/1024)}" /proc/meminfo) MiB"
    echo "container: $(dmesg 2>/dev/null | grep -o "Hypervisor detected: .*" || echo "hypervisor: see /proc/cpuinfo")"
    echo "container: pid $$, hostname $(hostname)"'
  echo "demo: the container ran in its own microVM (hull-vmm + KVM) and is gone; $(echo "$(date +%s.%N) - $start" | bc | cut -c1-4) s in all"
  left=$(pgrep -c -x hull-vmm || true)
  echo "demo: hull-vmm processes left: $left"
  exit 0
fi

for f in "$build/bin/hull-vmm" "$build/bin/containerd-shim-hull-v2" "$build/vmlinux" "$build/hull-initrd.img"; do
  [ -e "$f" ] || { echo "demo: $f missing: run make build kernel initrd (make demo does)" >&2; exit 1; }
done
command -v containerd >/dev/null && command -v ctr >/dev/null \
  || { echo "demo: containerd and ctr missing: run scripts/install-deps.sh (make demo does)" >&2; exit 1; }
work=$(mktemp -d /var/tmp/hull-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$top/tests/images/build.sh" "$work/busybox.tar" busybox 2>/dev/null
"$top/tests/testhost/run" --timeout 600 -- "$0" --inside "$work"
