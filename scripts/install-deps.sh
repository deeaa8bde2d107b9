#!/usr/bin/env bash
# Installs every Debian package hull's build, tests and demo need. Idempotent: packages already
# present are not touched, and apt is only asked when something is missing.
set -euo pipefail

PKGS=(
  # guest kernel build (kernel-config/build.sh)
  linux-source-6.1 patch bc flex bison libelf-dev libssl-dev make gcc xz-utils
  # emulated KVM host and reference VMM (tests/testhost, make bench)
  qemu-system-x86 busybox-static cpio kmod
  # test tooling
  python3 socat jq procps tmux
  # the CRI client of the CRI tests (scripts/install-cri-client.sh) and the docs' YAML they read
  python3-venv python3-yaml
  # containers in the guest: libcontainer links libseccomp statically (libseccomp.a)
  libseccomp-dev pkg-config
  # the peer runtime the CLI tests and benches compare hull against, and the network bench's
  # throughput tool
  runc iperf3
  # the front ends hull plugs into (tests start them with their own state dirs and sockets),
  # and a real CNI for pod networking
  containerd docker.io containernetworking-plugins
)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PKGS[@]} packages present"
else
  echo "install-deps: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  echo "install-deps: done"
fi
# Python packages from PyPI, in a virtualenv of their own (prints its python).
"$(dirname "$0")/install-cri-client.sh" >/dev/null
