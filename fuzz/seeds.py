#!/usr/bin/env python3
"""Seed corpora for the fuzz targets: seeds.py TARGET DIR writes DIR/seed_* (layouts as documented
at the top of each fuzz_targets/TARGET.rs). Generated, never committed."""
import json
import os
import struct
import sys

TARGET, OUT = sys.argv[1], sys.argv[2]
os.makedirs(OUT, exist_ok=True)


def put(name, data):
    with open(os.path.join(OUT, "seed_" + name), "wb") as f:
        f.write(data)


def frame(obj):
    payload = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return struct.pack(">I", len(payload)) + payload


def vsock_hdr(op, src_port, dst_port, length=0, flags=0, src_cid=3, dst_cid=2, t=1):
    return struct.pack("<QQIIIHHIII", src_cid, dst_cid, src_port, dst_port, length, t, op, flags, 65536, 0)


def vsock_tx():
    # A guest REQUEST to host port 1 (a listener the target provides) followed by data, and a
    # packet for an unknown connection.
    def image(pkts):
        mem = bytearray(0x2000)
        descs, heads = [], []
        addr = 0x1000
        for h, data in pkts:
            heads.append(len(descs))
            mem[addr:addr + 44] = h
            if data:
                descs.append((addr, 44, 1, len(descs) + 1))
                mem[addr + 0x40:addr + 0x40 + len(data)] = data
                descs.append((addr + 0x40, len(data), 0, 0))
            else:
                descs.append((addr, 44, 0, 0))
            addr += 0x100
        for i, (a, l, f, n) in enumerate(descs):
            mem[16 * i:16 * i + 16] = struct.pack("<QIHH", a, l, f, n)
        mem[0x100:0x104] = struct.pack("<HH", 0, len(heads))
        for i, h in enumerate(heads):
            mem[0x104 + 2 * i:0x106 + 2 * i] = struct.pack("<H", h)
        return bytes(mem)
    seeds = {
        "connect_and_send": [(vsock_hdr(1, 1000, 1), b""), (vsock_hdr(5, 1000, 1, 5), b"hello"), (vsock_hdr(4, 1000, 1, flags=3), b"")],
        "unknown": [(vsock_hdr(5, 1001, 77, 3), b"abc"), (vsock_hdr(3, 1002, 1), b"")],
        "credit": [(vsock_hdr(1, 1003, 1), b""), (vsock_hdr(7, 1003, 1), b""), (vsock_hdr(6, 1003, 1), b"")],
    }
    for name, pkts in seeds.items():
        put(name, image(pkts))


def virtio_net_tx():
    # A frame split into its vnet header and two pieces, a frame in one descriptor, and a chain
    # with a write-only descriptor; then a frame from the tap (bytes past 0x8000).
    mem = bytearray(0x2000)
    hdr = bytes(12)
    eth = bytes.fromhex("020000000001020000000002") + b"\x08\x00" + bytes(range(46))
    descs = [(0x1000, 12, 1, 1), (0x1100, 20, 1, 2), (0x1200, len(eth) - 20, 0, 0),
             (0x1300, 12 + len(eth), 0, 0),
             (0x1400, 12, 1, 5), (0x1500, 60, 2, 0)]
    mem[0x1000:0x100c] = hdr
    mem[0x1100:0x1100 + 20] = eth[:20]
    mem[0x1200:0x1200 + len(eth) - 20] = eth[20:]
    mem[0x1300:0x1300 + 12 + len(eth)] = hdr + eth
    for i, (a, l, f, n) in enumerate(descs):
        mem[16 * i:16 * i + 16] = struct.pack("<QIHH", a, l, f, n)
    heads = [0, 3, 4]
    mem[0x100:0x104] = struct.pack("<HH", 0, len(heads))
    for i, h in enumerate(heads):
        mem[0x104 + 2 * i:0x106 + 2 * i] = struct.pack("<H", h)
    image = bytes(mem) + bytes(0x8000 - len(mem))
    put("tx_only", bytes(mem))
    put("tx_and_rx", image + hdr + eth * 40)


def vsock_rx():
    # RX buffers: header + data descriptors (well formed, split oddly, too short, pointing
    # outside memory), avail ring at 0x100.
    def image(chains):
        mem = bytearray(0x1000)
        descs, heads = [], []
        addr = 0x400
        for chain in chains:
            heads.append(len(descs))
            for j, (length, flags) in enumerate(chain):
                nxt = len(descs) + 1 if j + 1 < len(chain) else 0
                f = flags | (1 if j + 1 < len(chain) else 0)
                a = addr if length < 0x10000 else 0xffff_0000
                descs.append((a, length, f, nxt))
                addr += 0x80
        for i, (a, l, f, n) in enumerate(descs[:16]):
            mem[16 * i:16 * i + 16] = struct.pack("<QIHH", a, l, f, n)
        mem[0x100:0x104] = struct.pack("<HH", 0, len(heads))
        for i, h in enumerate(heads):
            mem[0x104 + 2 * i:0x106 + 2 * i] = struct.pack("<H", h)
        return bytes(mem)
    put("sane", image([[(44, 2), (0x80, 2)]] * 6))
    put("split_header", image([[(20, 2), (24, 2), (0x80, 2)]] * 4))
    put("short", image([[(8, 2)], [(44, 0), (0x80, 2)], [(44, 2)], [(0x100000, 2)]]))


def vsock_connect():
    for name, line in {
        "ok": b"CONNECT 1024\n", "lower": b"connect 52\r\n", "spaces": b"  Connect\t7 \r\r\nrest",
        "long": b"CONNECT " + b"0" * 24 + b"1\n", "too_long": b"CONNECT " + b"0" * 25 + b"1\n",
        "bad_port": b"CONNECT 4294967296\n", "extra": b"CONNECT 1 2\n", "no_newline": b"CONNECT 5",
        "plus": b"CONNECT +5\n",
    }.items():
        put(name, line)


def fs_seeds():
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
        "truncating_open": [req(LOOKUP, 1, z("file")), req(OPEN, 2, open_in(0o1000)), req(OPEN, 2, open_in(1)),
                            req(ACCESS, 2, struct.pack("<II", 2, 0))],
    }
    for name, reqs in seeds.items():
        put(name, messages(reqs))
    # Raw mode: a LOOKUP chain and a GETATTR chain laid out by hand in the memory image.
    mem = bytearray(0x1000)
    r1 = req(LOOKUP, 1, z("file"))
    r2 = req(GETATTR, 1, struct.pack("<IIQ", 0, 0, 0))
    mem[0x400:0x400 + len(r1)] = r1
    mem[0x600:0x600 + len(r2)] = r2
    descs = [(0x400, len(r1), 1, 1), (0x800, 0x200, 2, 0), (0x600, len(r2), 1, 3), (0xa00, 0x200, 2, 0)]
    for i, (a, l, f, n) in enumerate(descs):
        mem[16 * i:16 * i + 16] = struct.pack("<QIHH", a, l, f, n)
    mem[0x100:0x108] = struct.pack("<HHHH", 0, 2, 0, 2)
    put("raw", b"\1" + bytes(mem))


def mmio():
    # A driver bringing a device up: negotiate (3), queues 0..2 at 0x1000/0x2000/0x3000 (4),
    # DRIVER_OK (5), a chain in memory (6), notify (7), reads of every register (2).
    def setup(q, base, size=16):
        return bytes([4, q]) + struct.pack("<HHHH", size, base, base + 0x400, base + 0x800)
    up = bytes([3]) + setup(0, 0x1000) + setup(1, 0x2000) + setup(2, 0x3000) + bytes([5])
    reads = b"".join(bytes([2]) + struct.pack("<HB", off, 4) for off in range(0, 0x104, 4))
    chain = bytes([6]) + struct.pack("<HB", 0x2000, 16) + struct.pack("<QIHH", 0x5000, 44, 0, 0)
    avail = bytes([6]) + struct.pack("<HB", 0x2400, 6) + struct.pack("<HHH", 0, 1, 0)
    for dev in (0, 1):
        put(f"up{dev}", bytes([dev]) + up + chain + avail + bytes([7, 1, 7, 0]) + reads)
        put(f"config{dev}", bytes([dev]) + b"".join(bytes([1]) + struct.pack("<HB", 0x100 + i, 4) + b"abcd" for i in range(0, 48, 3)))
        put(f"reset{dev}", bytes([dev]) + up + bytes([0, 0x70 // 4]) + struct.pack("<I", 0) + up)


def api_line():
    lines = [
        {"action": "pause"}, {"action": "resume"}, {"action": "stats"}, {"action": "shutdown"},
        {"action": "shutdown", "timeout_ms": 600001}, {"action": "shutdown", "timeout_ms": 5},
        {"action": "pause", "extra": 1}, {"action": "reboot"},
    ]
    put("all", b"\n".join(json.dumps(l).encode() for l in lines))
    put("bad", b"{\n\xff\n[]\n\"pause\"\n{\"action\": null}")


REQUESTS = [
    {"id": 1, "call": {"type": "health"}},
    {"id": 2, "call": {"type": "version"}},
    {"id": 3, "call": {"type": "spawn", "argv": ["/bin/sh", "-c", "echo hi"], "env": ["A=b"], "cwd": "/",
                       "user": {"uid": 1, "gid": 2, "groups": [3]}, "stdio": {"mode": "terminal", "rows": 24, "cols": 80},
                       "root": "/rootfs"}},
    {"id": 4, "call": {"type": "signal", "process": 1, "signal": 9, "group": True}},
    {"id": 5, "call": {"type": "wait", "process": 1}},
    {"id": 6, "call": {"type": "close_stdin", "process": 1, "after_bytes": 10}},
    {"id": 7, "call": {"type": "resize_terminal", "process": 1, "rows": 1, "cols": 2}},
    {"id": 8, "call": {"type": "mount", "fstype": "virtiofs", "source": "share", "target": "/mnt/a",
                       "read_only": True, "options": []}},
    {"id": 9, "call": {"type": "unmount", "target": "/mnt/a", "lazy": True}},
    {"id": 10, "call": {"type": "set_time", "seconds": 1700000000, "nanos": 5}},
    {"id": 11, "call": {"type": "shutdown", "grace_ms": 100}},
    {"id": 12, "call": {"type": "teleport"}},
    {"id": 0, "call": {"type": "health"}},
]
HELLO = {"version": 1, "connection": {"kind": "control"}}
HELLO_REPLY = {"version": 1, "result": {"Ok": None}}


def ok(i, r):
    return {"id": i, "result": {"Ok": r}}


REPLIES = [
    ok(1, {"type": "health", "uptime_ms": 5, "running_processes": 1}),
    ok(2, {"type": "version", "protocol": 1, "agent": "x", "mode": "guest", "kernel": "6.1"}),
    {"id": 3, "result": {"Err": {"kind": "busy", "message": "no"}}},
    ok(3, {"type": "processes", "processes": []}),
    ok(5, {"type": "spawned", "process": 7, "pid": 42}),
    ok(6, {"type": "done"}),
    ok(1, {"type": "exited", "kind": "signaled", "signal": 9, "core_dumped": False}),
    {"id": 0, "result": {"Err": {"kind": "bad_frame", "message": "x"}}},
    {"id": 7, "result": {"Err": {"kind": "from_the_future", "message": "x"}}},
    ok(4, {"type": "teleport"}),
]


def agent_requests():
    put("session", b"\x07" + frame(HELLO) + b"".join(frame(r) for r in REQUESTS))
    put("bad_frames", b"\x01" + frame(HELLO) + frame(b"not json") + struct.pack(">I", 0) + frame(REQUESTS[0]))
    put("oversized", b"\x02" + frame(HELLO) + struct.pack(">I", (1 << 20) + 1) + b"{}")
    put("old_hello", b"\x03" + frame({"version": 0, "connection": {"kind": "log"}}))


def agent_replies():
    put("session", b"\x05" + frame(HELLO_REPLY) + b"".join(frame(r) for r in REPLIES))
    put("mismatch", b"\x01" + frame({"version": 2, "result": {"Err": {"kind": "version_mismatch", "message": "v"}}}))
    put("truncated", b"\x02" + frame(HELLO_REPLY) + frame(REPLIES[0])[:-3])


def agent_client():
    # The client calls health, version, wait, list_processes, stats, spawn, signal (ids 1..7).
    put("answers", frame(HELLO_REPLY) + b"".join(frame(r) for r in [
        ok(1, {"type": "health", "uptime_ms": 5, "running_processes": 1}),
        ok(2, {"type": "version", "protocol": 1, "agent": "x", "mode": "guest", "kernel": "6.1"}),
        ok(4, {"type": "processes", "processes": []}),
        ok(6, {"type": "spawned", "process": 7, "pid": 42}),
        ok(7, {"type": "done"}),
        ok(3, {"type": "exited", "kind": "exited", "code": 0}),
    ]))
    put("hostile", frame(HELLO_REPLY) + b"".join(frame(r) for r in REPLIES) + frame(ok(1, {"type": "done"})) * 3)
    put("oversized", frame(HELLO_REPLY) + struct.pack(">I", 0xffffffff))
    put("bad_hello", frame({"version": 1}))


{
    "vsock_tx": vsock_tx, "vsock_rx": vsock_rx, "vsock_connect": vsock_connect,
    "virtio_net_tx": virtio_net_tx, "virtio_fs": fs_seeds, "virtio_fs_ro": fs_seeds, "mmio": mmio, "api_line": api_line,
    "agent_requests": agent_requests, "agent_replies": agent_replies, "agent_client": agent_client,
}[TARGET]()
