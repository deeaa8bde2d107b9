#!/usr/bin/env python3
"""Sandbox host memory: what one running hull container costs the host, in PSS.

The bundle (oci.py: busybox root, runc's default spec) runs `sleep 1000`, started with
`hull --root ROOT run -d --bundle B --pid-file P ID` as containerd-shim-runc-v2 starts a runc
container (stdout and stderr to files: the pid-file process holds them as long as the container
runs). --settle seconds after `run -d` returned, read:
- hull-vmm (its pid from the sandbox's state.json): PSS and RSS from /proc/PID/smaps_rollup;
  the guest RAM mapping(s) from /proc/PID/smaps, and the VMM's PSS without them (pss.py: guest
  RAM is found as hull-vmm allocates it; the guest's size is state.json's memory_mib). The
  bench fails unless exactly those mappings are found.
- the `--pid-file` process (`hull __monitor`, runtime/src/bin/hull/monitor.rs), which lives as
  long as the container: PSS and RSS.
Then `hull kill ID KILL`, the monitor's exit, `hull delete ID`, and nothing may be left (state
dir, mounts, hull-vmm); `hull delete -f` cleans up otherwise, and the bench fails saying so.

For comparison, runc on the same bundle (`runc run -d --pid-file`): runc keeps no process of its
own once `run -d` returns, so what stays is the container's own process (sleep), whose PSS is
shown; inside hull's guest that same sleep is part of guest RAM.

--rounds fresh containers of each runtime, alternating (hull first in odd rounds), medians shown.
"""
import argparse, json, os, shutil, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oci import (BenchError, become_subreaper, run_main, busybox_bundle, check_tools, leftovers,  # noqa: E402
                 reap_orphans, write_hull_config)
from pss import pss_kib, vmm_memory  # noqa: E402


def run_detached(argv, env, work, what):
    with open(os.path.join(work, f"{what}.out"), "wb") as out, open(os.path.join(work, f"{what}.err"), "wb") as err:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, timeout=300)
    if p.returncode != 0:
        raise BenchError(f"{' '.join(argv)}: exit {p.returncode}; stderr:\n{tail(os.path.join(work, what + '.err'))}")


def tail(path, n=2000):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")[-n:]
    except OSError:
        return ""


def read_pid(path):
    with open(path) as f:
        return int(f.read().strip())


def wait_pid(pid, timeout, what):
    """Reaps our child (or adopted orphan) `pid`, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # not ours, or already reaped
        if done == pid:
            return
        time.sleep(0.05)
    raise BenchError(f"{what} (pid {pid}) still runs {timeout} s after SIGKILL")


def finish(argv0, root, env, cid, pid, what):
    """kill -9, wait for `pid` (the pid-file process), delete; checks that nothing is left."""
    notes = []
    k = subprocess.run([argv0, "--root", root, "kill", cid, "KILL"], env=env, capture_output=True, text=True)
    if k.returncode != 0:
        notes.append(f"kill: exit {k.returncode}: {k.stderr.strip()}")
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    wait_pid(pid, 120, f"{what}'s pid-file process")
    d = subprocess.run([argv0, "--root", root, "delete", cid], env=env, capture_output=True, text=True)
    if d.returncode != 0:
        notes.append(f"delete: exit {d.returncode}: {d.stderr.strip()}")
    time.sleep(0.2)
    reap_orphans()
    left = leftovers(root, cid)
    if left or notes:
        f = subprocess.run([argv0, "--root", root, "delete", "-f", cid], env=env, capture_output=True, text=True)
        reap_orphans()
        still = leftovers(root, cid)
        raise BenchError(f"{what} {cid}: {'; '.join(notes + ['left: ' + '; '.join(left)] if left else notes)}; "
                         f"`delete -f` exit {f.returncode} {f.stderr.strip()} "
                         f"{'did not remove: ' + '; '.join(still) if still else 'cleaned up'}")


def hull_round(tools, env, root, bundle, work, cid, settle):
    pidfile = os.path.join(work, f"{cid}.pid")
    run_detached([tools["hull"], "--root", root, "run", "-d", "--bundle", bundle, "--pid-file", pidfile, cid],
                 env, work, "hull-run")
    monitor = read_pid(pidfile)
    try:
        with open(os.path.join(root, cid, "state.json")) as f:
            state = json.load(f)
        vmm, mib = state["vmm_pid"], state["memory_mib"]
        time.sleep(settle)
        vm = vmm_memory(vmm, mib)
        mon_rss, mon_pss = pss_kib(monitor)
        with open(f"/proc/{monitor}/cmdline", "rb") as f:
            mon_cmd = f.read().split(b"\0")
        if b"__monitor" not in mon_cmd:
            raise BenchError(f"the pid-file process {monitor} is not `hull __monitor`: {mon_cmd}")
    finally:
        finish(tools["hull"], root, env, cid, monitor, "hull")
    return {"mib": mib, **vm, "mon_pss": mon_pss, "mon_rss": mon_rss, "total_pss": vm["vmm_pss"] + mon_pss}


def runc_round(tools, root, bundle, work, cid, settle):
    pidfile = os.path.join(work, f"{cid}.pid")
    run_detached([tools["runc"], "--root", root, "run", "-d", "--bundle", bundle, "--pid-file", pidfile, cid],
                 dict(os.environ), work, "runc-run")
    init = read_pid(pidfile)
    try:
        time.sleep(settle)
        rss, pss = pss_kib(init)
    finally:
        finish(tools["runc"], root, dict(os.environ), cid, init, "runc")
    return {"init_pss": pss, "init_rss": rss}


def mib(kib):
    return f"{kib / 1024:7.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True, help="the build dir (bin/hull, bin/hull-vmm, vmlinux, hull-initrd.img)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=2.0, help="seconds between `run -d` returning and the reading")
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    tools = check_tools(a.build)
    become_subreaper()
    work = tempfile.mkdtemp(prefix="hull-bench-mem.", dir="/var/tmp")
    try:
        config = os.path.join(work, "hull.toml")
        write_hull_config(config, tools)
        env = dict(os.environ, HULL_CONFIG=config)
        bundle = os.path.join(work, "bundle")
        busybox_bundle(tools["hull"], bundle, ["sleep", "1000"])
        hull_root, runc_root = os.path.join(work, "hull-root"), os.path.join(work, "runc-root")
        hs, rs = [], []
        for r in range(1, a.rounds + 1):
            for side in (("hull", "runc") if r % 2 else ("runc", "hull")):
                if side == "hull":
                    h = hull_round(tools, env, hull_root, bundle, work, f"mem{r}", a.settle)
                    hs.append(h)
                    print(f"round {r} hull  hull-vmm PSS {mib(h['vmm_pss'])} MiB (guest RAM {mib(h['ram_pss'])} of "
                          f"{h['mib']} MiB, rest {mib(h['own_pss'])})  monitor PSS {mib(h['mon_pss'])} MiB", flush=True)
                else:
                    c = runc_round(tools, runc_root, bundle, work, f"mem{r}", a.settle)
                    rs.append(c)
                    print(f"round {r} runc  container init (sleep) PSS {mib(c['init_pss'])} MiB", flush=True)
        med = lambda rows, k: statistics.median(x[k] for x in rows)  # noqa: E731
        print()
        print(f"Host memory of one running container (busybox `sleep 1000`), {a.settle:g} s after `run -d` returned, "
              f"median of {a.rounds} fresh containers; guest memory configured: {hs[0]['mib']} MiB, 1 vCPU")
        print(f"{'process':44s} {'PSS MiB':>8s} {'RSS MiB':>8s}")
        print(f"{'hull-vmm, total':44s} {mib(med(hs, 'vmm_pss')):>8s} {mib(med(hs, 'vmm_rss')):>8s}")
        print(f"{'  guest RAM mapping (touched guest memory)':44s} {mib(med(hs, 'ram_pss')):>8s} {mib(med(hs, 'ram_rss')):>8s}")
        print(f"{'  hull-vmm without guest RAM':44s} {mib(med(hs, 'own_pss')):>8s} {mib(med(hs, 'own_rss')):>8s}")
        print(f"{'hull __monitor (the --pid-file process)':44s} {mib(med(hs, 'mon_pss')):>8s} {mib(med(hs, 'mon_rss')):>8s}")
        print(f"{'hull, all host processes (vmm + monitor)':44s} {mib(med(hs, 'total_pss')):>8s}")
        print(f"{'runc: the container process itself (sleep)':44s} {mib(med(rs, 'init_pss')):>8s} {mib(med(rs, 'init_rss')):>8s}")
        print("runc keeps no process of its own after `run -d`; with hull the container's processes are inside guest RAM.")
        print("nothing left after any container (state dirs, mounts, hull-vmm)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
