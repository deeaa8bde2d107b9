#!/bin/sh
# Fuzzes the vsock TX path: vmm/fuzz/run.sh [SECONDS] (default 600).
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, -Cpasses=sancov...). Only the stable
# toolchain is available here, so RUSTC_BOOTSTRAP=1 lets stable rustc accept them.
set -eu
SECONDS_TO_RUN=${1:-600}
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
mkdir -p corpus/vsock_tx
# Seeds: a guest REQUEST to host port 1 (a listener the target provides) followed by data, and a
# packet for an unknown connection. Layout as in fuzz_targets/vsock_tx.rs.
python3 - <<'PY'
import struct
def hdr(op, src_port, dst_port, length=0, flags=0, src_cid=3, dst_cid=2, t=1):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, t, op, flags, 65536, 0)
def image(pkts):
    mem = bytearray(0x2000)
    descs, heads = [], []
    addr = 0x1000
    for h, data in pkts:
        heads.append(len(descs))
        mem[addr:addr+44] = h
        if data:
            descs.append((addr, 44, 1, len(descs) + 1))
            mem[addr+0x40:addr+0x40+len(data)] = data
            descs.append((addr + 0x40, len(data), 0, 0))
        else:
            descs.append((addr, 44, 0, 0))
        addr += 0x100
    for i, (a, l, f, n) in enumerate(descs):
        mem[16*i:16*i+16] = struct.pack("<QIHH", a, l, f, n)
    mem[0x100:0x104] = struct.pack("<HH", 0, len(heads))
    for i, h in enumerate(heads):
        mem[0x104+2*i:0x106+2*i] = struct.pack("<H", h)
    return bytes(mem)
seeds = {
    "connect_and_send": [(hdr(1, 1000, 1), b""), (hdr(5, 1000, 1, 5), b"hello"), (hdr(4, 1000, 1, flags=3), b"")],
    "unknown": [(hdr(5, 1001, 77, 3), b"abc"), (hdr(3, 1002, 1), b"")],
    "credit": [(hdr(1, 1003, 1), b""), (hdr(7, 1003, 1), b""), (hdr(6, 1003, 1), b"")],
}
for name, pkts in seeds.items():
    open(f"corpus/vsock_tx/seed_{name}", "wb").write(image(pkts))
PY
exec cargo fuzz run vsock_tx corpus/vsock_tx -- -max_total_time="$SECONDS_TO_RUN" -max_len=32768 -rss_limit_mb=2048
