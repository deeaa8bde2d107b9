#!/usr/bin/env bash
# Builds hull's guest kernel (vmlinux, ELF with a PVH note) from Debian's linux-source-6.1 with
# hull's patches (patches/): `make tinyconfig` + hull-guest.config, then olddefconfig, then a
# check that every option the fragment asks for survived and every one it switches off is off. The result is cached outside the clone, keyed by a hash of the
# fragment, this script and the source package version, and copied to OUT (default build/vmlinux).
#
# Environment: HULL_CACHE_DIR (default /var/cache/hull), HULL_KERNEL_JOBS (default nproc).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/.." && pwd)
out=${1:-$top/build/vmlinux}
fragment=$here/hull-guest.config
cache_root=${HULL_CACHE_DIR:-/var/cache/hull}/kernel
src_tar=/usr/src/linux-source-6.1.tar.xz
jobs=${HULL_KERNEL_JOBS:-$(nproc)}

log() { echo "[kernel] $*" >&2; }
die() { echo "[kernel] error: $*" >&2; exit 1; }

[ -f "$src_tar" ] || die "$src_tar not found: install the linux-source-6.1 package (scripts/install-deps.sh)"
src_ver=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null) || die "linux-source-6.1 is not installed"
# hull's own patches to the guest kernel (patches/*.patch, applied in name order with patch -p1):
# each says what it is for in its header.
patches=("$here"/patches/*.patch)
[ -e "${patches[0]}" ] || patches=()
key=$( { echo "linux-source-6.1 $src_ver"; cat "$fragment" "$0" ${patches[@]+"${patches[@]}"}; } | sha256sum | cut -c1-16)
cached=$cache_root/$key/vmlinux

install_out() {
  mkdir -p "$(dirname "$out")"
  cp -f "$cached" "$out.tmp" && mv -f "$out.tmp" "$out"
  cp -f "$cache_root/$key/config" "$(dirname "$out")/vmlinux.config"
}

if [ -s "$cached" ]; then
  log "reusing cached kernel $key (linux-source-6.1 $src_ver): $cached"
  install_out
  exit 0
fi

mkdir -p "$cache_root"
# One build at a time per cache (two `make test` runs on one machine must not race).
exec 9>"$cache_root/.lock"
flock 9
if [ -s "$cached" ]; then log "built meanwhile by another run: reusing $key"; install_out; exit 0; fi

src=$cache_root/src-$src_ver
if [ ! -f "$src/.unpacked" ]; then
  log "unpacking $src_tar"
  rm -rf "$src" "$src.tmp" && mkdir -p "$src.tmp"
  tar -xJf "$src_tar" -C "$src.tmp" --strip-components=1
  touch "$src.tmp/.unpacked" && mv "$src.tmp" "$src"
fi

# The patched tree: a hard-linked copy of the unpacked source (patch replaces the files it
# changes, so the pristine tree is left alone), one per set of patches.
if [ ${#patches[@]} -gt 0 ]; then
  pkey=$(cat "${patches[@]}" | sha256sum | cut -c1-12)
  psrc=$cache_root/src-$src_ver-p$pkey
  if [ ! -f "$psrc/.patched" ]; then
    rm -rf "$psrc" "$psrc.tmp"
    cp -al "$src" "$psrc.tmp"
    for p in "${patches[@]}"; do
      log "applying $(basename "$p")"
      patch -s -p1 -d "$psrc.tmp" < "$p" || die "$(basename "$p") does not apply to linux-source-6.1 $src_ver"
    done
    touch "$psrc.tmp/.patched" && mv "$psrc.tmp" "$psrc"
  fi
  src=$psrc
fi

obj=$cache_root/build-$key
rm -rf "$obj" && mkdir -p "$obj"
log "configuring (tinyconfig + $(basename "$fragment")) in $obj"
make -s -C "$src" O="$obj" tinyconfig >/dev/null
"$src/scripts/kconfig/merge_config.sh" -m -O "$obj" "$obj/.config" "$fragment" >/dev/null
make -s -C "$src" O="$obj" olddefconfig >/dev/null

# Kconfig drops options with unmet dependencies silently: name every one that did not survive.
dropped=()
while IFS= read -r line; do
  case "$line" in
    CONFIG_*=*) grep -qxF "$line" "$obj/.config" || dropped+=("$line (now: $(grep -E "^(# )?${line%%=*}[= ]" "$obj/.config" || echo 'absent'))") ;;
    "# CONFIG_"*" is not set") opt=${line#\# }; opt=${opt%% *}
      ! grep -q "^$opt=" "$obj/.config" || dropped+=("$line (now: $(grep "^$opt=" "$obj/.config"); something selects it)") ;;
  esac
done < "$fragment"
if [ ${#dropped[@]} -gt 0 ]; then
  for d in "${dropped[@]}"; do echo "[kernel] dropped by olddefconfig: $d" >&2; done
  die "${#dropped[@]} wanted option(s) did not survive olddefconfig; fix their dependencies in $fragment"
fi

log "building vmlinux with $jobs jobs (about 10 minutes on 2 cores); log: $obj/build.log"
start=$(date +%s)
make -C "$src" O="$obj" -j"$jobs" vmlinux >"$obj/build.log" 2>&1 &
mpid=$!
trap 'kill $mpid 2>/dev/null || true' EXIT
while kill -0 $mpid 2>/dev/null; do
  sleep 30
  kill -0 $mpid 2>/dev/null || break
  n=$(find "$obj" -name '*.o' 2>/dev/null | wc -l)
  log "... $(( $(date +%s) - start ))s, $n objects compiled"
done
if ! wait $mpid; then
  tail -30 "$obj/build.log" >&2
  die "kernel build failed (full log: $obj/build.log)"
fi
trap - EXIT
readelf -n "$obj/vmlinux" 2>/dev/null | grep -qE '^ +Xen +0x' || die "vmlinux has no PVH (Xen ELF) note"
mkdir -p "$cache_root/$key"
cp "$obj/.config" "$cache_root/$key/config"
cp "$obj/vmlinux" "$cached.tmp" && mv "$cached.tmp" "$cached"
rm -rf "$obj"
log "built in $(( $(date +%s) - start ))s: $cached"
install_out
