#!/usr/bin/env bash
# Installs the CRI client the tests drive containerd's CRI socket with: the PyPI package
# container-runtime-interface-api (CRI v1 stubs over grpcio) in a virtualenv of its own, outside
# the clone, pinned. Idempotent: a complete virtualenv is reused, a half-made one replaced.
#
#   scripts/install-cri-client.sh        prints the virtualenv's python on stdout
#
# HULL_CACHE_DIR (default /var/cache/hull) holds the virtualenv.
set -euo pipefail
# Pinned: the versions the CRI tests (tests/cri/hullcri.py) were written against.
# websocket-client: port-forward over containerd's streaming server.
REQS=(container-runtime-interface-api==2.0.1 grpcio==1.85.3 protobuf==6.33.6 typing-extensions==4.16.0 websocket-client==1.9.2)
key=$(printf '%s\n' "${REQS[@]}" "$(python3 -V 2>&1)" | sha256sum | cut -c1-12)
venv=${HULL_CACHE_DIR:-/var/cache/hull}/cri-client-$key
if [ ! -f "$venv/.complete" ]; then
  echo "install-cri-client: creating $venv (${REQS[*]})" >&2
  rm -rf "$venv"
  python3 -m venv "$venv" >&2 \
    || { echo "install-cri-client: python3 -m venv $venv failed (package python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install --disable-pip-version-check -q "${REQS[@]}" >&2 \
    || { echo "install-cri-client: pip install ${REQS[*]} failed (is PyPI reachable?)" >&2; exit 1; }
  "$venv/bin/python3" -c 'import cri_api.v1.api_pb2_grpc, websocket' >&2
  touch "$venv/.complete"
fi
echo "$venv/bin/python3"
