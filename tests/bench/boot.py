#!/usr/bin/env python3
"""Boot benchmark: hull-vmm against QEMU microvm, side by side in the same environment.

Both VMMs get the same kernel, initramfs, vCPUs, memory, devices and kernel command line, and
are started the way hull's runtime starts hull-vmm (`runtime/src/vmm/process.rs`): hull-vmm
with `--config vm.json`; each VMM in its own process group, stdin from /dev/null, stdout (the
guest console) to a console file, stderr to a log file. Measured is the wall time from starting
the process to
- `--until userspace`: the first line the guest's userspace prints on the serial console (seen
  in the console file through inotify); at that moment the VMM's own memory is read from
  /proc/PID/smaps, guest RAM mapping left out;
- `--until agent`: hull-agent's first answer to a health call (hello + health over vsock:
  hull-vmm's hybrid vsock Unix socket, QEMU's vhost-vsock through AF_VSOCK).

The kernel command line: hull-vmm always puts its own parameters (`reboot=k panic=-1` and the
i8042 ones, `vmm-api/src/config.rs`) and one `virtio_mmio.device=` entry per device before the
`cmdline` it is given. A probe boot of hull-vmm with `--probe-initrd` (a busybox initramfs that
prints /proc/cmdline) reads its effective command line; QEMU gets exactly that, less the
virtio_mmio entries (QEMU microvm adds its own for its devices), and a probe boot of QEMU checks
that the two agree apart from those entries. Both are printed.

Then one warm-up round (discarded) and `--rounds` measured rounds, hull-vmm first in odd rounds,
QEMU first in even ones. Prints every round, medians and the ratio; exits non-zero if a VMM
fails to get there or the command lines differ.
"""
import argparse, ctypes, json, os, re, select, shutil, signal, socket, statistics, struct, subprocess, sys, tempfile, time

MARKER = b"HULL-BENCH-USERSPACE"
CMDLINE_RE = re.compile(rb"HULL-BENCH-CMDLINE ([^\r\n]*)\r?\n")
# What hull's runtime passes as `cmdline` (`runtime/src/sandbox/mod.rs`), less its hull.hostname.
GUEST_CMDLINE = "console=ttyS0 quiet"
MMIO_PARAM = "virtio_mmio.device="
AGENT_PORT = 1024
# hull-agent-protocol's PROTOCOL_VERSION (guest-agent/protocol/src/lib.rs): the agent refuses a
# hello of any other version, naming both.
PROTOCOL_VERSION = 2
CID = 42
QEMU_MACHINE = "microvm,x-option-roms=off,rtc=off,pit=off,pic=off,isa-serial=on,acpi=off"


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


_libc = ctypes.CDLL(None, use_errno=True)
IN_MODIFY = 0x2


class Console:
    """A VMM's console file, created empty, and an inotify watch on it: waiting for output costs
    no polling (which would take CPU from the guest) and adds no polling delay."""

    def __init__(self, path):
        self.path = path
        open(path, "wb").close()
        self.ino = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.ino < 0 or _libc.inotify_add_watch(self.ino, path.encode(), IN_MODIFY) < 0:
            e = ctypes.get_errno()
            raise OSError(e, f"inotify on {path}: {os.strerror(e)}")
        self.f = open(path, "rb")
        self.buf = b""

    def wait_for(self, pred, proc, deadline, what):
        """Returns pred(console so far) as soon as it is true."""
        while True:
            self.buf += self.f.read()
            found = pred(self.buf)
            if found:
                return found
            if proc.poll() is not None:
                raise RuntimeError(f"exited ({proc.returncode}) before {what}")
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no {what} in time")
            # The timeout is only a safety net (a VMM that exits writes nothing).
            if select.select([self.ino], [], [], min(left, 0.5))[0]:
                try:
                    while os.read(self.ino, 4096):
                        pass
                except BlockingIOError:
                    pass

    def close(self):
        self.f.close()
        os.close(self.ino)


def tail(path, n=2000):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")[-n:]
    except OSError:
        return ""


class Vmm:
    """One VMM: `argv(initrd)` prepares its command (and files) for a boot with that initramfs."""

    def __init__(self, name, work, argv, devices):
        self.name, self.argv, self.devices = name, argv, devices
        self.console = os.path.join(work, f"{name}.console")
        self.log = os.path.join(work, f"{name}.log")

    def start(self, argv):
        with open(self.console, "wb") as out, open(self.log, "wb") as err:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, process_group=0)

    def failed(self, why):
        return RuntimeError(f"{self.name}: {why}; console:\n{tail(self.console)}\nlog:\n{tail(self.log)}")


def stop(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def make_vmms(a, work, vsock):
    uds = os.path.join(work, "v.sock")

    def hull_argv(initrd):
        # The VM's configuration as the runtime writes it (less its API socket and share).
        config = {"kernel": a.kernel, "initrd": initrd, "cmdline": GUEST_CMDLINE, "vcpus": a.vcpus,
                  "memory_mib": a.memory_mib, "serial": "stdout"}
        if vsock:
            config["vsock"] = {"uds_path": uds, "guest_cid": CID}
            if os.path.exists(uds):
                os.unlink(uds)
        path = os.path.join(work, "vm.json")
        with open(path, "w") as f:
            json.dump(config, f)
        return [a.hull_vmm, "--config", path]

    def qemu_argv(initrd):
        argv = ["qemu-system-x86_64", "-M", QEMU_MACHINE, "-enable-kvm", "-cpu", "host",
                "-smp", str(a.vcpus), "-m", str(a.memory_mib), "-nodefaults", "-no-user-config",
                "-display", "none", "-serial", "stdio", "-no-reboot"]
        if vsock:
            argv += ["-device", f"vhost-vsock-device,guest-cid={CID}"]
        return argv + ["-kernel", a.kernel, "-initrd", initrd, "-append", qemu.append]

    hull = Vmm("hull-vmm", work, hull_argv, ["virtio-vsock (hybrid, Unix socket)"] if vsock else [])
    qemu = Vmm("qemu-microvm", work, qemu_argv, ["vhost-vsock"] if vsock else [])
    hull.connect = lambda: connect_hybrid(uds)
    qemu.connect = lambda: connect_vsock(CID)
    qemu.append = None  # set from hull-vmm's effective command line
    return hull, qemu


def probe_cmdline(vmm, initrd, timeout):
    """The guest's /proc/cmdline, printed by the probe initramfs."""
    argv = vmm.argv(initrd)
    console = Console(vmm.console)
    p = vmm.start(argv)
    try:
        m = console.wait_for(CMDLINE_RE.search, p, time.monotonic() + timeout, "/proc/cmdline from the probe initramfs")
        return m.group(1).decode()
    except RuntimeError as e:
        raise vmm.failed(str(e))
    finally:
        stop(p)
        console.close()


def split_mmio(cmdline):
    words = cmdline.split()
    return [w for w in words if not w.startswith(MMIO_PARAM)], [w for w in words if w.startswith(MMIO_PARAM)]


def same_cmdline(hull, qemu, a):
    hull_line = probe_cmdline(hull, a.probe_initrd, a.timeout)
    common, hull_mmio = split_mmio(hull_line)
    qemu.append = " ".join(common)
    qemu_line = probe_cmdline(qemu, a.probe_initrd, a.timeout)
    qemu_common, qemu_mmio = split_mmio(qemu_line)
    print("Kernel command line, as each guest's /proc/cmdline shows it (probe boot, busybox initramfs, same VMM configuration):")
    print(f"  hull-vmm:     {hull_line}")
    print(f"  qemu-microvm: {qemu_line}")
    if qemu_common != common or len(hull_mmio) != len(qemu_mmio):
        raise RuntimeError("the two VMMs boot with different kernel command lines (see above)")
    if hull_mmio:
        devs = ", ".join(f"{v.name} {' + '.join(v.devices)}" for v in (hull, qemu))
        print(f"  identical but for the virtio_mmio.device= entries, where each VMM places its own device ({devs}); "
              f"hull-vmm puts them before the given command line, QEMU microvm after it")
    else:
        print("  identical (no virtio devices)")
    print(flush=True)


def connect_hybrid(uds):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
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
    except BaseException:
        s.close()
        raise


def connect_vsock(cid):
    s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    try:
        s.settimeout(5)
        s.connect((cid, AGENT_PORT))
        return s
    except BaseException:
        s.close()
        raise


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
    """Hello (control connection) then one health call, as hull-agent-protocol defines them."""
    sock.sendall(frame({"version": PROTOCOL_VERSION, "connection": {"kind": "control"}}))
    reply = read_frame(sock)
    if "Ok" not in reply.get("result", {}):
        raise RuntimeError(f"agent refused the hello: {reply}")
    sock.sendall(frame({"id": 1, "call": {"type": "health"}}))
    resp = read_frame(sock)
    if resp.get("id") != 1 or resp.get("result", {}).get("Ok", {}).get("type") != "health":
        raise RuntimeError(f"unexpected health reply: {resp}")


def boot_userspace(vmm, a):
    """(seconds to the marker line, (own rss, own pss) KiB at that moment)."""
    argv = vmm.argv(a.initrd)
    console = Console(vmm.console)
    start = time.monotonic()
    p = vmm.start(argv)
    try:
        console.wait_for(lambda b: MARKER in b, p, start + a.timeout, "userspace output")
        elapsed = time.monotonic() - start
        return elapsed, own_memory_kib(p.pid, a.memory_mib)
    except RuntimeError as e:
        raise vmm.failed(str(e))
    finally:
        stop(p)
        console.close()


def boot_agent(vmm, a):
    """Seconds to the agent's first health answer."""
    argv = vmm.argv(a.initrd)
    start = time.monotonic()
    p = vmm.start(argv)
    try:
        last = None
        while time.monotonic() - start < a.timeout and p.poll() is None:
            try:
                s = vmm.connect()
            except (OSError, ConnectionError) as e:
                last = e
                time.sleep(0.005)
                continue
            with s:
                agent_health(s)
            return time.monotonic() - start
        raise vmm.failed(f"agent not ready within {a.timeout}s (exit {p.poll()}, last error {last})")
    finally:
        stop(p)


def rounds(a, hull, qemu, measure, show):
    """A warm-up round, then a.rounds rounds alternating the order; {name: [result]}."""
    results = {hull.name: [], qemu.name: []}
    for r in range(a.rounds + 1):
        # Round 0 is the warm-up; round 1 starts with hull-vmm, round 2 with QEMU, ...
        order = (qemu, hull) if r > 0 and r % 2 == 0 else (hull, qemu)
        label = "warm-up" if r == 0 else f"round {r}"
        for v in order:
            res = measure(v, a)
            print(f"{label:8s} {v.name:13s} {show(res)}{'  (discarded)' if r == 0 else ''}", flush=True)
            if r > 0:
                results[v.name].append(res)
    print()
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kernel", required=True)
    ap.add_argument("--initrd", required=True)
    ap.add_argument("--probe-initrd", help="busybox initramfs that prints /proc/cmdline (default: --initrd)")
    ap.add_argument("--hull-vmm", required=True)
    ap.add_argument("--vcpus", type=int, default=1)
    ap.add_argument("--memory-mib", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--timeout", type=int, default=120)
    ap.add_argument("--until", choices=["userspace", "agent"], default="userspace")
    a = ap.parse_args()
    a.probe_initrd = a.probe_initrd or a.initrd
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    # tmpfs where there is one, as the runtime's /run: inotify sees every write there.
    work = tempfile.mkdtemp(prefix="hull-bench-boot.", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        hull, qemu = make_vmms(a, work, vsock=a.until == "agent")
        same_cmdline(hull, qemu, a)
        setup = f"{a.rounds} rounds after a discarded warm-up, {a.vcpus} vCPU, {a.memory_mib} MiB, same kernel, initramfs and command line"
        if a.until == "agent":
            times = rounds(a, hull, qemu, boot_agent, lambda t: f"{t * 1000:8.0f} ms to the agent's first health answer")
            print(f"Boot to agent ready (first health answer): {setup}")
            print(f"{'VMM':14s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s}")
            for n, ts in times.items():
                print(f"{n:14s} {statistics.median(ts) * 1000:10.0f} {min(ts) * 1000:8.0f} {max(ts) * 1000:8.0f}")
            ratio = statistics.median(times[hull.name]) / statistics.median(times[qemu.name])
            print(f"ratio hull-vmm / qemu-microvm (agent ready, median): {ratio:.2f}")
            return
        res = rounds(a, hull, qemu, boot_userspace,
                     lambda r: f"{r[0] * 1000:8.0f} ms  own RSS {r[1][0] / 1024:6.1f} MiB  PSS {r[1][1] / 1024:6.1f} MiB")
        print(f"Boot to first userspace line: {setup}")
        print(f"{'VMM':14s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s} {'own RSS MiB':>12s} {'own PSS MiB':>12s}")
        for n, rs in res.items():
            ts = [r[0] for r in rs]
            rss = statistics.median(r[1][0] for r in rs) / 1024
            pss = statistics.median(r[1][1] for r in rs) / 1024
            print(f"{n:14s} {statistics.median(ts) * 1000:10.0f} {min(ts) * 1000:8.0f} {max(ts) * 1000:8.0f} {rss:12.1f} {pss:12.1f}")
        ratio = statistics.median(r[0] for r in res[hull.name]) / statistics.median(r[0] for r in res[qemu.name])
        print(f"ratio hull-vmm / qemu-microvm (boot time, median): {ratio:.2f}  (goal: <= 0.50)")
        mem = statistics.median(r[1][0] for r in res[hull.name]) / 1024
        print(f"hull-vmm own memory (RSS, guest RAM excluded): {mem:.1f} MiB  (goal: <= 8 MiB)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        print(f"bench: {e}", file=sys.stderr)
        sys.exit(1)
