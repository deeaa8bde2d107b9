#!/usr/bin/env python3
"""Boot benchmark: hull-vmm against QEMU microvm, side by side in the same environment.

Each round starts every VMM once (alternating which goes first) with the same kernel,
initramfs, vCPUs and memory, and measures the wall time from starting the process to
- `--until userspace`: the first line the guest's userspace prints on the serial console; at
  that moment the VMM's own memory is read from /proc/PID/smaps, guest RAM mapping left out;
- `--until agent`: hull-agent's first answer to a health call (hello + health over vsock:
  hull-vmm's hybrid vsock Unix socket, QEMU's vhost-vsock through AF_VSOCK).
Prints medians and the ratio; exits non-zero if any VMM fails to get there.
"""
import argparse, json, os, re, select, shutil, socket, statistics, struct, subprocess, sys, tempfile, time

MARKER = b"HULL-BENCH-USERSPACE"


def own_memory_kib(pid, guest_mib):
    """(rss, pss) in KiB of the process, excluding the guest RAM mapping."""
    mappings = []  # [size, rss, pss] per mapping
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            key, _, rest = line.partition(" ")
            if re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", key):
                mappings.append([0, 0, 0])
            elif key in ("Size:", "Rss:", "Pss:") and mappings:
                mappings[-1][("Size:", "Rss:", "Pss:").index(key)] = int(rest.split()[0])
    guest_kib = guest_mib * 1024
    # Guest RAM is one anonymous mapping of the guest's size (QEMU may add up to 2 MiB for its
    # own alignment).
    own = [m for m in mappings if not guest_kib <= m[0] <= guest_kib + 2048]
    return sum(m[1] for m in own), sum(m[2] for m in own)


def boot_once(name, argv, guest_mib, timeout):
    start = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    buf = b""
    try:
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                raise RuntimeError(f"{name}: no userspace output within {timeout}s; console:\n{buf.decode(errors='replace')[-2000:]}")
            r, _, _ = select.select([p.stdout], [], [], left)
            if not r:
                continue
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:
                raise RuntimeError(f"{name}: exited ({p.wait()}) before userspace; console:\n{buf.decode(errors='replace')[-2000:]}")
            buf += chunk
            if MARKER in buf:
                elapsed = time.monotonic() - start
                mem = own_memory_kib(p.pid, guest_mib)
                return elapsed, mem
    finally:
        p.kill()
        p.wait()


AGENT_PORT = 1024


def frame(obj):
    body = json.dumps(obj).encode()
    return struct.pack(">I", len(body)) + body


def read_frame(sock):
    def exact(n):
        buf = b""
        while len(buf) < n:
            chunk = sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("agent closed the connection")
            buf += chunk
        return buf
    (n,) = struct.unpack(">I", exact(4))
    return json.loads(exact(n))


def agent_health(sock):
    """Hello (control connection) then one health call, as hull-agent-protocol v1 defines them."""
    sock.sendall(frame({"version": 1, "connection": {"kind": "control"}}))
    reply = read_frame(sock)
    if "Ok" not in reply.get("result", {}):
        raise RuntimeError(f"agent refused the hello: {reply}")
    sock.sendall(frame({"id": 1, "call": {"type": "health"}}))
    resp = read_frame(sock)
    if resp.get("id") != 1 or resp.get("result", {}).get("Ok", {}).get("type") != "health":
        raise RuntimeError(f"unexpected health reply: {resp}")


def connect_hybrid(uds):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(uds)
    s.sendall(f"CONNECT {AGENT_PORT}\n".encode())
    line = b""
    while not line.endswith(b"\n"):
        c = s.recv(1)
        if not c:
            raise ConnectionError("hybrid vsock: closed before OK (guest not listening yet)")
        line += c
    if not line.startswith(b"OK "):
        raise ConnectionError(f"hybrid vsock: {line!r}")
    return s


def connect_vsock(cid):
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect((cid, AGENT_PORT))
    return s


def agent_ready_once(name, argv, connect, timeout, console):
    start = time.monotonic()
    with open(console, "wb") as out:
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        last = None
        while time.monotonic() - start < timeout:
            if p.poll() is not None:
                break
            try:
                s = connect()
            except (OSError, ConnectionError) as e:
                last = e
                time.sleep(0.005)
                continue
            with s:
                agent_health(s)
            return time.monotonic() - start
        tail = open(console, "rb").read().decode(errors="replace")[-2000:]
        raise RuntimeError(f"{name}: agent not ready within {timeout}s (exit {p.poll()}, last error {last}); console:\n{tail}")
    finally:
        p.kill()
        p.wait()


def bench_agent(a):
    work = tempfile.mkdtemp(prefix="hull-bench-agent.")
    uds = os.path.join(work, "v.sock")
    cid = 42
    cmdline = "console=ttyS0 reboot=k panic=-1 quiet"
    vmms = {
        "qemu-microvm": (["qemu-system-x86_64", "-M",
                          "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=on,acpi=off",
                          "-enable-kvm", "-cpu", "host", "-smp", str(a.vcpus), "-m", str(a.memory_mib),
                          "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
                          "-device", f"vhost-vsock-device,guest-cid={cid}",
                          "-kernel", a.kernel, "-initrd", a.initrd, "-append", cmdline],
                         lambda: connect_vsock(cid)),
        "hull-vmm": ([a.hull_vmm, "--kernel", a.kernel, "--initrd", a.initrd, "--cmdline", "console=ttyS0 quiet",
                      "--vcpus", str(a.vcpus), "--memory-mib", str(a.memory_mib), "--serial", "stdout",
                      "--vsock-uds", uds],
                     lambda: connect_hybrid(uds)),
    }
    names = list(vmms)
    times = {n: [] for n in names}
    for r in range(a.rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            argv, connect = vmms[n]
            t = agent_ready_once(n, argv, connect, a.timeout, os.path.join(work, f"{n}.console"))
            if os.path.exists(uds):
                os.unlink(uds)
            times[n].append(t)
            print(f"round {r + 1}: {n:13s} {t * 1000:8.0f} ms to the agent's first health answer", flush=True)
    print()
    print(f"Boot to agent ready (first health answer): {a.rounds} rounds, {a.vcpus} vCPU, {a.memory_mib} MiB, same kernel and agent initramfs")
    print(f"{'VMM':14s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s}")
    for n in names:
        ts = times[n]
        print(f"{n:14s} {statistics.median(ts) * 1000:10.0f} {min(ts) * 1000:8.0f} {max(ts) * 1000:8.0f}")
    ratio = statistics.median(times["hull-vmm"]) / statistics.median(times["qemu-microvm"])
    print(f"ratio hull-vmm / qemu-microvm (agent ready, median): {ratio:.2f}")
    shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--hull-vmm", required=True)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--memory-mib", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--timeout", type=int, default=120)
    ap.add_argument("--until", choices=["userspace", "agent"], default="userspace")
    a = ap.parse_args()
    if a.until == "agent":
        return bench_agent(a)
    cmdline = "console=ttyS0 reboot=k panic=-1 quiet"
    vmms = {
        "qemu-microvm": ["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=on,acpi=off",
                         "-enable-kvm", "-cpu", "host", "-smp", str(a.vcpus), "-m", str(a.memory_mib),
                         "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio", "-no-reboot",
                         "-kernel", a.kernel, "-initrd", a.initrd, "-append", cmdline],
        "hull-vmm": [a.hull_vmm, "--kernel", a.kernel, "--initrd", a.initrd, "--cmdline", cmdline,
                     "--vcpus", str(a.vcpus), "--memory-mib", str(a.memory_mib), "--serial", "stdout"],
    }
    names = list(vmms)
    times = {n: [] for n in names}
    mems = {n: [] for n in names}
    for r in range(a.rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t, m = boot_once(n, vmms[n], a.memory_mib, a.timeout)
            times[n].append(t)
            mems[n].append(m)
            print(f"round {r + 1}: {n:13s} {t * 1000:8.0f} ms  own RSS {m[0] / 1024:6.1f} MiB  PSS {m[1] / 1024:6.1f} MiB", flush=True)
    print()
    print(f"Boot to first userspace line: {a.rounds} rounds, {a.vcpus} vCPU, {a.memory_mib} MiB, same kernel and initramfs")
    print(f"{'VMM':14s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s} {'own RSS MiB':>12s} {'own PSS MiB':>12s}")
    for n in names:
        ts = times[n]
        rss = statistics.median(m[0] for m in mems[n]) / 1024
        pss = statistics.median(m[1] for m in mems[n]) / 1024
        print(f"{n:14s} {statistics.median(ts) * 1000:10.0f} {min(ts) * 1000:8.0f} {max(ts) * 1000:8.0f} {rss:12.1f} {pss:12.1f}")
    ratio = statistics.median(times["hull-vmm"]) / statistics.median(times["qemu-microvm"])
    print(f"ratio hull-vmm / qemu-microvm (boot time, median): {ratio:.2f}  (goal: <= 0.50)")
    mratio = statistics.median(m[0] for m in mems["hull-vmm"]) / 1024
    print(f"hull-vmm own memory (RSS, guest RAM excluded): {mratio:.1f} MiB  (goal: <= 8 MiB)")


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
