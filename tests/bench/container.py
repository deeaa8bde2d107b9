#!/usr/bin/env python3
"""Container start: `hull run` against `runc run` on the same OCI bundle, side by side.

The bundle (oci.py: busybox root, runc's default spec) runs `echo ready`. Each run is the
runtime's foreground `run` (no --detach), as a caller that wants the output starts it:
`RUNTIME --root ROOT run --bundle BUNDLE ID`, stdin from /dev/null, stdout a pipe, stderr a file,
in its own process group; hull and runc each have a state root of their own. Measured from
spawning the process to
- the container's first line ("ready") on stdout (read as it arrives, never waiting for the end
  of the stream: hull's pid-file process carries the container's stdout and could hold it open);
- the runtime's exit (the container has exited and been deleted: for hull its VM is gone too).
Then each run must have exited 0 and left nothing: no state dir, no mount below its root, no
hull-vmm. A run still going after --timeout is killed with its process group, `hull delete -f`
/ `runc delete -f` clean up, and the bench fails naming it.

hull runs twice: with its default start path (`hull`: restored from a template, which the
warm-up round makes) and with `start = "boot"` (`hull-boot`: the kernel booted every time).

One warm-up round (discarded) and --rounds measured rounds, hull first in odd rounds, runc first
in even ones, with --settle seconds (default 3) of quiet before every run: what a runtime leaves
to the kernel after it exits (a network namespace's teardown runs in a kernel worker after
the last reference is gone, page cache writeback) must not land in the next runtime's time.
Prints every round, per-runtime median/min/max and the ratios to runc.
"""
import argparse, os, select, shutil, signal, statistics, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from oci import (BenchError, become_subreaper, run_main, busybox_bundle, check_tools, leftovers,  # noqa: E402
                 reap_orphans, write_start_configs)

LINE = b"ready"


class Runtime:
    def __init__(self, name, argv0, root, env):
        self.name, self.argv0, self.root, self.env = name, argv0, root, env

    def cmd(self, *args):
        return [self.argv0, "--root", self.root, *args]


def read_line(p, deadline):
    """The first line on p.stdout (bytes, without the newline), read as it arrives."""
    fd = p.stdout.fileno()
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("no output line in time")
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise EOFError(f"stdout closed before a line (exit {p.wait()})")
            buf += chunk
    return buf.split(b"\n", 1)[0]


def one_run(rt, bundle, cid, work, timeout):
    """(seconds to the first line, seconds to the runtime's exit)."""
    err_path = os.path.join(work, f"{rt.name}.stderr")
    with open(err_path, "wb") as err:
        start = time.monotonic()
        p = subprocess.Popen(rt.cmd("run", "--bundle", bundle, cid), stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=err, env=rt.env, process_group=0)
    deadline = start + timeout
    try:
        try:
            line = read_line(p, deadline)
            first = time.monotonic() - start
            # The rest of stdout (nothing, normally), then the exit.
            while select.select([p.stdout], [], [], max(0, deadline - time.monotonic()))[0]:
                if not os.read(p.stdout.fileno(), 4096):
                    break
            code = p.wait(timeout=max(0.1, deadline - time.monotonic()))
            done = time.monotonic() - start
        except (TimeoutError, EOFError, subprocess.TimeoutExpired) as e:
            raise BenchError(f"{rt.name} run {cid}: {e or 'no exit in time'}; stderr:\n{tail(err_path)}")
        if line != LINE:
            raise BenchError(f"{rt.name} run {cid}: first line {line!r}, expected {LINE!r}; stderr:\n{tail(err_path)}")
        if code != 0:
            raise BenchError(f"{rt.name} run {cid}: exit {code}; stderr:\n{tail(err_path)}")
        return first, done
    finally:
        p.stdout.close()
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
        reap_orphans()
        check_clean(rt, cid)


def check_clean(rt, cid):
    left = leftovers(rt.root, cid)
    if not left:
        return
    # Clean up with the runtime's own forced delete, and say so: the bench fails either way.
    out = subprocess.run(rt.cmd("delete", "-f", cid), env=rt.env, capture_output=True, text=True)
    reap_orphans()
    still = leftovers(rt.root, cid)
    raise BenchError(f"{rt.name} run {cid} left: {'; '.join(left)}; `{rt.name} delete -f` "
                     f"(exit {out.returncode}{': ' + out.stderr.strip() if out.stderr.strip() else ''}) "
                     f"{'did not remove: ' + '; '.join(still) if still else 'cleaned up'}")


def tail(path, n=2000):
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace")[-n:]
    except OSError:
        return ""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True, help="the build dir (bin/hull, bin/hull-vmm, vmlinux, hull-initrd.img)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--timeout", type=int, default=300, help="seconds one run may take")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of quiet before each run")
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    tools = check_tools(a.build)
    become_subreaper()
    work = tempfile.mkdtemp(prefix="hull-bench-ctr.", dir="/var/tmp")
    try:
        config, boot_config = write_start_configs(work, tools)
        bundle = os.path.join(work, "bundle")
        busybox_bundle(tools["hull"], bundle, ["echo", LINE.decode()])
        hull = Runtime("hull", tools["hull"], os.path.join(work, "hull-root"), dict(os.environ, HULL_CONFIG=config))
        hull_boot = Runtime("hull-boot", tools["hull"], os.path.join(work, "hull-boot-root"),
                            dict(os.environ, HULL_CONFIG=boot_config))
        runc = Runtime("runc", tools["runc"], os.path.join(work, "runc-root"), dict(os.environ))
        times = {hull.name: [], hull_boot.name: [], runc.name: []}
        for r in range(a.rounds + 1):
            order = (runc, hull_boot, hull) if r > 0 and r % 2 == 0 else (hull, hull_boot, runc)
            label = "warm-up" if r == 0 else f"round {r}"
            for rt in order:
                time.sleep(a.settle)
                first, done = one_run(rt, bundle, f"bench{r}", work, a.timeout)
                print(f"{label:8s} {rt.name:9s} {first * 1000:8.0f} ms to the first line  {done * 1000:8.0f} ms to exit"
                      f"{'  (discarded)' if r == 0 else ''}", flush=True)
                if r > 0:
                    times[rt.name].append((first, done))
        print()
        print(f"Container start, bundle to the container's first output line: `run` of the same bundle "
              f"(busybox `echo {LINE.decode()}`), {a.rounds} rounds after a discarded warm-up")
        print(f"{'runtime':9s} {'first line: median ms':>22s} {'min ms':>8s} {'max ms':>8s} {'exit: median ms':>16s}")
        for name, ts in times.items():
            f = [t[0] for t in ts]
            print(f"{name:9s} {statistics.median(f) * 1000:22.0f} {min(f) * 1000:8.0f} {max(f) * 1000:8.0f} "
                  f"{statistics.median(t[1] for t in ts) * 1000:16.0f}")
        med = {n: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts)) for n, ts in times.items()}
        print(f"ratio hull / runc (first line, median):      {med['hull'][0] / med['runc'][0]:.2f}")
        print(f"ratio hull-boot / runc (first line, median): {med['hull-boot'][0] / med['runc'][0]:.2f}")
        print(f"ratio hull / hull-boot (first line, median): {med['hull'][0] / med['hull-boot'][0]:.2f}")
        print(f"ratio hull / runc (to exit, median):         {med['hull'][1] / med['runc'][1]:.2f}")
        print(f"ratio hull-boot / runc (to exit, median):    {med['hull-boot'][1] / med['runc'][1]:.2f}")
        print("nothing left after any run (state dirs, mounts, hull-vmm)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
