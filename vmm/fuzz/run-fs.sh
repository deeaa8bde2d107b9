#!/bin/sh
# Fuzzes the virtio-fs request path: vmm/fuzz/run-fs.sh [SECONDS] (default 600).
#
# The target writes into a real shared directory: it runs in a private mount namespace with a
# 64 MiB tmpfs as HULL_FS_FUZZ_DIR, so that no input can fill the host's disk, and nothing is
# left behind. cargo-fuzz needs nightly-only rustc flags: RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them (as in run.sh).
set -eu
SECONDS_TO_RUN=${1:-600}
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
cargo fuzz build virtio_fs
mkdir -p corpus/virtio_fs artifacts/virtio_fs
# Seeds (layout in fuzz_targets/virtio_fs.rs). After the harness's INIT, node ids are handed
# out from 2 and file handles from 1, in request order.
python3 - <<'PY'
import struct
U = [100]
def req(op, node, body=b"", uid=0, gid=0):
    U[0] += 1
    return struct.pack("<IIQQIIII", 40 + len(body), op, U[0], node, uid, gid, 1, 0) + body
def z(s):
    return s.encode() + b"\0"
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, \
    OPEN, READ, WRITE, STATFS, RELEASE = 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18
SETXATTR, GETXATTR, LISTXATTR, REMOVEXATTR, FLUSH, OPENDIR, READDIR, RELEASEDIR = 21, 22, 23, 24, 25, 27, 28, 29
ACCESS, CREATE, BATCH_FORGET, FALLOCATE, READDIRPLUS, RENAME2, LSEEK = 34, 35, 42, 43, 44, 45, 46
def open_in(flags): return struct.pack("<II", flags, 0)
def read_in(fh, off, size): return struct.pack("<QQIIQII", fh, off, size, 0, 0, 0, 0)
def write_in(fh, off, data): return struct.pack("<QQIIQII", fh, off, len(data), 0, 0, 0, 0) + data
def setattr_in(valid, size=0, mode=0, uid=0, gid=0, mtime=0):
    return struct.pack("<IIQQQQQQIIIIIIII", valid, 0, 0, size, 0, 0, mtime, 0, 0, 0, 0, mode, 0, uid, gid, 0)
def messages(reqs):
    return b"\0" + b"".join(struct.pack("<H", len(r)) + r for r in reqs)
seeds = {
    "file_io": [req(LOOKUP, 1, z("file")), req(GETATTR, 2, struct.pack("<IIQ", 0, 0, 0)),
                req(OPEN, 2, open_in(2)), req(READ, 2, read_in(1, 0, 4096)),
                req(WRITE, 2, write_in(1, 4, b"hello")), req(LSEEK, 2, struct.pack("<QQII", 1, 0, 3, 0)),
                req(FLUSH, 2, struct.pack("<QIIQ", 1, 0, 0, 0)), req(RELEASE, 2, struct.pack("<QIIQ", 1, 0, 0, 0)),
                req(SETATTR, 2, setattr_in(8 | 1, size=3, mode=0o600)), req(FORGET, 2, struct.pack("<Q", 1))],
    "names": [req(LOOKUP, 1, z("dir")), req(MKDIR, 2, struct.pack("<II", 0o755, 0) + z("new")),
              req(CREATE, 2, struct.pack("<IIII", 66, 0o100644, 0, 0) + z("c")),
              req(WRITE, 4, write_in(1, 0, b"data")),
              req(SYMLINK, 2, z("sl") + z("../file")), req(LINK, 2, struct.pack("<Q", 4) + z("hl")),
              req(RENAME, 2, struct.pack("<Q", 1) + z("hl") + z("moved")),
              req(RENAME2, 1, struct.pack("<QII", 2, 1, 0) + z("moved") + z("back")),
              req(MKNOD, 2, struct.pack("<IIII", 0o10644, 0, 0, 0) + z("fifo")),
              req(UNLINK, 2, z("sl")), req(RMDIR, 2, z("new")),
              req(OPENDIR, 1, open_in(0)), req(READDIR, 1, read_in(2, 0, 4096)),
              req(READDIRPLUS, 1, read_in(2, 0, 4096)), req(RELEASEDIR, 1, struct.pack("<QIIQ", 2, 0, 0, 0))],
    "links": [req(LOOKUP, 1, z("abs")), req(READLINK, 2), req(OPEN, 2, open_in(0)),
              req(SETATTR, 2, setattr_in(1 | 2 | 32, mode=0o777, uid=7, mtime=5)),
              req(LOOKUP, 1, z("rel")), req(LOOKUP, 3, z("inner")), req(LOOKUP, 1, z("..")),
              req(LOOKUP, 1, z("in")), req(READLINK, 4), req(LINK, 1, struct.pack("<Q", 2) + z("h")),
              req(CREATE, 1, struct.pack("<IIII", 514, 0o100644, 0, 0) + z("abs")),
              req(BATCH_FORGET, 0, struct.pack("<II", 2, 0) + struct.pack("<QQ", 2, 1) + struct.pack("<QQ", 3, 1))],
    "xattr": [req(LOOKUP, 1, z("file")), req(SETXATTR, 2, struct.pack("<II", 3, 0) + z("user.k") + b"val"),
              req(GETXATTR, 2, struct.pack("<II", 64, 0) + z("user.k")), req(LISTXATTR, 2, struct.pack("<II", 0, 0)),
              req(REMOVEXATTR, 2, z("user.k")), req(ACCESS, 2, struct.pack("<II", 6, 0)), req(STATFS, 1),
              req(OPEN, 2, open_in(2)), req(FALLOCATE, 2, struct.pack("<QQQII", 1, 0, 8192, 0, 0))],
    "other_uid": [req(LOOKUP, 1, z("dir"), uid=1000, gid=1000),
                  req(CREATE, 2, struct.pack("<IIII", 66, 0o100644, 0, 0) + z("u"), uid=1000, gid=1000)],
}
for name, reqs in seeds.items():
    open(f"corpus/virtio_fs/seed_{name}", "wb").write(messages(reqs))
# Raw mode: a LOOKUP chain and a READ-less OPEN chain laid out by hand in the memory image.
mem = bytearray(0x1000)
r1 = req(LOOKUP, 1, z("file")); r2 = req(GETATTR, 1, struct.pack("<IIQ", 0, 0, 0))
mem[0x400:0x400 + len(r1)] = r1; mem[0x600:0x600 + len(r2)] = r2
descs = [(0x400, len(r1), 1, 1), (0x800, 0x200, 2, 0), (0x600, len(r2), 1, 3), (0xa00, 0x200, 2, 0)]
for i, (a, l, f, n) in enumerate(descs):
    mem[16 * i:16 * i + 16] = struct.pack("<QIHH", a, l, f, n)
mem[0x100:0x108] = struct.pack("<HHHH", 0, 2, 0, 2)
open("corpus/virtio_fs/seed_raw", "wb").write(b"\1" + bytes(mem))
PY
BIN="$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/virtio_fs"
# A private mount namespace: the tmpfs goes away with the run.
exec unshare -m --propagation private sh -c '
    set -eu
    dir=$(mktemp -d /tmp/hull-fs-fuzz.XXXXXX)
    mount -t tmpfs -o size=64m hull-fs-fuzz "$dir"
    export HULL_FS_FUZZ_DIR="$dir"
    rc=0
    "$0" corpus/virtio_fs -artifact_prefix=artifacts/virtio_fs/ -max_total_time="$1" \
        -max_len=65536 -rss_limit_mb=2048 -timeout=10 || rc=$?
    umount "$dir"; rmdir "$dir"
    exit $rc
' "$BIN" "$SECONDS_TO_RUN"
