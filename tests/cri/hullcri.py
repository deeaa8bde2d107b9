#!/usr/bin/env python3
"""hullcri: a small crictl for hull's tests, bench and docs, over containerd's CRI socket.

crictl is not packaged in Debian; this speaks CRI v1 with the stubs of the PyPI package
container-runtime-interface-api (scripts/install-cri-client.sh installs it and prints the
python to run this with). Configs are JSON in the protobuf mapping of the CRI messages, as
crictl's (field names as in api.proto, e.g. {"metadata": {"name": "p"}, "log_directory": ...}).

  hullcri.py [--address unix:///run/containerd/containerd.sock] COMMAND ...
    version                                 runtime name and version
    runp [--runtime HANDLER] POD.json       RunPodSandbox: prints the pod id
    create POD_ID CONTAINER.json POD.json   CreateContainer: prints the container id
    start ID                                StartContainer
    exec [--timeout S] ID CMD [ARG...]      ExecSync: its stdout and stderr; exits with its code
    inspect ID | inspectp POD_ID            ContainerStatus / PodSandboxStatus (JSON)
    stats ID                                ContainerStats (JSON)
    update ID RESOURCES.json                UpdateContainerResources (LinuxContainerResources)
    stop [--timeout S] ID | rm ID           StopContainer / RemoveContainer
    stopp POD_ID | rmp POD_ID               StopPodSandbox / RemovePodSandbox
    ps [--pod POD_ID] | pods                ListContainers / ListPodSandbox (JSON)
    portforward POD_ID PORT DATA            PortForward, then over containerd's streaming
                                            server (WebSocket, v4.channel.k8s.io, as kubectl's
                                            newer clients speak it): sends DATA to the pod's
                                            PORT and prints what comes back until the pod's
                                            side closes; an error the server reports (e.g.
                                            connection refused) is printed and exits 1
    serve                                   reads commands as JSON arrays of arguments, one per
                                            line, and answers each with a JSON line
                                            {"code": N, "stdout": "...", "stderr": "..."}: one
                                            process (and one connection) for a whole test

CONTAINER_RUNTIME_ENDPOINT sets the address too. A CRI error is printed with the call's name
and the runtime's message, and exits 1.
"""
import argparse
import io
import json
import os
import sys

try:
    import grpc
    from google.protobuf import json_format
    from cri_api.v1 import api_pb2 as cri
    from cri_api.v1.api_pb2_grpc import RuntimeServiceStub
except ImportError as e:  # pragma: no cover - names the fix
    sys.exit(f"hullcri: {e}: run me with the python that scripts/install-cri-client.sh prints")

# Generous: a pod's VM boots under emulation in the test host.
DEFAULT_TIMEOUT = 600


def load(path, message):
    try:
        with open(path, encoding="utf-8") as f:
            return json_format.Parse(f.read(), message)
    except (OSError, json_format.ParseError) as e:
        raise Exit(1, f"hullcri: {path}: {e}")


class Exit(Exception):
    """Ends one command with an exit code (what sys.exit would do to the CLI)."""

    def __init__(self, code, message=""):
        super().__init__(message)
        self.code = code
        self.message = message


def parser():
    p = argparse.ArgumentParser(prog="hullcri", description=__doc__.split("\n")[0], exit_on_error=False)
    p.add_argument(
        "--address",
        default=os.environ.get("CONTAINER_RUNTIME_ENDPOINT", "unix:///run/containerd/containerd.sock"),
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("version")
    sub.add_parser("serve")
    s = sub.add_parser("runp")
    s.add_argument("--runtime", default="")
    s.add_argument("pod")
    s = sub.add_parser("create")
    s.add_argument("pod_id")
    s.add_argument("container")
    s.add_argument("pod")
    for name in ("start", "inspect", "inspectp", "stats", "rm", "stopp", "rmp"):
        sub.add_parser(name).add_argument("id")
    s = sub.add_parser("exec")
    s.add_argument("--timeout", type=int, default=0)
    s.add_argument("id")
    s.add_argument("argv", nargs=argparse.REMAINDER)
    s = sub.add_parser("update")
    s.add_argument("id")
    s.add_argument("resources")
    s = sub.add_parser("stop")
    s.add_argument("--timeout", type=int, default=10)
    s.add_argument("id")
    s = sub.add_parser("portforward")
    s.add_argument("pod_id")
    s.add_argument("port", type=int)
    s.add_argument("data")
    s = sub.add_parser("ps")
    s.add_argument("--pod", default="")
    sub.add_parser("pods")
    return p


def port_forward(url, port, data, timeout=60):
    """Speaks the Kubernetes streaming server's port-forward over WebSocket: binary messages
    whose first byte is the channel (0: the port's data, 1: its errors); each channel's first
    message starts with the port (2 bytes, little-endian). Sends `data`, reads until the server
    closes. Returns (data received, error text)."""
    import websocket  # websocket-client, installed with the CRI stubs

    ws_url = "ws" + url[len("http"):] if url.startswith("http") else url
    # The port is in the request containerd cached for this URL; the query names it too, as
    # the kubelet's own server wants it.
    ws_url += ("&" if "?" in ws_url else "?") + f"port={port}"
    try:
        ws = websocket.create_connection(ws_url, subprotocols=["v4.channel.k8s.io"], timeout=timeout)
    except (OSError, websocket.WebSocketException) as e:
        raise Exit(1, f"hullcri: portforward: {ws_url}: {e}")
    got = {0: b"", 1: b""}
    header = {0: False, 1: False}
    try:
        ws.send_binary(b"\x00" + data)
        while True:
            try:
                opcode, payload = ws.recv_data()
            except (websocket.WebSocketConnectionClosedException, OSError):
                # The server closed (a write of the library's close frame may find it gone).
                break
            except websocket.WebSocketTimeoutException:
                got[1] += f"(hullcri: the server did not close within {timeout} s)".encode()
                break
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                break
            if not payload or payload[0] not in got:
                continue
            ch, body = payload[0], payload[1:]
            if not header[ch]:
                if len(body) < 2 or int.from_bytes(body[:2], "little") != port:
                    raise Exit(1, f"hullcri: portforward: channel {ch} did not start with port {port}")
                header[ch], body = True, body[2:]
            got[ch] += body
    finally:
        try:
            ws.close()
        except (OSError, websocket.WebSocketException):
            pass
    return got[0], got[1]


def execute(rt, a, out, err):
    """Runs command `a` (parsed arguments) against RuntimeService stub `rt`, writing to the
    binary streams `out` and `err`; returns its exit code."""
    call_name = a.cmd

    def call(method, request):
        nonlocal call_name
        call_name = method
        return getattr(rt, method)(request, timeout=DEFAULT_TIMEOUT)

    def dump(message):
        text = json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2)
        out.write(text.encode() + b"\n")

    def say(text):
        out.write(text.encode() + b"\n")

    try:
        if a.cmd == "version":
            dump(call("Version", cri.VersionRequest()))
        elif a.cmd == "runp":
            pod = load(a.pod, cri.PodSandboxConfig())
            r = call("RunPodSandbox", cri.RunPodSandboxRequest(config=pod, runtime_handler=a.runtime))
            say(r.pod_sandbox_id)
        elif a.cmd == "create":
            c = load(a.container, cri.ContainerConfig())
            pod = load(a.pod, cri.PodSandboxConfig())
            r = call(
                "CreateContainer",
                cri.CreateContainerRequest(pod_sandbox_id=a.pod_id, config=c, sandbox_config=pod),
            )
            say(r.container_id)
        elif a.cmd == "start":
            call("StartContainer", cri.StartContainerRequest(container_id=a.id))
        elif a.cmd == "exec":
            argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
            if not argv:
                raise Exit(2, "hullcri: exec needs a command")
            r = call("ExecSync", cri.ExecSyncRequest(container_id=a.id, cmd=argv, timeout=a.timeout))
            out.write(r.stdout)
            err.write(r.stderr)
            return r.exit_code
        elif a.cmd == "inspect":
            dump(call("ContainerStatus", cri.ContainerStatusRequest(container_id=a.id, verbose=True)))
        elif a.cmd == "inspectp":
            dump(call("PodSandboxStatus", cri.PodSandboxStatusRequest(pod_sandbox_id=a.id, verbose=True)))
        elif a.cmd == "stats":
            dump(call("ContainerStats", cri.ContainerStatsRequest(container_id=a.id)))
        elif a.cmd == "update":
            res = load(a.resources, cri.LinuxContainerResources())
            call("UpdateContainerResources", cri.UpdateContainerResourcesRequest(container_id=a.id, linux=res))
        elif a.cmd == "stop":
            call("StopContainer", cri.StopContainerRequest(container_id=a.id, timeout=a.timeout))
        elif a.cmd == "rm":
            call("RemoveContainer", cri.RemoveContainerRequest(container_id=a.id))
        elif a.cmd == "stopp":
            call("StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=a.id))
        elif a.cmd == "rmp":
            call("RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=a.id))
        elif a.cmd == "ps":
            f = cri.ContainerFilter(pod_sandbox_id=a.pod) if a.pod else None
            dump(call("ListContainers", cri.ListContainersRequest(filter=f)))
        elif a.cmd == "portforward":
            r = call("PortForward", cri.PortForwardRequest(pod_sandbox_id=a.pod_id, port=[a.port]))
            data, error = port_forward(r.url, a.port, a.data.encode())
            out.write(data)
            if error:
                raise Exit(1, f"hullcri: portforward {a.port}: {error.decode('utf-8', 'replace')}")
        elif a.cmd == "pods":
            dump(call("ListPodSandbox", cri.ListPodSandboxRequest()))
    except grpc.RpcError as e:
        raise Exit(1, f"hullcri: {call_name}: {e.code().name}: {e.details()}")
    return 0


def serve(rt, p):
    """One command per line of stdin (a JSON array of arguments), one JSON answer per line."""
    for line in sys.stdin:
        if not line.strip():
            continue
        out, err = io.BytesIO(), io.BytesIO()
        try:
            argv = json.loads(line)
            if not isinstance(argv, list) or not all(isinstance(x, str) for x in argv):
                raise Exit(2, "hullcri serve: a line must be a JSON array of strings")
            a = p.parse_args(argv)
            if a.cmd == "serve":
                raise Exit(2, "hullcri serve: serve cannot be served")
            code = execute(rt, a, out, err)
        except Exit as e:
            code = e.code
            err.write(e.message.encode() + b"\n")
        except (argparse.ArgumentError, json.JSONDecodeError) as e:
            code = 2
            err.write(f"hullcri: {e}\n".encode())
        except SystemExit as e:  # argparse's own errors (already printed on stderr)
            code = e.code if isinstance(e.code, int) else 2
            err.write(b"hullcri: bad arguments\n")
        answer = {
            "code": code,
            "stdout": out.getvalue().decode("utf-8", "replace"),
            "stderr": err.getvalue().decode("utf-8", "replace"),
        }
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


def main():
    p = parser()
    try:
        a = p.parse_args()
    except argparse.ArgumentError as e:
        p.error(str(e))
    address = a.address if "://" in a.address else "unix://" + a.address
    rt = RuntimeServiceStub(grpc.insecure_channel(address))
    if a.cmd == "serve":
        serve(rt, p)
        return
    try:
        code = execute(rt, a, sys.stdout.buffer, sys.stderr.buffer)
    except Exit as e:
        sys.stdout.flush()
        print(e.message, file=sys.stderr)
        code = e.code
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    main()
