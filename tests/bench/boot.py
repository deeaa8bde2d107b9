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

The kernel command line: hull-vmm always puts its own parameters (`reboot=k panic=-1`, the
pvpanic port and the i8042 ones, `vmm-api/src/config.rs`) and one `virtio_mmio.device=` entry per device before the
`cmdline` it is given. A probe boot of hull-vmm with `--probe-initrd` (a busybox initramfs that
prints /proc/cmdline) reads its effective command line; QEMU gets exactly that, less the
virtio_mmio entries (QEMU microvm adds its own for its devices), and a probe boot of QEMU checks
that the two agree apart from those entries. Both are printed.

Then one warm-up round (discarded) and `--rounds` measured rounds, hull-vmm first in odd rounds,
QEMU first in even ones. Prints every round, medians and the ratio; exits non-zero if a VMM
fails to get there or the command lines differ.
"""
import argparse, ctypes, datetime, json, os, re, select, shutil, signal, socket, statistics, struct, subprocess, sys, tempfile, time

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


def smaps(pid):
    """The mappings of a process: [{lo, hi, path, Size, Rss, Pss}] (KiB), in address order."""
    maps = []
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if head and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                maps.append({"lo": lo, "hi": hi, "path": " ".join(head[5:]), "Size": 0, "Rss": 0, "Pss": 0})
            elif head and head[0].rstrip(":") in ("Size", "Rss", "Pss") and maps:
                maps[-1][head[0].rstrip(":")] = int(head[1])
    return maps


def guest_ram(maps, guest_mib):
    """Indices of the mappings that are guest RAM: one anonymous mapping of the guest's size
    (QEMU may add up to 2 MiB for its own alignment), or hull-vmm's private mapping of a
    template's memory file (a restored VM)."""
    guest_kib = guest_mib * 1024
    return {i for i, m in enumerate(maps)
            if (not m["path"] or m["path"].endswith("/memory")) and guest_kib <= m["Size"] <= guest_kib + 2048}


def own_memory_kib(pid, guest_mib):
    """(rss, pss) in KiB of the process, excluding guest RAM."""
    maps = smaps(pid)
    ram = guest_ram(maps, guest_mib)
    own = [m for i, m in enumerate(maps) if i not in ram]
    return sum(m["Rss"] for m in own), sum(m["Pss"] for m in own)


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
        # hull-vmm's own timeline (build phases, first guest entry) at debug level, nothing else.
        env = dict(os.environ, HULL_LOG="warn,hull_vmm::builder=debug,hull_vmm::vmm=debug,hull_vmm::vstate::vcpu=debug")
        with open(self.console, "wb") as out, open(self.log, "wb") as err:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, process_group=0, env=env)

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
        config = {"kernel": a.kernel, "initrd": initrd, "cmdline": GUEST_CMDLINE + hull.extra_cmdline, "vcpus": a.vcpus,
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
        # The same pvpanic device hull-vmm has, where the shared command line says it is.
        argv += ["-device", "pvpanic,ioport=0x505"]
        if vsock:
            argv += ["-device", f"vhost-vsock-device,guest-cid={CID}"]
        return argv + ["-kernel", a.kernel, "-initrd", initrd, "-append", qemu.append]

    hull = Vmm("hull-vmm", work, hull_argv, ["virtio-vsock (hybrid, Unix socket)"] if vsock else [])
    hull.extra_cmdline = ""
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


def agent_call(sock, id, call, kind):
    sock.sendall(frame({"id": id, "call": {"type": call}}))
    resp = read_frame(sock)
    ok = resp.get("result", {}).get("Ok", {})
    if resp.get("id") != id or ok.get("type") != kind:
        raise RuntimeError(f"unexpected {call} reply: {resp}")
    return ok


def agent_health(sock):
    """Hello (control connection), one health call (what is timed), then a stats call for the
    guest's clock. Returns (guest uptime ms when the agent started, guest uptime ms when it
    answered stats): the agent's health uptime counts from its own start, stats' from the
    guest kernel's."""
    sock.sendall(frame({"version": PROTOCOL_VERSION, "connection": {"kind": "control"}}))
    reply = read_frame(sock)
    if "Ok" not in reply.get("result", {}):
        raise RuntimeError(f"agent refused the hello: {reply}")
    agent_ms = agent_call(sock, 1, "health", "health")["uptime_ms"]
    guest_ms = agent_call(sock, 2, "stats", "stats")["uptime_ms"]
    return guest_ms - agent_ms, guest_ms


def guest_ram_kib(pid, guest_mib):
    """KiB of guest RAM the VMM process has touched (Rss of its guest RAM mappings)."""
    maps = smaps(pid)
    return sum(maps[i]["Rss"] for i in guest_ram(maps, guest_mib))


UNITS = {"s": 1e3, "ms": 1.0, "µs": 1e-3, "us": 1e-3, "ns": 1e-6}


def duration_ms(text):
    m = re.fullmatch(r"([0-9.]+)([a-zµ]+)", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m and m.group(2) in UNITS else None


def hull_phases(log, started_wall):
    """hull-vmm's own timeline from its debug log: [(phase, ms since hull-vmm began building)],
    led by how long the process took from being started (`started_wall`, time.time()) to begin
    building (from the log lines' wall-clock timestamps)."""
    phases = []
    try:
        text = open(log, encoding="utf-8", errors="replace").read()
    except OSError:
        return phases
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    first = re.search(r"^(\S+)\s+DEBUG .*build: config validation done at (\S+)", text, re.M)
    if first:
        try:
            ts = datetime.datetime.fromisoformat(first.group(1).replace("Z", "+00:00")).timestamp()
            since = duration_ms(first.group(2))
            if since is not None:
                phases.append(("(before: process started to building the VM)", -((ts - started_wall) * 1000 - since)))
        except ValueError:
            pass
    for line in text.splitlines():
        for pat, name in ((r"build: (.*?) done at (\S+)", None), (r"VM started (\S+) after", "vCPU threads started"),
                          (r"vCPU 0: first guest entry at (\S+)", "vCPU 0 first guest entry"),
                          (r"first port write \(\S+\) at (\S+)", "guest's first port write (its serial console set up, ~0.1 s into its clock)")):
            m = re.search(pat, line)
            if m:
                ms = duration_ms(m.group(m.lastindex))
                if ms is not None:
                    phases.append((name or m.group(1), ms))
    return phases


def make_template(a, work):
    """A template as the runtime makes one (runtime/src/template.rs): hull-vmm booted with
    `snapshot_to`, its agent answers, the API's `snapshot`; returns the snapshot directory."""
    snap = os.path.join(work, "template")
    os.makedirs(snap)
    uds, api = os.path.join(work, "t.sock"), os.path.join(work, "t.api")
    config = {"kernel": a.kernel, "initrd": a.initrd, "cmdline": GUEST_CMDLINE, "vcpus": a.vcpus,
              "memory_mib": a.memory_mib, "serial": "stdout", "vsock": {"uds_path": uds, "guest_cid": CID},
              "api_socket": api, "snapshot_to": snap}
    path = os.path.join(work, "template.json")
    with open(path, "w") as f:
        json.dump(config, f)
    t = Vmm("template", work, None, [])
    p = t.start([a.hull_vmm, "--config", path])
    try:
        deadline = time.monotonic() + a.timeout
        while True:
            try:
                s = connect_hybrid(uds)
                break
            except (OSError, ConnectionError):
                if time.monotonic() > deadline or p.poll() is not None:
                    raise t.failed("the template's agent did not answer")
                time.sleep(0.05)
        with s:
            agent_health(s)
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.settimeout(a.timeout)
        c.connect(api)
        c.sendall(b'{"action":"snapshot"}\n')
        reply = c.makefile().readline()
        c.close()
        if '"ok":true' not in reply:
            raise t.failed(f"snapshot: {reply}")
        if p.wait(timeout=a.timeout) != 0:
            raise t.failed(f"hull-vmm exited {p.returncode} after the snapshot")
    finally:
        stop(p)
    return snap


def restored_vmm(a, work, snap):
    """hull-vmm starting from the template `snap` (`restore_from`), with a socket of its own."""
    uds = os.path.join(work, "r.sock")

    def argv(initrd):
        config = {"kernel": a.kernel, "initrd": initrd, "cmdline": GUEST_CMDLINE, "vcpus": a.vcpus,
                  "memory_mib": a.memory_mib, "serial": "stdout", "vsock": {"uds_path": uds, "guest_cid": CID},
                  "restore_from": snap}
        if os.path.exists(uds):
            os.unlink(uds)
        path = os.path.join(work, "restore.json")
        with open(path, "w") as f:
            json.dump(config, f)
        return [a.hull_vmm, "--config", path]

    v = Vmm("hull-vmm-restore", work, argv, ["virtio-vsock (hybrid, Unix socket)"])
    v.connect = lambda: connect_hybrid(uds)
    return v


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
    """Seconds to the agent's first health answer, with the guest's clock at the agent's start
    and at its answer (ms), the guest RAM touched by then (KiB) and, for hull-vmm, its own
    phases (from its debug log)."""
    argv = vmm.argv(a.initrd)
    start = time.monotonic()
    started_wall = time.time()
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
                guest_init, guest_ready = agent_health(s)
                elapsed = time.monotonic() - start
            touched = guest_ram_kib(p.pid, a.memory_mib)
            return {"wall": elapsed, "guest_init": guest_init, "guest_ready": guest_ready,
                    "guest_ram": touched, "phases": hull_phases(vmm.log, started_wall) if vmm.name == "hull-vmm" else []}
        raise vmm.failed(f"agent not ready within {a.timeout}s (exit {p.poll()}, last error {last})")
    finally:
        stop(p)


IC_RE = re.compile(rb"HULL-BENCH-IC (\d+) (\S+)")
GAP_RE = re.compile(rb"HULL-BENCH-GAP (\d+) ([^|\r\n]*)\|([^\r\n]*)")
UPTIME_RE = re.compile(rb"HULL-BENCH-UPTIME ([0-9.]+)")
END = b"HULL-BENCH-END"


class Symbols:
    """Names for kernel text addresses (without CONFIG_KALLSYMS the guest prints %pS as a bare
    address), from the vmlinux's symbol table."""

    def __init__(self, vmlinux):
        out = subprocess.run(["nm", "-n", vmlinux], capture_output=True, text=True).stdout
        self.syms = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "tTwW":
                self.syms.append((int(parts[0], 16), parts[2]))

    def name(self, text):
        m = re.fullmatch(r"(?:0x)?([0-9a-f]{8,16})", text)
        if not m or not self.syms:
            return re.sub(r"\+0x[0-9a-f]+/0x[0-9a-f]+$", "", text)
        addr = int(m.group(1), 16)
        lo, hi = 0, len(self.syms)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.syms[mid][0] <= addr:
                lo = mid
            else:
                hi = mid
        return self.syms[lo][1] if self.syms[lo][0] <= addr else text


def boot_initcalls(vmm, a):
    """A bench-only boot with `initcall_debug`: the guest's clock at init (s), its ten slowest
    initcalls [(usecs, name)] and ten largest gaps in its log [(usecs, before, after)], which the
    initramfs computes from the kernel's log buffer (dmesg), so that only those lines cross the
    slow serial console."""
    argv = vmm.argv(a.initcalls_initrd)
    console = Console(vmm.console)
    p = vmm.start(argv)
    try:
        console.wait_for(lambda b: END in b, p, time.monotonic() + a.timeout, "the initcall report")
    except RuntimeError as e:
        raise vmm.failed(str(e))
    finally:
        stop(p)
        console.close()
    out = console.buf

    def named(raw):
        text = raw.decode(errors="replace").strip()
        return re.sub(r"0x[0-9a-f]{16}|\b[a-z_][a-z0-9_.]*\+0x[0-9a-f]+/0x[0-9a-f]+", lambda m: a.symbols.name(m.group(0)), text)
    up = UPTIME_RE.search(out)
    return {"uptime": float(up.group(1)) if up else float("nan"),
            "initcalls": [(int(m.group(1)), a.symbols.name(m.group(2).decode())) for m in IC_RE.finditer(out)],
            "gaps": [(int(m.group(1)), named(m.group(2)), named(m.group(3))) for m in GAP_RE.finditer(out)]}


def report_initcalls(a, hull, qemu):
    res = rounds(a, hull, qemu, boot_initcalls, lambda r: f"guest clock at init {r['uptime'] * 1000:6.0f} ms")
    for v in (hull, qemu):
        rs = res[v.name]
        ups = [r["uptime"] for r in rs]
        print(f"{v.name}: guest clock at init, median {statistics.median(ups) * 1000:.0f} ms "
              f"(min {min(ups) * 1000:.0f}, max {max(ups) * 1000:.0f}) with initcall_debug")
        slow = max(rs, key=lambda r: r["uptime"])
        print(f"  its slowest boot ({slow['uptime'] * 1000:.0f} ms): ten slowest initcalls")
        for us, name in slow["initcalls"]:
            print(f"    {us / 1000:8.1f} ms  {name}")
        print("  ten largest gaps between consecutive lines of its kernel log")
        for us, before, after in slow["gaps"]:
            print(f"    {us / 1000:8.1f} ms  after \"{before[:70]}\"  before \"{after[:70]}\"")
        # The same initcalls, median over every boot, show what is steady rather than sporadic.
        per = {}
        for r in rs:
            for us, name in r["initcalls"]:
                per.setdefault(name, []).append(us)
        steady = sorted(((statistics.median(v + [0] * (len(rs) - len(v))), n) for n, v in per.items()), reverse=True)[:10]
        print(f"  median over its {len(rs)} boots (0 where an initcall was not among a boot's ten slowest)")
        for us, name in steady:
            print(f"    {us / 1000:8.1f} ms  {name}")
        print()


def rounds(a, hull, qemu, measure, show, more=()):
    """A warm-up round, then a.rounds rounds alternating the order; {name: [result]}."""
    vmms = (hull, *more, qemu)
    results = {v.name: [] for v in vmms}
    for r in range(a.rounds + 1):
        # Round 0 is the warm-up; round 1 starts with hull-vmm, round 2 with QEMU, ...
        order = tuple(reversed(vmms)) if r > 0 and r % 2 == 0 else vmms
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
    ap.add_argument("--until", choices=["userspace", "agent", "initcalls"], default="userspace")
    ap.add_argument("--initcalls-initrd", help="busybox initramfs that reports the slowest initcalls and log gaps (--until initcalls)")
    a = ap.parse_args()
    a.probe_initrd = a.probe_initrd or a.initrd
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    # tmpfs where there is one, as the runtime's /run: inotify sees every write there.
    work = tempfile.mkdtemp(prefix="hull-bench-boot.", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        hull, qemu = make_vmms(a, work, vsock=a.until in ("agent", "initcalls"))
        same_cmdline(hull, qemu, a)
        if a.until == "initcalls":
            if not a.initcalls_initrd:
                ap.error("--until initcalls needs --initcalls-initrd")
            # Both guests get initcall_debug on the same command line; quiet keeps those lines in
            # the log buffer, off the console.
            hull.extra_cmdline = " initcall_debug"
            qemu.append += " initcall_debug"
            a.symbols = Symbols(a.kernel)
            print(f"Bench-only boots with initcall_debug ({a.rounds} rounds after a warm-up, {a.vcpus} vCPU, {a.memory_mib} MiB)")
            report_initcalls(a, hull, qemu)
            return
        setup = f"{a.rounds} rounds after a discarded warm-up, {a.vcpus} vCPU, {a.memory_mib} MiB, same kernel, initramfs and command line"
        if a.until == "agent":
            restored = restored_vmm(a, work, make_template(a, work))
            res = rounds(a, hull, qemu, boot_agent,
                         lambda r: f"{r['wall'] * 1000:8.0f} ms to the agent's first health answer; guest clock: "
                                   f"agent started at {r['guest_init']:5d} ms, answered at {r['guest_ready']:5d} ms; "
                                   f"guest RAM touched {r['guest_ram'] / 1024:5.1f} MiB"
                                   + (f"; first guest entry at {dict(r['phases']).get('vCPU 0 first guest entry', float('nan')):6.0f} ms"
                                      if r["phases"] else ""), more=(restored,))
            print(f"Boot to agent ready (first health answer): {setup}")
            print(f"{'VMM':14s} {'median ms':>10s} {'min ms':>8s} {'max ms':>8s} {'guest: init ms':>15s} {'agent ready ms':>15s} {'guest RAM MiB':>14s}")
            med = {}
            for n, rs in res.items():
                ts = [r["wall"] for r in rs]
                med[n] = {k: statistics.median(r[k] for r in rs) for k in ("wall", "guest_init", "guest_ready", "guest_ram")}
                print(f"{n:14s} {med[n]['wall'] * 1000:10.0f} {min(ts) * 1000:8.0f} {max(ts) * 1000:8.0f} "
                      f"{med[n]['guest_init']:15.0f} {med[n]['guest_ready']:15.0f} {med[n]['guest_ram'] / 1024:14.1f}")
            h, q = med[hull.name], med[qemu.name]
            print(f"ratio hull-vmm / qemu-microvm (agent ready, median): {h['wall'] / q['wall']:.2f}")
            rs = med[restored.name]
            print(f"ratio hull-vmm restored from a template / hull-vmm cold boot (agent ready, median): "
                  f"{rs['wall'] / h['wall']:.2f}  (goal: <= 0.20)")
            print(f"ratio hull-vmm / qemu-microvm (guest clock at agent start, median): {h['guest_init'] / q['guest_init']:.2f}"
                  "  (goal: <= 1.00: the guest boots at least as fast under hull-vmm)")
            print(f"guest RAM touched by an idle sandbox (agent ready, no container, {a.memory_mib} MiB VM): "
                  f"hull-vmm {h['guest_ram'] / 1024:.1f} MiB, qemu-microvm {q['guest_ram'] / 1024:.1f} MiB")
            print()
            print("hull-vmm timeline (median ms since hull-vmm began building the VM; its debug log):")
            names = [p for p, _ in res[hull.name][0]["phases"]]
            for name in names:
                vals = [dict(r["phases"]).get(name) for r in res[hull.name]]
                vals = [v for v in vals if v is not None]
                if vals:
                    print(f"  {statistics.median(vals):8.1f}  {name}")
            print(f"  {h['guest_init']:8.0f}  guest clock when hull-agent (init) started (guest's own uptime)")
            print(f"  {h['guest_ready']:8.0f}  guest clock when hull-agent answered")
            print(f"  {h['wall'] * 1000:8.0f}  host: agent's first health answer, from process start")
            # The same in host time: the guest's clock loses time while it boots in the emulated
            # host (docs/performance.md), so the host's view of the guest's part is printed too.
            spans = []
            for r in res[hull.name]:
                ph = dict(r["phases"])
                before = -ph.get("(before: process started to building the VM)", float("nan"))
                entry = ph.get("vCPU 0 first guest entry", float("nan"))
                spans.append((before, entry, r["wall"] * 1000 - before - entry, r["guest_ready"]))
            before, entry, guest_host, guest_clock = (statistics.median(x[i] for x in spans) for i in range(4))
            print(f"hull-vmm, host time (median): process start {before:.0f} ms, VM set-up to the first guest entry "
                  f"{entry:.0f} ms, guest from first entry to the agent's answer {guest_host:.0f} ms "
                  f"(the guest's own clock counted {guest_clock:.0f} ms of it)")
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
