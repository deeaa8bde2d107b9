#!/usr/bin/env bash
# Registers hull as a docker runtime: adds "hull": {"path": HULL} to "runtimes" in docker's
# daemon.json, keeping every other setting of the file (and other runtimes) as it was. The
# file is written whole and renamed into place. Restart (or SIGHUP) dockerd afterwards.
#
#   scripts/install-docker.sh [HULL_BINARY] [DAEMON_JSON]
#     defaults: /usr/local/bin/hull, /etc/docker/daemon.json
set -euo pipefail
hull=${1:-/usr/local/bin/hull}
conf=${2:-/etc/docker/daemon.json}
command -v jq >/dev/null || { echo "install-docker: jq is missing (scripts/install-deps.sh installs it)" >&2; exit 1; }
[ -x "$hull" ] || { echo "install-docker: $hull is not an executable: run make install first" >&2; exit 1; }
mkdir -p "$(dirname "$conf")"
current='{}'
if [ -s "$conf" ]; then
  current=$(cat "$conf")
  echo "$current" | jq -e 'type == "object"' >/dev/null 2>&1 ||
    { echo "install-docker: $conf is not a JSON object; not touching it" >&2; exit 1; }
fi
tmp=$(mktemp "$conf.XXXXXX")
trap 'rm -f "$tmp"' EXIT
echo "$current" | jq --arg path "$hull" '.runtimes = ((.runtimes // {}) + {hull: {path: $path}})' > "$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$conf"
trap - EXIT
echo "install-docker: hull registered in $conf (docker run --runtime hull ...); reload dockerd (kill -HUP)"
