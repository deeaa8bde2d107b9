#!/usr/bin/env bash
# Builds a container image without a registry: a docker-archive tar (what `docker load` and
# `ctr images import` take) of a one-layer image whose root holds Debian's busybox-static.
#
#   tests/images/build.sh OUT.tar [busybox|server|pause|iperf]
#
#   busybox  hull-test/busybox:latest   /bin/busybox and its applets; CMD ["sh"]
#   server   hull-test/server:latest    the same, plus /www/index.html; CMD runs busybox httpd
#                                       in the foreground on port 80
#   pause    hull-test/pause:latest     the same; CMD waits for SIGTERM/SIGINT and exits 0: a
#                                       pod's sandbox ("pause") image for containerd's CRI
#   iperf    hull-test/iperf:latest     the same, plus Debian's iperf3 and the libraries it
#                                       links; CMD ["iperf3","-s"] (the network bench)
#
# Reproducible (fixed owners and mtimes), so the image id is the same on every machine.
set -euo pipefail
out=${1:?usage: build.sh OUT.tar [busybox|server|pause|iperf]}
kind=${2:-busybox}
bb=/bin/busybox
[ -x "$bb" ] || { echo "build.sh: $bb missing: install busybox-static (scripts/install-deps.sh)" >&2; exit 1; }
case "$kind" in
  busybox) ref=hull-test/busybox:latest; cmd='["sh"]' ;;
  server) ref=hull-test/server:latest; cmd='["httpd","-f","-v","-p","80","-h","/www"]' ;;
  pause) ref=hull-test/pause:latest
    cmd='["sh","-c","trap \"exit 0\" TERM INT; while :; do sleep 3600 & wait; done"]' ;;
  iperf) ref=hull-test/iperf:latest; cmd='["iperf3","-s"]'
    command -v iperf3 > /dev/null || { echo "build.sh: iperf3 missing: install iperf3 (scripts/install-deps.sh)" >&2; exit 1; } ;;
  *) echo "build.sh: unknown image $kind (busybox, server, pause or iperf)" >&2; exit 1 ;;
esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,etc,tmp,proc,sys,dev,root,www}
chmod 1777 "$root/tmp"
cp "$bb" "$root/bin/busybox"
for a in $("$bb" --list); do
  [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
done
echo 'root:x:0:0:root:/root:/bin/sh' > "$root/etc/passwd"
echo 'root:x:0:' > "$root/etc/group"
[ "$kind" = server ] && echo "hello from hull" > "$root/www/index.html"
if [ "$kind" = iperf ]; then
  # The binary and every library ldd names (and the loader), at their own paths.
  iperf=$(command -v iperf3)
  mkdir -p "$root/usr/bin"
  cp -L "$iperf" "$root/usr/bin/iperf3"
  for lib in $(ldd "$iperf" | grep -oE '/[^ ]+'); do
    cp -L --parents "$lib" "$root"
  done
fi
find "$root" -exec touch -h -d @0 {} +

mkdir "$work/img"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer.tar" .
layer_sha=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
mkdir "$work/img/$layer_sha"
mv "$work/layer.tar" "$work/img/$layer_sha/layer.tar"
cat > "$work/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"1970-01-01T00:00:00Z",
 "config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":$cmd,"WorkingDir":"/"},
 "rootfs":{"type":"layers","diff_ids":["sha256:$layer_sha"]},
 "history":[{"created":"1970-01-01T00:00:00Z","created_by":"tests/images/build.sh $kind"}]}
JSON
config_sha=$(sha256sum "$work/config.json" | cut -d' ' -f1)
mv "$work/config.json" "$work/img/$config_sha.json"
cat > "$work/img/manifest.json" <<JSON
[{"Config":"$config_sha.json","RepoTags":["$ref"],"Layers":["$layer_sha/layer.tar"]}]
JSON
name=${ref%%:*}
printf '{"%s":{"latest":"%s"}}\n' "$name" "$layer_sha" > "$work/img/repositories"
find "$work/img" -exec touch -h -d @0 {} +
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/img" -cf "$out.tmp" .
mv -f "$out.tmp" "$out"
echo "build.sh: $ref -> $out (config sha256:$config_sha)" >&2
