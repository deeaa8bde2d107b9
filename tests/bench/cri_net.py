#!/usr/bin/env python3
"""Pod networking on a real CNI: TCP throughput (iperf3) and round trip (ping) between the host
and a pod, runtime handlers `hull` (virtio-net on the host's vhost-net, the default) and
`hull-userspace` (hull with `net_backend = "userspace"`: hull-vmm's own device; cri.py's
USERSPACE_RUNTIME) against `runc`, on one containerd with one CNI network.

containerd is started as cri.py starts it (its Bench: own root on a tmpfs, own sockets, the CRI
plugin, handlers `runc` and `hull`), with a CNI network written first into its conf dir: Debian's
containernetworking-plugins `bridge` (hullbench0, 10.98.0.0/24, gateway 10.98.0.1 on the host)
with `host-local` IPAM, as the CRI VM test configures it. The images are pause and
`hull-test/iperf` (tests/images/build.sh iperf: Debian's iperf3 and its libraries on busybox).

Per handler and round: a pod on the pod network (RunPodSandbox), one container running
`iperf3 -s` (CreateContainer, StartContainer), its pod IP from PodSandboxStatus; from the host,
once `iperf3 -c IP -t 1` gets through (the server is up), `iperf3 -c IP -t T -J` (host -> pod,
the receiver's rate) and with -R (pod -> host), then `busybox ping -c N -i 0.2 IP` (the average
round trip). Then StopPodSandbox + RemovePodSandbox and nothing may be left (cri.py's checks).
An iperf3 run that reports an error (the one-test-at-a-time server still finishing the previous
test) is shown and retried, up to 5 times.

One warm-up round (discarded) and --rounds measured rounds, hull, hull-userspace, runc in odd
rounds, the reverse in even ones. Prints every round, per-handler medians and the ratios to runc.
"""
import argparse, json, os, re, shutil, statistics, subprocess, tempfile, time

from cri import Bench, cri  # noqa: E402  (cri.py sets up the CRI stubs)
from oci import BenchError, check_tools, run_main  # noqa: E402

IMAGE = "docker.io/hull-test/iperf:latest"
BRIDGE, SUBNET, GATEWAY = "hullbench0", "10.98.0.0/24", "10.98.0.1"
HANDLERS = ("hull", "hull-userspace", "runc")


def cni_config(work):
    os.makedirs(os.path.join(work, "cni"), exist_ok=True)
    with open(os.path.join(work, "cni", "10-hull-bench.conflist"), "w") as f:
        json.dump({"cniVersion": "1.0.0", "name": "hull-bench", "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": SUBNET, "gateway": GATEWAY}]],
                     "routes": [{"dst": "0.0.0.0/0"}]}}]}, f)


def iperf(ip, seconds, *extra):
    """iperf3's JSON of one test, or its error text."""
    out = subprocess.run(["iperf3", "-c", ip, "-t", str(seconds), "-J", *extra], capture_output=True, text=True)
    try:
        j = json.loads(out.stdout)
    except json.JSONDecodeError:
        return None, f"not iperf3's JSON (exit {out.returncode}): {out.stdout[-300:]} {out.stderr[-300:]}"
    return (None, j["error"]) if "error" in j else (j, None)


def rate(handler, ip, seconds, *extra):
    for attempt in range(1, 6):
        j, err = iperf(ip, seconds, *extra)
        if j:
            return j["end"]["sum_received"]["bits_per_second"]
        print(f"cri-net bench: iperf3 {' '.join(extra)} with the {handler} pod ({ip}), attempt {attempt}: {err}",
              flush=True)
        time.sleep(2)
    raise BenchError(f"iperf3 {' '.join(extra)} with the {handler} pod ({ip}) failed 5 times")


def one(bench, handler, name, seconds, pings):
    _, pod, ctr = bench.configs(name, "POD", "iperf", IMAGE, ["iperf3", "-s"])
    pod_id = None
    try:
        pod_id = bench.call("RunPodSandbox", cri.RunPodSandboxRequest(config=pod, runtime_handler=handler)
                            ).pod_sandbox_id
        cid = bench.call("CreateContainer", cri.CreateContainerRequest(
            pod_sandbox_id=pod_id, config=ctr, sandbox_config=pod)).container_id
        bench.call("StartContainer", cri.StartContainerRequest(container_id=cid))
        ip = bench.call("PodSandboxStatus", cri.PodSandboxStatusRequest(pod_sandbox_id=pod_id)).status.network.ip
        if not ip:
            raise BenchError(f"{handler} pod {name}: no pod IP from the CNI")
        deadline = time.monotonic() + 600
        while iperf(ip, 1)[1]:
            if time.monotonic() > deadline:
                raise BenchError(f"{handler} pod {name}: iperf3 -s at {ip} never answered: {iperf(ip, 1)[1]}")
            time.sleep(0.5)
        r = {"up": rate(handler, ip, seconds), "down": rate(handler, ip, seconds, "-R")}
        out = subprocess.run(["busybox", "ping", "-c", str(pings), "-i", "0.2", ip], capture_output=True, text=True)
        m = re.search(r"min/avg/max = [^/]+/([^/]+)/", out.stdout)
        if not m:
            raise BenchError(f"{handler} pod {name}: ping {ip} failed: {out.stdout[-300:]} {out.stderr[-300:]}")
        r["rtt"] = float(m.group(1))
    finally:
        bench.teardown(handler, name, pod_id)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", required=True, help="the build dir (bin/, vmlinux, hull-initrd.img)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5, help="iperf3's -t")
    ap.add_argument("--pings", type=int, default=20)
    a = ap.parse_args()
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")
    for tool in ("iperf3", "busybox"):
        if not shutil.which(tool):
            raise BenchError(f"{tool} not found (scripts/install-deps.sh)")
    tools = check_tools(a.build)
    work = tempfile.mkdtemp(prefix="hcn.", dir="/run")
    bench = Bench(work)
    try:
        cni_config(work)
        bench.start(tools, a.build, dict(os.environ), images=("pause", "iperf"))
        print(f"{bench.version}; {subprocess.run(['iperf3', '--version'], capture_output=True, text=True).stdout.splitlines()[0]}; "
              f"CNI bridge {BRIDGE} {SUBNET}", flush=True)
        rows = {h: [] for h in HANDLERS}
        for r in range(a.rounds + 1):
            order = HANDLERS[::-1] if r > 0 and r % 2 == 0 else HANDLERS
            label = "warm-up" if r == 0 else f"round {r}"
            for h in order:
                x = one(bench, h, f"{h}-{r}", a.seconds, a.pings)
                print(f"{label:8s} {h:14s} host->pod {x['up'] / 1e6:8.1f} Mbit/s  pod->host {x['down'] / 1e6:8.1f} Mbit/s"
                      f"  rtt {x['rtt']:7.3f} ms{'  (discarded)' if r == 0 else ''}", flush=True)
                if r > 0:
                    rows[h].append(x)
        med = lambda h, k: statistics.median(x[k] for x in rows[h])  # noqa: E731
        print()
        print(f"host <-> pod on the bridge CNI: iperf3 -t {a.seconds} (TCP, receiver's rate), ping x{a.pings}; "
              f"{a.rounds} rounds after a discarded warm-up")
        print(f"{'handler':16s} {'host->pod Mbit/s':>17s} {'pod->host Mbit/s':>17s} {'rtt ms':>8s}")
        for h in HANDLERS:
            print(f"{h:16s} {med(h, 'up') / 1e6:17.1f} {med(h, 'down') / 1e6:17.1f} {med(h, 'rtt'):8.3f}")
        for h, what in (("hull", "vhost-net"), ("hull-userspace", "hull-vmm's device")):
            print(f"ratio {h} ({what}) / runc (medians): host->pod throughput {med(h, 'up') / med('runc', 'up'):.2f}, "
                  f"pod->host throughput {med(h, 'down') / med('runc', 'down'):.2f}, "
                  f"round trip {med(h, 'rtt') / med('runc', 'rtt'):.2f}")
        print("nothing left after any pod (CRI pods and containers, shims, hull-vmm, mounts, sandbox state)")
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    run_main(main)
