#!/usr/bin/env python3
"""Host memory per container with many running side by side: --count containers (default 10)
started one after another and all running when the memory is read, for
- `hull`: its default start path, every sandbox restored from one template (made by a warm-up
  container first), so the template's memory file is mapped by all of them and its untouched
  pages counted once, shared (PSS divides a shared page among its mappers);
- `hull-boot`: `start = "boot"`, each sandbox booted, its guest RAM its own;
- `runc`: the container's own process (runc keeps none of its own after `run -d`).
The bundle, the start (`run -d --pid-file`) and the readings are memory.py's (hull-vmm's PSS with
and without guest RAM, the `--pid-file` process), --settle seconds after the last `run -d`
returned; then every container is killed and deleted, and nothing may be left.
"""
import argparse, json, os, shutil, statistics, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oci import BenchError, become_subreaper, run_main, busybox_bundle, check_tools, write_start_configs  # noqa: E402
from pss import pss_kib, vmm_memory  # noqa: E402
from memory import finish, read_pid, run_detached  # noqa: E402


def start(argv0, root, env, bundle, work, cid):
    pidfile = os.path.join(work, f"{cid}.pid")
    run_detached([argv0, "--root", root, "run", "-d", "--bundle", bundle, "--pid-file", pidfile, cid],
                 env, work, f"{cid}-run")
    return read_pid(pidfile)


def hull_side(name, tools, env, bundle, work, count, settle):
    # A state root per container: memory.finish checks a root for anything left.
    root_of = lambda cid: os.path.join(work, f"root-{cid}")  # noqa: E731
    started = []
    try:
        for i in range(count):
            cid = f"{name}{i}"
            started.append((cid, start(tools["hull"], root_of(cid), env, bundle, work, cid)))
        time.sleep(settle)
        rows = []
        for cid, monitor in started:
            with open(os.path.join(root_of(cid), cid, "state.json")) as f:
                state = json.load(f)
            vm = vmm_memory(state["vmm_pid"], state["memory_mib"])
            rows.append({**vm, "mon_pss": pss_kib(monitor)[1]})
        return rows
    finally:
        for cid, monitor in started:
            finish(tools["hull"], root_of(cid), env, cid, monitor, name)


def runc_side(tools, bundle, work, count, settle):
    root_of = lambda cid: os.path.join(work, f"root-{cid}")  # noqa: E731
    env = dict(os.environ)
    started = []
    try:
        for i in range(count):
            cid = f"runc{i}"
            started.append((cid, start(tools["runc"], root_of(cid), env, bundle, work, cid)))
        time.sleep(settle)
        return [{"init_pss": pss_kib(pid)[1]} for _, pid in started]
    finally:
        for cid, pid in started:
            finish(tools["runc"], root_of(cid), env, cid, pid, "runc")


def mib(kib):
    return f"{kib / 1024:7.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True)
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--settle", type=float, default=2.0)
    a = ap.parse_args()
    if a.count < 1:
        ap.error("--count must be at least 1")
    tools = check_tools(a.build)
    become_subreaper()
    work = tempfile.mkdtemp(prefix="hull-bench-density.", dir="/var/tmp")
    try:
        config, boot_config = write_start_configs(work, tools)
        bundle = os.path.join(work, "bundle")
        busybox_bundle(tools["hull"], bundle, ["sleep", "1000"])
        env = dict(os.environ, HULL_CONFIG=config)
        # The warm-up: the template is made, then that container goes.
        root = os.path.join(work, "warm-root")
        finish(tools["hull"], root, env, "warm", start(tools["hull"], root, env, bundle, work, "warm"), "warm-up")
        sides = {
            "hull": hull_side("hull", tools, env, bundle, work, a.count, a.settle),
            "hull-boot": hull_side("hull-boot", tools, dict(os.environ, HULL_CONFIG=boot_config), bundle, work,
                                   a.count, a.settle),
        }
        runc = runc_side(tools, bundle, work, a.count, a.settle)
        per = lambda rows, k: statistics.mean(r[k] for r in rows)  # noqa: E731
        print(f"Host memory per container, {a.count} containers (busybox `sleep 1000`) running side by side, "
              f"read {a.settle:g} s after the last `run -d`; mean per container")
        print(f"{'':10s} {'hull-vmm PSS':>13s} {'guest RAM PSS':>14s} {'rest':>7s} {'monitor':>8s} {'total MiB':>10s}")
        totals = {}
        for name, rows in sides.items():
            total = per(rows, "vmm_pss") + per(rows, "mon_pss")
            totals[name] = total
            print(f"{name:10s} {mib(per(rows, 'vmm_pss')):>13s} {mib(per(rows, 'ram_pss')):>14s} "
                  f"{mib(per(rows, 'own_pss')):>7s} {mib(per(rows, 'mon_pss')):>8s} {mib(total):>10s}")
        r = per(runc, "init_pss")
        print(f"{'runc':10s} {'':>13s} {'':>14s} {'':>7s} {'':>8s} {mib(r):>10s}  (the container's process)")
        print(f"ratio hull / hull-boot (total per container): {totals['hull'] / totals['hull-boot']:.2f}")
        print("nothing left after any container (state dirs, mounts, hull-vmm)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
