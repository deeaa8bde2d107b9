#!/usr/bin/env bash
# Builds hull's guest initramfs: the fully static hull-agent as /init, nothing else (the agent
# creates its mount points and opens the console itself). newc cpio, reproducible (owner 0:0,
# fixed mtimes), cached by the content hash of the agent binary in
# ${HULL_CACHE_DIR:-/var/cache/hull}/initrd/<hash>/, and copied to OUT
# (default build/hull-initrd.img).
#
#   guest-agent/build-initrd.sh [OUT]
#
# The agent is built (profile guest, +crt-static, explicit target triple), unless HULL_AGENT_BIN names
# an already built static agent (the Makefile passes build/bin/hull-agent).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
out=${1:-$top/build/hull-initrd.img}
cache_root=${HULL_CACHE_DIR:-/var/cache/hull}/initrd
triple=x86_64-unknown-linux-gnu

log() { echo "[initrd] $*" >&2; }
die() { echo "[initrd] error: $*" >&2; exit 1; }

command -v cpio >/dev/null || die "cpio is not installed (scripts/install-deps.sh installs it)"

if [ -n "${HULL_AGENT_BIN:-}" ]; then
  # Already built (e.g. by `make build`, which builds the whole workspace: building the agent
  # alone would unify dependency features differently and rebuild them).
  agent=$HULL_AGENT_BIN
  [ -x "$agent" ] || die "HULL_AGENT_BIN=$agent is not an executable"
else
  # The explicit --target keeps +crt-static off proc-macros and build scripts.
  export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
  log "building the static hull-agent (profile guest)"
  (cd "$top" && cargo build --profile guest --target "$triple" -p hull-agent --bin hull-agent >&2)
  target_dir=${CARGO_TARGET_DIR:-$(cd "$top" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')}
  agent=$target_dir/$triple/guest/hull-agent
  [ -x "$agent" ] || die "built agent not found at $agent"
fi
if readelf -l "$agent" | grep -q INTERP; then
  die "$agent is dynamically linked (it must be static to run as /init)"
fi

key=$( { sha256sum "$agent" | cut -d' ' -f1; cat "$0"; } | sha256sum | cut -c1-16)
cached=$cache_root/$key/hull-initrd.img

if [ ! -s "$cached" ]; then
  mkdir -p "$cache_root/$key"
  stage=$(mktemp -d "$cache_root/stage.XXXXXX")
  trap 'rm -rf "$stage"' EXIT
  mkdir "$stage/root"
  # Every byte here is copied into guest RAM by the VMM and unpacked by the guest kernel on each
  # start: no debug info and no symbol table (--strip-all; with the size-optimised `guest` profile
  # the image is 6.6 MiB, against 11 MiB for a stripped release build and 14 with symbols).
  # The panic hook's message names the file and line (compiled in, not from symbols);
  # build/bin/hull-agent keeps both for debugging.
  strip --strip-all -o "$stage/root/init" "$agent"
  chmod 0755 "$stage/root/init"
  touch -h -d @0 "$stage/root/init" "$stage/root"
  (cd "$stage/root" && find . -mindepth 1 | LC_ALL=C sort |
    cpio -o -H newc -R 0:0 --reproducible --quiet) >"$stage/img"
  mv -f "$stage/img" "$cached"
  log "packed the agent into $cached ($(du -h "$cached" | cut -f1))"
else
  log "reusing cached initrd $key"
fi

mkdir -p "$(dirname "$out")"
cp -f "$cached" "$out.tmp" && mv -f "$out.tmp" "$out"
log "$out"
