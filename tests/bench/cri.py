#!/usr/bin/env python3
"""CRI pod start: a Kubernetes pod with one container, runtime handler `hull` against `runc`,
on one containerd, driven over its CRI socket as the kubelet drives it; and the host memory of
one running pod of each.

containerd is started as the CRI VM test (tests/tests/cri_vm.rs) starts it: its own root on a
tmpfs (overlay snapshots cannot sit on the emulated host's overlay root), its own sockets, the
CRI plugin with sandbox_image = the local pause image (tests/images/build.sh pause),
restrict_oom_score_adj, an empty CNI conf dir (host-network pods only), the runtime `runc`
(io.containerd.runc.v2) and docs/containerd.md's `hull` runtime (io.containerd.hull.v2);
containerd's environment has build/bin first on PATH (containerd-shim-hull-v2), HULL_CONFIG
(the built kernel, initramfs and hull-vmm; 1 vCPU, 256 MiB) and HULL_SHIM_ROOT. The images
(pause, busybox) are `ctr -n k8s.io images import`ed.

The CRI client is this process: the CRI v1 stubs that tests/cri/hullcri.py uses (run with the
python of scripts/install-cri-client.sh), one gRPC channel for the whole bench, so neither
Python's nor grpc's start-up is in what is measured.

One pod per run: a host-network pod (its log directory made first, as the kubelet makes it),
one container of hull-test/busybox running `echo ready; exec sleep 1000`. Timed from the start
of RunPodSandbox (then CreateContainer, StartContainer) until the container's first line,
"ready" on stdout, is in its CRI log file (log_directory/c.log), seen through inotify by a
thread watching the log directory (no polling); the three calls' own durations are shown too.
Then, in measured rounds, --settle seconds later, the pod's host memory (PSS,
/proc/PID/smaps_rollup; pss.py):
- the shim server(s) of the pod (containerd-shim-hull-v2 / containerd-shim-runc-v2 started for
  this containerd, not a `start` or `delete` invocation);
- hull: the pod's hull-vmm (found by the sandbox's state.json below HULL_SHIM_ROOT): total,
  guest RAM (pss.py's guest_ram), the rest;
- any other process below the shim (runc: the pause and the container processes).
Then StopPodSandbox + RemovePodSandbox (not timed) and nothing may be left: no pod or container
in CRI, no shim process of this containerd, no hull-vmm, no mount below containerd's root or
the shim root, no sandbox state. The bench fails otherwise, naming what is left.

One warm-up round (discarded) and --rounds measured rounds, hull first in odd rounds, runc first
in even ones. Prints every round, per-handler median/min/max, the ratio hull / runc, and the
memory medians.
"""
import argparse, ctypes, glob, json, os, select, shutil, signal, statistics, subprocess, sys, tempfile, threading, \
    time

here = os.path.dirname(os.path.abspath(__file__))
top = os.path.dirname(os.path.dirname(here))
sys.path.insert(0, here)
sys.path.insert(0, os.path.join(top, "tests", "cri"))
from oci import BenchError, check_tools, run_main, write_hull_config  # noqa: E402
from pss import pss_kib, vmm_memory  # noqa: E402
import hullcri  # noqa: E402  (exits naming scripts/install-cri-client.sh when grpc or the stubs are missing)

cri, grpc, json_format = hullcri.cri, hullcri.grpc, hullcri.json_format
HANDLERS = ("hull", "runc")
SHIM = {"hull": "containerd-shim-hull-v2", "runc": "containerd-shim-runc-v2",
        "hull-userspace": "containerd-shim-hull-v2"}
PAUSE = "docker.io/hull-test/pause:latest"
IMAGE = "docker.io/hull-test/busybox:latest"
LINE = "ready"
CALL_TIMEOUT = 600
HULL_RUNTIME = """
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hull]
  runtime_type = "io.containerd.hull.v2"
  pod_annotations = ["io.hull.vm.*"]
"""
# A second hull handler for benches that compare virtio-net backends (cri_net.py): hull with
# `net_backend = "userspace"` (hull-vmm's own device, not the host's vhost-net). containerd runs
# a runtime_type's shim by name from its PATH: containerd-shim-hulluserspace-v2 is a wrapper
# (written by Bench.start) that runs hull's shim with a config of its own.
USERSPACE_RUNTIME = """
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.hull-userspace]
  runtime_type = "io.containerd.hulluserspace.v2"
  pod_annotations = ["io.hull.vm.*"]
"""

_libc = ctypes.CDLL(None, use_errno=True)
IN_MODIFY, IN_CREATE = 0x2, 0x100


# ---- processes


def processes():
    """{pid: (ppid, argv)} of every live (not zombie) process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
        except OSError:
            continue
        if rest[0] not in ("Z", "X"):
            out[int(d)] = (int(rest[1]), argv)
    return out


def prog(argv):
    return os.path.basename(argv[0]) if argv else ""


def shims(procs, address, handler=None, servers_only=False):
    """Pids of the shim processes started by our containerd (`-address` is its socket)."""
    names = [SHIM[handler]] if handler else list(SHIM.values())
    found = []
    for pid, (_, argv) in procs.items():
        if prog(argv) in names and any(a == "-address" and b == address for a, b in zip(argv, argv[1:])):
            if servers_only and ("start" in argv or "delete" in argv):
                continue
            found.append(pid)
    return sorted(found)


def vmms(procs, below):
    """Pids of hull-vmm processes with an argument below directory `below`."""
    below = os.path.join(below, "")
    return sorted(p for p, (_, argv) in procs.items()
                  if prog(argv) == "hull-vmm" and any(a.startswith(below) for a in argv[1:]))


def descendants(procs, roots):
    kids = {}
    for pid, (ppid, _) in procs.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], list(roots)
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def mounts_below(d):
    d = os.path.join(d, "")
    with open("/proc/self/mountinfo") as f:
        return [m for m in (line.split(" ")[4] for line in f) if m.startswith(d)]


# ---- containerd


class Containerd:
    """containerd with its own root (a tmpfs), state and sockets below `d`."""

    def __init__(self, d, env, extra):
        self.dir, self.root = d, os.path.join(d, "root")
        os.makedirs(self.root)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", self.root], check=True)
        self.socket = os.path.join(d, "c.sock")
        self.config = os.path.join(d, "containerd.toml")
        with open(self.config, "w") as f:
            f.write(f'version = 2\nroot = "{self.root}/lib"\nstate = "{self.root}/run"\n'
                    f'[grpc]\n  address = "{self.socket}"\n[ttrpc]\n  address = "{self.socket}.ttrpc"\n{extra}\n')
        self.log = os.path.join(d, "containerd.log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(["containerd", "--config", self.config], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"containerd did not listen on {self.socket} (exit {self.proc.returncode}):\n"
                                 f"{self.tail()}")
            time.sleep(0.1)

    def tail(self, n=40):
        try:
            with open(self.log, errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def ctr(self, *args):
        out = subprocess.run(["ctr", "-a", self.socket, "-n", "k8s.io", *args], capture_output=True, text=True)
        if out.returncode != 0:
            raise BenchError(f"ctr {' '.join(args)}: exit {out.returncode}: {out.stderr.strip()}")
        return out.stdout

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        subprocess.run(["umount", "-R", "-l", self.root], stderr=subprocess.DEVNULL)


# ---- the first output line, seen through inotify


class LogWatch(threading.Thread):
    """Waits (a thread) until `path`'s CRI log has `LINE` on stdout; `seen` is then its
    time.monotonic(). Watches the file's directory (the file appears during the calls)."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path, self.seen, self.done = path, None, threading.Event()
        self.ino = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        d = os.path.dirname(path)
        if self.ino < 0 or _libc.inotify_add_watch(self.ino, d.encode(), IN_MODIFY | IN_CREATE) < 0:
            e = ctypes.get_errno()
            raise BenchError(f"inotify on {d}: {os.strerror(e)}")

    def has_line(self):
        try:
            with open(self.path, errors="replace") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            return False
        # CRI log lines: TIMESTAMP STREAM TAG(F|P) CONTENT
        return any(p[1:] == ["stdout", "F", LINE] for p in (ln.split(" ", 3) for ln in lines))

    def run(self):
        try:
            while not self.done.is_set():
                if self.has_line():
                    self.seen = time.monotonic()
                    return
                if select.select([self.ino], [], [], 0.5)[0]:
                    try:
                        os.read(self.ino, 65536)
                    except BlockingIOError:
                        pass
        finally:
            os.close(self.ino)

    def wait(self, deadline):
        self.join(max(0, deadline - time.monotonic()))
        self.done.set()
        return self.seen


# ---- the bench


class Bench:
    def __init__(self, work):
        self.work = work
        self.ctd = self.channel = None

    def start(self, tools, build, py_env, images=("pause", "busybox")):
        """containerd with the CRI plugin, its CNI conf dir `<work>/cni` (made here if not there
        yet: a bench may have written its network config first), and `images` imported."""
        work = self.work
        self.shim_root = os.path.join(work, "shim")
        self.logs = os.path.join(work, "logs")
        os.makedirs(os.path.join(work, "cni"), exist_ok=True)
        os.makedirs(self.logs)
        hull_config = os.path.join(work, "hull.toml")
        write_hull_config(hull_config, tools)
        shim = os.path.join(build, "bin", "containerd-shim-hull-v2")
        if not os.access(shim, os.X_OK):
            raise BenchError(f"{shim} missing (make build)")
        wrappers = os.path.join(work, "shim-wrappers")
        os.makedirs(wrappers)
        userspace_config = os.path.join(work, "hull-userspace.toml")
        with open(hull_config) as f, open(userspace_config, "w") as g:
            g.write(f.read() + '\nnet_backend = "userspace"\n')
        wrapper = os.path.join(wrappers, "containerd-shim-hulluserspace-v2")
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nHULL_CONFIG={userspace_config} exec {shim} "$@"\n')
        os.chmod(wrapper, 0o755)
        extra = f"""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE}"
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{work}/cni"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{HULL_RUNTIME}{USERSPACE_RUNTIME}"""
        env = dict(py_env, PATH=f"{wrappers}:{os.path.dirname(shim)}:{py_env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
                   HULL_CONFIG=hull_config, HULL_SHIM_ROOT=self.shim_root)
        self.ctd = Containerd(os.path.join(work, "ctd"), env, extra)
        for kind in images:
            tar = os.path.join(work, f"{kind}.tar")
            out = subprocess.run([os.path.join(top, "tests", "images", "build.sh"), tar, kind],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise BenchError(f"tests/images/build.sh {kind}: {out.stderr.strip()}")
            self.ctd.ctr("images", "import", tar)
        self.channel = grpc.insecure_channel("unix://" + self.ctd.socket)
        self.rt = hullcri.RuntimeServiceStub(self.channel)
        v = self.call("Version", cri.VersionRequest())
        self.version = f"{v.runtime_name} {v.runtime_version} (CRI {v.runtime_api_version})"

    def call(self, method, request):
        try:
            return getattr(self.rt, method)(request, timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            raise BenchError(f"{method}: {e.code().name}: {e.details()}\ncontainerd's log (end):\n{self.ctd.tail()}")

    def configs(self, name, network, ctr_name, image, command):
        """Pod `name`'s log directory (made here), its PodSandboxConfig (namespace mode `network`:
        NODE or POD) and the ContainerConfig of its one container (log `<ctr_name>.log`)."""
        logdir = os.path.join(self.logs, name)
        os.makedirs(logdir)
        pod = json_format.ParseDict({
            "metadata": {"name": name, "namespace": "bench", "uid": f"{name}-uid"},
            "log_directory": logdir,
            "linux": {"security_context": {"namespace_options": {"network": network}}},
        }, cri.PodSandboxConfig())
        ctr = json_format.ParseDict({
            "metadata": {"name": ctr_name},
            "image": {"image": image},
            "command": command,
            "log_path": f"{ctr_name}.log",
        }, cri.ContainerConfig())
        return logdir, pod, ctr

    def pod(self, handler, name, settle, memory):
        """Runs one pod: {'first', 'runp', 'create', 'start'} seconds (and memory if asked)."""
        logdir, pod, ctr = self.configs(name, "NODE", "c", IMAGE, ["sh", "-c", f"echo {LINE}; exec sleep 1000"])
        watch = LogWatch(os.path.join(logdir, "c.log"))
        watch.start()
        pod_id = None
        try:
            t0 = time.monotonic()
            pod_id = self.call("RunPodSandbox", cri.RunPodSandboxRequest(config=pod, runtime_handler=handler)
                               ).pod_sandbox_id
            t1 = time.monotonic()
            cid = self.call("CreateContainer", cri.CreateContainerRequest(
                pod_sandbox_id=pod_id, config=ctr, sandbox_config=pod)).container_id
            t2 = time.monotonic()
            self.call("StartContainer", cri.StartContainerRequest(container_id=cid))
            t3 = time.monotonic()
            seen = watch.wait(t3 + CALL_TIMEOUT)
            if seen is None:
                try:
                    with open(os.path.join(logdir, "c.log"), errors="replace") as f:
                        log = f.read()[-2000:]
                except OSError as e:
                    log = str(e)
                raise BenchError(f"{handler} pod {name}: no {LINE!r} on stdout in {watch.path} "
                                 f"{CALL_TIMEOUT} s after StartContainer; the log:\n{log}")
            r = {"first": seen - t0, "runp": t1 - t0, "create": t2 - t1, "start": t3 - t2}
            if memory:
                time.sleep(settle)
                r.update(self.memory(handler, name))
        except BaseException:
            watch.done.set()
            try:
                self.teardown(handler, name, pod_id)
            except BenchError as e:
                print(f"bench: and the pod's teardown failed: {e}", file=sys.stderr)
            raise
        watch.done.set()
        self.teardown(handler, name, pod_id)
        return r

    def teardown(self, handler, name, pod_id):
        if pod_id:
            self.call("StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=pod_id))
            self.call("RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=pod_id))
        self.check_clean(f"{handler} pod {name}")

    def memory(self, handler, name):
        procs = processes()
        servers = shims(procs, self.ctd.socket, handler, servers_only=True)
        if len(servers) != 1:
            raise BenchError(f"{handler} pod {name}: {len(servers)} shim servers, expected one: "
                             f"{[(p, procs[p][1]) for p in servers]}")
        m = {"shim_pss": sum(pss_kib(p)[1] for p in servers)}
        below = [p for p in descendants(procs, servers)]
        vmm = vmms(procs, self.shim_root)
        if handler == "hull":
            if len(vmm) != 1:
                raise BenchError(f"hull pod {name}: {len(vmm)} hull-vmm, expected one: {vmm}")
            states = []
            for path in glob.glob(os.path.join(self.shim_root, "*", "*", "state.json")):
                with open(path) as f:
                    s = json.load(f)
                if s.get("vmm_pid") == vmm[0]:
                    states.append(s)
            if len(states) != 1:
                raise BenchError(f"hull pod {name}: no sandbox state.json below {self.shim_root} names hull-vmm {vmm[0]}")
            m["mib"] = states[0]["memory_mib"]
            m.update(vmm_memory(vmm[0], m["mib"]))
        elif vmm:
            raise BenchError(f"runc pod {name}: hull-vmm running: {vmm}")
        others = [p for p in below if p not in vmm]
        m["others_pss"] = sum(pss_kib(p)[1] for p in others)
        m["others"] = " ".join(sorted(prog(procs[p][1]) for p in others)) or "none"
        m["total_pss"] = m["shim_pss"] + m.get("vmm_pss", 0) + m["others_pss"]
        return m

    def leftovers(self):
        left = []
        pods = self.call("ListPodSandbox", cri.ListPodSandboxRequest()).items
        left += [f"pod {p.id} ({p.metadata.name}, {cri.PodSandboxState.Name(p.state)})" for p in pods]
        ctrs = self.call("ListContainers", cri.ListContainersRequest()).containers
        left += [f"container {c.id} ({c.metadata.name})" for c in ctrs]
        procs = processes()
        left += [f"shim pid {p} ({' '.join(procs[p][1])})" for p in shims(procs, self.ctd.socket)]
        left += [f"hull-vmm pid {p}" for p in vmms(procs, self.shim_root)]
        left += [f"mount {m}" for m in mounts_below(self.ctd.root) + mounts_below(self.shim_root)]
        left += [f"sandbox state {d}" for d in glob.glob(os.path.join(self.shim_root, "*", "*"))]
        return left

    def check_clean(self, what, wait=120):
        deadline = time.monotonic() + wait
        while True:
            left = self.leftovers()
            if not left:
                return
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: {wait} s after RemovePodSandbox still left: {'; '.join(left)}")
            time.sleep(0.2)

    def close(self):
        """Every pod removed (best effort after a failure), containerd stopped, any VMM or shim of
        ours still there killed."""
        if not self.ctd:
            return
        try:
            for p in self.rt.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=120).items:
                self.rt.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=p.id), timeout=300)
                self.rt.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=p.id), timeout=300)
        except (grpc.RpcError, AttributeError):
            pass
        if self.channel:
            self.channel.close()
        self.ctd.stop()
        procs = processes()
        for pid in vmms(procs, self.shim_root) + shims(procs, self.ctd.socket):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for m in reversed(mounts_below(self.shim_root)):
            subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL)


def mib(kib):
    return f"{kib / 1024:.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True, help="the build dir (bin/, vmlinux, hull-initrd.img)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds between the first line and the memory reading (measured rounds)")
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    tools = check_tools(a.build)
    # Short: containerd's sockets live here.
    work = tempfile.mkdtemp(prefix="hcb.", dir="/run")
    bench = Bench(work)
    try:
        bench.start(tools, a.build, dict(os.environ))
        print(f"{bench.version}; runc {subprocess.run(['runc', '--version'], capture_output=True, text=True).stdout.split()[2]}",
              flush=True)
        rows = {h: [] for h in HANDLERS}
        for r in range(a.rounds + 1):
            order = HANDLERS[::-1] if r > 0 and r % 2 == 0 else HANDLERS
            label = "warm-up" if r == 0 else f"round {r}"
            for h in order:
                x = bench.pod(h, f"{h}-{r}", a.settle, memory=r > 0)
                mem = ""
                if "shim_pss" in x:
                    mem = f"  PSS: shim {mib(x['shim_pss'])} MiB"
                    if h == "hull":
                        mem += f", hull-vmm {mib(x['vmm_pss'])} (guest RAM {mib(x['ram_pss'])}, rest {mib(x['own_pss'])})"
                    mem += f", below the shim {mib(x['others_pss'])} ({x['others']})"
                print(f"{label:8s} {h:5s} {x['first'] * 1000:7.0f} ms to the first line (RunPodSandbox "
                      f"{x['runp'] * 1000:.0f}, CreateContainer {x['create'] * 1000:.0f}, StartContainer "
                      f"{x['start'] * 1000:.0f}){mem}{'  (discarded)' if r == 0 else ''}", flush=True)
                if r > 0:
                    rows[h].append(x)
        med = lambda h, k: statistics.median(x[k] for x in rows[h])  # noqa: E731
        print()
        print(f"CRI pod start, RunPodSandbox to the container's first output line in its CRI log "
              f"(host-network pod, one busybox container `echo {LINE}; exec sleep 1000`), "
              f"{a.rounds} rounds after a discarded warm-up")
        print(f"{'handler':8s} {'first line: median ms':>22s} {'min ms':>8s} {'max ms':>8s} "
              f"{'RunPodSandbox':>14s} {'CreateContainer':>16s} {'StartContainer':>15s}")
        for h in HANDLERS:
            f = [x["first"] for x in rows[h]]
            print(f"{h:8s} {statistics.median(f) * 1000:22.0f} {min(f) * 1000:8.0f} {max(f) * 1000:8.0f} "
                  f"{med(h, 'runp') * 1000:14.0f} {med(h, 'create') * 1000:16.0f} {med(h, 'start') * 1000:15.0f}")
        print(f"ratio hull / runc (first line, median): {med('hull', 'first') / med('runc', 'first'):.2f}")
        print()
        hm = rows["hull"][0]["mib"]
        print(f"Host memory of one running pod (sandbox + that container), PSS, {a.settle:g} s after the first line, "
              f"median of {a.rounds} pods; hull guest memory configured: {hm} MiB, 1 vCPU")
        print(f"{'process':52s} {'PSS MiB':>8s}")
        print(f"{'containerd-shim-hull-v2 (the pod shim server)':52s} {mib(med('hull', 'shim_pss')):>8s}")
        print(f"{'hull-vmm, total':52s} {mib(med('hull', 'vmm_pss')):>8s}")
        print(f"{'  guest RAM (touched guest memory)':52s} {mib(med('hull', 'ram_pss')):>8s}")
        print(f"{'  hull-vmm without guest RAM':52s} {mib(med('hull', 'own_pss')):>8s}")
        print(f"{'other processes below the hull shim':52s} {mib(med('hull', 'others_pss')):>8s}"
              f"  ({rows['hull'][-1]['others']})")
        print(f"{'hull, all host processes of the pod':52s} {mib(med('hull', 'total_pss')):>8s}")
        print(f"{'containerd-shim-runc-v2 (the pod shim server)':52s} {mib(med('runc', 'shim_pss')):>8s}")
        print(f"{'runc: pause + container processes below the shim':52s} {mib(med('runc', 'others_pss')):>8s}"
              f"  ({rows['runc'][-1]['others']})")
        print(f"{'runc, all host processes of the pod':52s} {mib(med('runc', 'total_pss')):>8s}")
        print("nothing left after any pod (CRI pods and containers, shims, hull-vmm, mounts, sandbox state)")
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
