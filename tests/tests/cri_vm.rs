//! Kubernetes' path into hull: containerd's CRI plugin, driven over its CRI socket as the
//! kubelet drives it (tests/cri/hullcri.py, the PyPI CRI stubs), with the runtime handler
//! `hull` configured by the snippet in docs/containerd.md as written. One containerd of the
//! test's own (root on a tmpfs, its own sockets) in the emulated KVM host:
//! - a pod with two containers is one hull-vmm and one shim; the containers share the pod's IPC
//!   and pid namespaces in the VM; ExecSync, the CRI log files, ContainerStats,
//!   UpdateContainerResources, StopContainer; StopPodSandbox + RemovePodSandbox leave no
//!   process, mount, socket or state dir;
//! - the pod of docs/kubernetes.md, as written there: its VM's size from its annotations;
//! - faults: a shim killed with SIGKILL, and a VMM killed with SIGKILL (its containers exit 137);
//! - pods on a CNI network, and 16 MiB each way between the host and a pod on each virtio-net
//!   backend: the handler `hull` (the host's vhost-net) and `hull-userspace` (hull-vmm's own
//!   device: the same shim run by a wrapper with `net_backend = "userspace"` in its config).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hull_tests::daemons::{image, Containerd};
use hull_tests::net::{
    assert_net_backend, check_transfers, http_get, netns_and_taps, nsfs_mounts,
    write_config_wrapper, write_userspace_config,
};
use hull_tests::procs::{shims, vmm_pids};
use hull_tests::vm::mounts_below;
use hull_tests::{bin, require_kvm, workspace_root, TempDir};

/// The runtime handler (the name under `containerd.runtimes` in docs/containerd.md).
const HANDLER: &str = "hull";
/// A second runtime handler: hull with `net_backend = "userspace"` (hull-vmm's own virtio-net
/// device). Its runtime_type, `io.containerd.hulluserspace.v2`, makes containerd run
/// `containerd-shim-hulluserspace-v2`: a wrapper the test writes, which runs hull's shim with a
/// config of its own.
const USERSPACE_HANDLER: &str = "hull-userspace";
/// Longest the test waits for a state it polls for (the emulated host is slow).
const WAIT_LIMIT: Duration = Duration::from_secs(300);
/// Where containerd's shims put their sockets (containerd 1.6: fixed).
const SHIM_SOCKETS: &str = "/run/containerd/s";

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The fenced code block of `lang` that follows `heading` in a markdown file of the repo.
fn doc_block(doc: &str, heading: &str, lang: &str) -> String {
    let path = workspace_root().join(doc);
    let md = std::fs::read_to_string(&path).unwrap();
    let after = md
        .split_once(heading)
        .unwrap_or_else(|| panic!("{doc} has no heading {heading:?}"))
        .1;
    let fence = format!("```{lang}\n");
    let start = after
        .find(&fence)
        .unwrap_or_else(|| panic!("{doc}: no ```{lang} block after {heading:?}"))
        + fence.len();
    let len = after[start..].find("```").expect("a closed code block");
    after[start..start + len].to_string()
}

/// What one hullcri command gave.
#[derive(Debug)]
struct Answer {
    code: i32,
    stdout: String,
    stderr: String,
}

/// `hullcri.py serve`: one Python process (and one gRPC connection) for the whole test, as a
/// kubelet keeps one; the emulated host takes seconds to start Python with grpc.
struct Client {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

struct Cri {
    containerd: Containerd,
    dir: PathBuf,
    client: std::sync::Mutex<Client>,
    shim_root: PathBuf,
    logs: PathBuf,
}

impl Cri {
    fn start(dir: &Path) -> Cri {
        let t0 = Instant::now();
        let hull_config = dir.join("hull.toml");
        hull_tests::vm::write_runtime_config(&hull_config);
        let userspace_config = dir.join("hull-userspace.toml");
        write_userspace_config(&hull_config, &userspace_config);
        let shim_root = dir.join("shim");
        let cni = dir.join("cni");
        std::fs::create_dir_all(&cni).unwrap();
        // A real CNI (Debian's containernetworking-plugins): a bridge with host-local IPAM,
        // for the pods that ask for a pod network (the others use the node's network).
        std::fs::write(
            cni.join("10-hull-test.conflist"),
            serde_json::to_vec_pretty(&serde_json::json!({
                "cniVersion": "1.0.0",
                "name": "hull-test",
                "plugins": [{
                    "type": "bridge",
                    "bridge": CNI_BRIDGE,
                    "isGateway": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": CNI_SUBNET, "gateway": CNI_GATEWAY}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                }],
            }))
            .unwrap(),
        )
        .unwrap();
        let logs = dir.join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        // The node configuration of docs/containerd.md, as written (but its `version` line, which
        // the test's config has already), plus what this test host needs: a local pause image,
        // no CAP_SYS_RESOURCE, the test's CNI config, runc kept as a runtime.
        let snippet: String =
            doc_block("docs/containerd.md", "## containerd configuration", "toml")
                .lines()
                .filter(|l| !l.starts_with("version"))
                .map(|l| format!("{l}\n"))
                .collect();
        assert!(
            snippet.contains(&format!("containerd.runtimes.{HANDLER}]")),
            "docs/containerd.md's snippet names the runtime {HANDLER}:\n{snippet}"
        );
        let extra = format!(
            r#"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "docker.io/hull-test/pause:latest"
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = {cni:?}
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{USERSPACE_HANDLER}]
  runtime_type = "io.containerd.hulluserspace.v2"
  pod_annotations = ["io.hull.vm.*"]
{snippet}
[debug]
  level = "debug"
"#
        );
        let shim = bin("containerd-shim-hull-v2");
        let shim_dir = shim.parent().unwrap().to_path_buf();
        // containerd finds a runtime_type's shim by name in its PATH: the wrapper for
        // USERSPACE_HANDLER's in a directory of the test's, before the real shim's.
        let wrappers = dir.join("shim-wrappers");
        std::fs::create_dir_all(&wrappers).unwrap();
        write_config_wrapper(
            &wrappers.join("containerd-shim-hulluserspace-v2"),
            &userspace_config,
            &shim,
        );
        let path = format!(
            "{}:{}:{}",
            wrappers.display(),
            shim_dir.display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let containerd = Containerd::start(
            &dir.join("ctd"),
            &[
                ("PATH", std::ffi::OsStr::new(&path)),
                ("HULL_CONFIG", hull_config.as_os_str()),
                ("HULL_SHIM_ROOT", shim_root.as_os_str()),
                ("HULL_SHIM_LOG", std::ffi::OsStr::new("debug")),
            ],
            &extra,
        );
        let phase = |what: &str| {
            eprintln!(
                "cri_vm: start: {what} at {:.1} s",
                t0.elapsed().as_secs_f64()
            )
        };
        phase("containerd up");
        let out = Command::new(workspace_root().join("scripts/install-cri-client.sh"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/install-cri-client.sh: {}",
            text(&out.stderr)
        );
        let python = PathBuf::from(text(&out.stdout).trim());
        let mut child = Command::new(&python)
            .arg(workspace_root().join("tests/cri/hullcri.py"))
            .arg("--address")
            .arg(&containerd.socket)
            .arg("serve")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
        let client = Client {
            stdin: child.stdin.take().unwrap(),
            stdout: std::io::BufReader::new(child.stdout.take().unwrap()),
            child,
        };
        let cri = Cri {
            containerd,
            dir: dir.to_path_buf(),
            client: std::sync::Mutex::new(client),
            shim_root,
            logs,
        };
        phase("hullcri serve started");
        // CRI needs its images in containerd's namespace k8s.io.
        for kind in ["pause", "busybox"] {
            let tar = image(dir, kind);
            phase("image built");
            let out = cri
                .containerd
                .ctr("k8s.io")
                .args(["images", "import"])
                .arg(&tar)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "ctr images import {kind}: {}",
                text(&out.stderr)
            );
        }
        cri
    }

    fn hullcri(&self, args: &[&str]) -> Answer {
        use std::io::{BufRead, Write};
        let mut c = self.client.lock().unwrap_or_else(|e| e.into_inner());
        let line = serde_json::to_string(args).unwrap();
        writeln!(c.stdin, "{line}").expect("hullcri serve takes a command");
        let mut answer = String::new();
        c.stdout.read_line(&mut answer).unwrap();
        assert!(!answer.is_empty(), "hullcri serve ended (at {args:?})");
        let v: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("hullcri serve answered {answer:?}: {e}"));
        Answer {
            code: v["code"].as_i64().expect("a code") as i32,
            stdout: v["stdout"].as_str().unwrap_or_default().to_string(),
            stderr: v["stderr"].as_str().unwrap_or_default().to_string(),
        }
    }

    /// A CRI call that must succeed: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.hullcri(args);
        let log = std::fs::read_to_string(&self.containerd.log).unwrap_or_default();
        assert!(
            out.code == 0,
            "hullcri {args:?}: exit {}\nstdout: {}\nstderr: {}\ncontainerd's log (end):\n{}",
            out.code,
            out.stdout,
            out.stderr,
            tail(&log, 60)
        );
        out.stdout
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("hullcri {args:?}: {e}: {out}"))
    }

    /// ExecSync: (exit code, stdout, stderr).
    fn exec(&self, id: &str, argv: &[&str]) -> (i32, String, String) {
        let mut args = vec!["exec", "--timeout", "120", id, "--"];
        args.extend_from_slice(argv);
        let out = self.hullcri(&args);
        (out.code, out.stdout, out.stderr)
    }

    fn exec_ok(&self, id: &str, argv: &[&str]) -> String {
        let (code, out, err) = self.exec(id, argv);
        assert_eq!(
            code, 0,
            "exec {argv:?} in {id}: stdout {out:?} stderr {err:?}"
        );
        out
    }

    fn write(&self, name: &str, v: &serde_json::Value) -> String {
        let p = self.dir.join(name);
        std::fs::write(&p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// A host-network pod (no CNI here) with `extra` merged into its config: the pod's id and
    /// the path of its config file.
    fn run_pod(&self, name: &str, extra: serde_json::Value) -> (String, String) {
        self.run_pod_on(HANDLER, name, extra)
    }

    /// `run_pod` with the runtime handler `handler`.
    fn run_pod_on(&self, handler: &str, name: &str, extra: serde_json::Value) -> (String, String) {
        let mut pod = serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid")},
            "log_directory": self.logs.join(name),
            "linux": {"security_context": {"namespace_options": {"network": "NODE"}}},
        });
        merge(&mut pod, extra);
        let file = self.write(&format!("{name}.pod.json"), &pod);
        let id = self
            .ok(&["runp", "--runtime", handler, &file])
            .trim()
            .to_string();
        assert_eq!(id.len(), 64, "a pod id: {id:?}");
        (id, file)
    }

    /// Creates and starts a container of busybox running `sh -c script` in pod `pod`.
    fn run_container(&self, pod: &(String, String), name: &str, script: &str) -> String {
        self.run_container_with(pod, name, script, serde_json::json!({}))
    }

    /// `run_container` with `extra` merged into the container's config.
    fn run_container_with(
        &self,
        pod: &(String, String),
        name: &str,
        script: &str,
        extra: serde_json::Value,
    ) -> String {
        let mut c = serde_json::json!({
            "metadata": {"name": name},
            "image": {"image": "docker.io/hull-test/busybox:latest"},
            "command": ["sh", "-c", script],
            "log_path": format!("{name}.log"),
        });
        merge(&mut c, extra);
        let file = self.write(&format!("{name}.ctr.json"), &c);
        let id = self
            .ok(&["create", &pod.0, &file, &pod.1])
            .trim()
            .to_string();
        self.ok(&["start", &id]);
        id
    }

    fn container_state(&self, id: &str) -> (String, i64) {
        let v = self.json(&["inspect", id]);
        let s = &v["status"];
        (
            s["state"].as_str().unwrap_or_default().to_string(),
            s["exit_code"].as_i64().unwrap_or(0),
        )
    }

    /// The CRI log file of container `name` of pod `pod` (once it has `needle`).
    fn log_with(&self, pod: &str, name: &str, needle: &str) -> String {
        let path = self.logs.join(pod).join(format!("{name}.log"));
        wait_until(&format!("{needle:?} in {}", path.display()), || {
            std::fs::read_to_string(&path).is_ok_and(|l| l.contains(needle))
        });
        std::fs::read_to_string(&path).unwrap()
    }

    /// Nothing of hull's is left: no VMM, no shim, no mount of the shim's, no state below the
    /// shim root, no shim socket that was not there before.
    fn assert_nothing_left(&self, sockets_before: &BTreeSet<String>) {
        wait_until("every hull-vmm gone", || vmm_pids(&self.dir).is_empty());
        wait_until("every shim of hull gone", || shims().is_empty());
        // A dead shim's `delete` (containerd's cleanup) unmounts the task's root file system
        // last, after the sandbox's own cleanup: what it leaves is checked once it has ended.
        wait_until(
            "every shim invocation of hull ended (delete included)",
            || hull_tests::procs::shim_processes().is_empty(),
        );
        assert_eq!(
            mounts_below(&self.shim_root),
            Vec::<String>::new(),
            "mounts left"
        );
        let tasks = self
            .dir
            .join("ctd/root/run/io.containerd.runtime.v2.task/k8s.io");
        let task_mounts: Vec<String> = mounts_below(&tasks);
        if !task_mounts.is_empty() {
            // The shim's `delete` (after a dead shim) logs why into containerd's log.
            let log = std::fs::read_to_string(&self.containerd.log).unwrap_or_default();
            panic!(
                "rootfs mounts left: {task_mounts:?}\ncontainerd's log (end):\n{}",
                tail(&log, 80)
            );
        }
        let state: Vec<_> = std::fs::read_dir(self.shim_root.join("k8s.io"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(state.is_empty(), "shim state left: {state:?}");
        let new: Vec<_> = shim_sockets().difference(sockets_before).cloned().collect();
        assert!(
            new.is_empty(),
            "shim sockets left in {SHIM_SOCKETS}: {new:?}"
        );
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        let c = self.client.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = c.child.kill();
        let _ = c.child.wait();
        // A failed test must not leave VMs running in the test host.
        for p in vmm_pids(&self.dir) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for m in mounts_below(&self.shim_root).into_iter().rev() {
            let _ = nix::mount::umount2(Path::new(&m), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < WAIT_LIMIT,
            "timed out waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn shim_sockets() -> BTreeSet<String> {
    std::fs::read_dir(SHIM_SOCKETS)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn host_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

fn mem_total_kib(s: &str) -> u64 {
    s.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("a MemTotal line: {s:?}"))
}

/// A number in CRI's JSON (64-bit values are strings in the protobuf mapping).
fn num(v: &serde_json::Value) -> u64 {
    match v {
        serde_json::Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_u64().unwrap_or(0),
    }
}

#[test]
fn cri_pods_run_in_hull_vms() {
    require_kvm();
    let t0 = Instant::now();
    let phase = |what: &str| eprintln!("cri_vm: {what} at {:.1} s", t0.elapsed().as_secs_f64());
    let tmp = TempDir::new("hull-cri");
    let c = Cri::start(tmp.path());
    phase("containerd up, images imported");
    let sockets_before = shim_sockets();
    let host = host_release();

    // ---- A pod with two containers sharing its IPC and pid namespaces.
    let pod = c.run_pod(
        "p1",
        serde_json::json!({
            "annotations": {"io.hull.vm.memory_mib": "384"},
            "linux": {"security_context": {"namespace_options": {"pid": "POD", "ipc": "POD"}}},
        }),
    );
    phase("pod p1 running");
    let a = c.run_container(&pod, "a", "echo a-started; uname -r; exec sleep 1001");
    let b = c.run_container(&pod, "b", "echo b-started >&2; exec sleep 1002");
    assert_eq!(
        vmm_pids(tmp.path()).len(),
        1,
        "one hull-vmm for the pod (sandbox + two containers)"
    );
    let pod_shims = shims();
    assert_eq!(pod_shims.len(), 1, "one shim for the pod: {:?}", pod_shims);
    assert_eq!(
        pod_shims[0].1, pod.0,
        "the shim is the pod's (started for its sandbox id)"
    );

    // The containers run on the VM's kernel, in a VM of the pod's annotated size.
    let release = c.exec_ok(&a, &["uname", "-r"]).trim().to_string();
    assert!(
        !release.is_empty() && release != host,
        "guest kernel {release:?} vs host {host:?}"
    );
    let mem = mem_total_kib(&c.exec_ok(&b, &["grep", "MemTotal", "/proc/meminfo"]));
    assert!(
        (256 * 1024..=384 * 1024).contains(&mem),
        "MemTotal {mem} KiB in a VM of io.hull.vm.memory_mib=384"
    );

    // The pod's IPC and pid namespaces are shared: same namespaces, and b sees a's process.
    for ns in ["ipc", "pid"] {
        let path = format!("/proc/self/ns/{ns}");
        let in_a = c.exec_ok(&a, &["readlink", &path]);
        let in_b = c.exec_ok(&b, &["readlink", &path]);
        assert_eq!(in_a, in_b, "{ns} namespace of a and b");
    }
    let ps = c.exec_ok(&b, &["ps", "-o", "args"]);
    assert!(
        ps.contains("sleep 1001"),
        "b sees a's sleep in the pod's pid namespace:\n{ps}"
    );
    // A host-network pod (hostNetwork): the VM's own network stack, loopback only.
    assert_eq!(c.exec_ok(&a, &["ls", "/sys/class/net"]), "lo\n");
    // Its port-forward: containerd dials 127.0.0.1:<port> in the host's namespace, where the
    // shim listens for each port that listens in the guest (here one on the guest's loopback
    // only). A port nothing listens on is refused, as with runc.
    c.exec_ok(
        &a,
        &[
            "sh",
            "-c",
            "mkdir -p /www && echo host-net-ok > /www/index.html && httpd -p 127.0.0.1:18081 -h /www",
        ],
    );
    port_forward(&c, &pod.0, 18081, "host-net-ok");
    let refused = c.hullcri(&["portforward", &pod.0, "18099", "x"]);
    assert!(
        refused.code != 0 && refused.stderr.contains("18099"),
        "port-forward to a port nothing listens on: {refused:?}"
    );

    // Separate root file systems all the same.
    c.exec_ok(&a, &["touch", "/only-in-a"]);
    let (code, _, _) = c.exec(&b, &["test", "-e", "/only-in-a"]);
    assert_eq!(code, 1, "a's file is not in b's rootfs");

    // ExecSync: exit codes and both streams.
    let (code, out, err) = c.exec(&a, &["sh", "-c", "echo out; echo err >&2; exit 7"]);
    assert_eq!((code, out.as_str(), err.as_str()), (7, "out\n", "err\n"));

    // ExecSync with a timeout: the call fails saying so, and the process is gone (killed and
    // reaped; the kubelet's next ExecSync finds no trace of it).
    let t = Instant::now();
    let out = c.hullcri(&["exec", "--timeout", "3", &a, "--", "sleep", "1077"]);
    assert_ne!(out.code, 0, "ExecSync past its timeout: {out:?}");
    assert!(
        out.stderr.contains("DEADLINE_EXCEEDED") || out.stderr.contains("timeout"),
        "the timeout is reported: {out:?}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(60),
        "ExecSync returned {:?} after its 3 s timeout",
        t.elapsed()
    );
    let ps = c.exec_ok(&a, &["ps", "-o", "pid,stat,args"]);
    assert!(
        !ps.contains("sleep 1077"),
        "the timed-out process is left in the container:\n{ps}"
    );

    // ExecSync runs under the container's confinement: a RuntimeDefault seccomp profile
    // (containerd's default profile) and the container's capabilities hold for the exec'd
    // process as for the container's own.
    let fields = "^(Seccomp|NoNewPrivs|CapPrm|CapEff|CapBnd):";
    let sc = c.run_container_with(
        &pod,
        "sc",
        &format!("grep -E '{fields}' /proc/self/status > /init-view; exec sleep 1005"),
        serde_json::json!({"linux": {"security_context": {"seccomp": {"profile_type": "RuntimeDefault"}}}}),
    );
    let init_view = std::cell::RefCell::new(String::new());
    wait_until("sc's init wrote its view", || {
        let (code, out, _) = c.exec(&sc, &["cat", "/init-view"]);
        *init_view.borrow_mut() = out;
        code == 0 && init_view.borrow().contains("CapBnd")
    });
    let init_view = init_view.into_inner();
    assert!(
        init_view.contains("Seccomp:\t2\n"),
        "RuntimeDefault gives the container a filter: {init_view}"
    );
    let exec_view = c.exec_ok(&sc, &["grep", "-E", fields, "/proc/self/status"]);
    assert_eq!(
        exec_view, init_view,
        "ExecSync is confined as the container"
    );
    c.ok(&["rm", &sc]);

    // The CRI log files (what `kubectl logs` reads): each stream tagged.
    let log = c.log_with("p1", "a", &release);
    assert!(log.contains(" stdout F a-started"), "a's log:\n{log}");
    let log = c.log_with("p1", "b", "b-started");
    assert!(log.contains(" stderr F b-started"), "b's log:\n{log}");

    // ContainerStats: the guest cgroup's figures.
    let stats = c.json(&["stats", &a]);
    let s = &stats["stats"];
    assert!(
        num(&s["memory"]["working_set_bytes"]["value"]) > 0,
        "memory in {stats}"
    );
    assert!(
        num(&s["cpu"]["usage_core_nano_seconds"]["value"]) > 0,
        "cpu in {stats}"
    );

    // UpdateContainerResources reaches the container's cgroup in the guest.
    let res = c.write(
        "update.json",
        &serde_json::json!({"memory_limit_in_bytes": 64 << 20, "cpu_quota": 50000, "cpu_period": 100000}),
    );
    c.ok(&["update", &b, &res]);
    let max = c.exec_ok(
        &b,
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/$(cut -d: -f3 /proc/self/cgroup)/memory.max",
        ],
    );
    assert_eq!(
        max.trim(),
        (64u64 << 20).to_string(),
        "memory.max after the update"
    );

    // StopContainer: SIGTERM reaches a (not pid 1 of the pod's pid namespace: exit 143).
    c.ok(&["stop", "--timeout", "30", &a]);
    let (state, code) = c.container_state(&a);
    assert_eq!(
        (state.as_str(), code),
        ("CONTAINER_EXITED", 143),
        "a after StopContainer"
    );
    c.ok(&["rm", &a]);
    // b still runs, in the same VM.
    assert_eq!(c.exec_ok(&b, &["echo", "alive"]), "alive\n");

    // StopPodSandbox + RemovePodSandbox: nothing left.
    phase("pod p1 checked");
    c.ok(&["stopp", &pod.0]);
    c.ok(&["rmp", &pod.0]);
    c.assert_nothing_left(&sockets_before);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", 18081)).is_err(),
        "the pod's forwarded port still listens on the host after the pod is gone"
    );

    // ---- Pods in the node's namespaces (docs/kubernetes.md): hostPID and hostIPC are refused
    // at RunPodSandbox with the reason, leaving nothing; hostNetwork runs on the VM's own
    // network stack, loopback only (pod p1 above is one: its container sees `lo` alone).
    for (mode, field) in [("pid", "hostPID"), ("ipc", "hostIPC")] {
        let name = format!("host-{mode}");
        let pod = serde_json::json!({
            "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid")},
            "log_directory": c.logs.join(&name),
            "linux": {"security_context": {"namespace_options": {"network": "NODE", mode: "NODE"}}},
        });
        let file = c.write(&format!("{name}.pod.json"), &pod);
        let out = c.hullcri(&["runp", "--runtime", HANDLER, &file]);
        assert_ne!(out.code, 0, "RunPodSandbox with {field}: {out:?}");
        assert!(
            out.stderr.contains(&format!("({field}: true)")) && out.stderr.contains("runc"),
            "the reason reaches the kubelet: {out:?}"
        );
        c.assert_nothing_left(&sockets_before);
    }
    phase("host namespaces refused");

    // ---- The pod of docs/kubernetes.md, as written there (kubelet's part played by the test).
    phase("pod p1 removed");
    docs_pod(&c, &host);
    phase("docs pod done");
    pod_network(&c);
    phase("pod network done");
    pod_transfers_on_each_backend(&c);
    phase("pod transfers on both backends done");
    c.assert_nothing_left(&sockets_before);
    phase("docs pod done");

    // ---- Faults: the shim killed with SIGKILL.
    let pod = c.run_pod("p2", serde_json::json!({}));
    let x = c.run_container(&pod, "x", "exec sleep 1003");
    let killed = shims();
    assert_eq!(killed.len(), 1, "one shim: {killed:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(killed[0].0),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // containerd notices, runs `containerd-shim-hull-v2 delete`: the task is gone with its VM.
    wait_until("x exited after its shim was killed", || {
        c.container_state(&x).0 == "CONTAINER_EXITED"
    });
    wait_until("the pod's VM gone after its shim was killed", || {
        vmm_pids(tmp.path()).is_empty()
    });
    c.ok(&["stopp", &pod.0]);
    c.ok(&["rmp", &pod.0]);
    c.assert_nothing_left(&sockets_before);

    phase("shim kill done");
    // ---- Faults: the VMM killed with SIGKILL: every container of the pod exits 137.
    let pod = c.run_pod("p3", serde_json::json!({}));
    let y = c.run_container(&pod, "y", "exec sleep 1004");
    let vmm = vmm_pids(tmp.path());
    assert_eq!(vmm.len(), 1, "one VMM");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(vmm[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    wait_until("y exited after its VM was killed", || {
        c.container_state(&y).0 == "CONTAINER_EXITED"
    });
    assert_eq!(
        c.container_state(&y).1,
        137,
        "y's exit code after its VM was killed"
    );
    c.ok(&["rm", &y]);
    c.ok(&["stopp", &pod.0]);
    c.ok(&["rmp", &pod.0]);
    c.assert_nothing_left(&sockets_before);
    phase("VMM kill done");
}

const CNI_BRIDGE: &str = "hullbr0";
const CNI_SUBNET: &str = "10.99.0.0/24";
const CNI_GATEWAY: &str = "10.99.0.1";

/// Pods on a real CNI (bridge + host-local): the guest has the pod IP, the host reaches a
/// server in the pod at the pod IP, the pod reaches the bridge, two pods reach each other, the
/// pod's DNS config is the container's /etc/resolv.conf; removing the pods leaves no tap, no tc
/// filter (they go with the taps and the namespace) and no namespace.
fn pod_network(c: &Cri) {
    let before = netns_and_taps();
    let before_mounts = nsfs_mounts();
    let before_vms = vmm_pids(&c.dir).len();
    let net = serde_json::json!({"linux": {"security_context": {"namespace_options": {"network": "POD"}}}});
    let mut extra = net.clone();
    merge(
        &mut extra,
        serde_json::json!({"dns_config": {"servers": ["10.99.0.53"], "searches": ["hull.test"], "options": ["ndots:2"]}}),
    );
    let web = "mkdir -p /www && echo pod-ok-$(hostname) > /www/index.html && exec httpd -f -p 8080 -h /www";
    let pod1 = c.run_pod("n1", extra);
    let w1 = c.run_container(&pod1, "web", web);
    let ip1 = c.json(&["inspectp", &pod1.0])["status"]["network"]["ip"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        ip1.starts_with("10.99.0."),
        "pod n1's IP from the CNI: {ip1:?}"
    );
    // The container sees the pod IP on its interface (the guest's NIC).
    let addrs = c.exec_ok(&w1, &["ip", "-o", "-4", "addr", "show"]);
    assert!(
        addrs.contains(&format!("{ip1}/24")),
        "the pod IP {ip1} in the container:\n{addrs}"
    );
    // The host reaches the server in the container at the pod IP.
    let mut got = Err(String::new());
    for _ in 0..30 {
        got = http_get(&ip1, 8080);
        if got.as_ref().is_ok_and(|b| b.contains("pod-ok")) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let body = got.unwrap_or_else(|e| panic!("the host reaches {ip1}:8080: {e}"));
    assert!(body.contains("pod-ok"), "the server's page: {body}");
    // kubectl port-forward (CRI PortForward): containerd dials 127.0.0.1 in the pod's
    // namespace; it reaches the server, and one that listens on the guest's loopback only.
    port_forward(c, &pod1.0, 8080, "pod-ok");
    c.exec_ok(
        &w1,
        &[
            "sh",
            "-c",
            "mkdir -p /lo && echo loopback-only > /lo/index.html && httpd -p 127.0.0.1:8081 -h /lo",
        ],
    );
    port_forward(c, &pod1.0, 8081, "loopback-only");
    // The container reaches the host's bridge address.
    c.exec_ok(&w1, &["ping", "-c", "1", "-W", "30", CNI_GATEWAY]);
    // DNS from the pod config.
    let resolv = c.exec_ok(&w1, &["cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains("nameserver 10.99.0.53") && resolv.contains("search hull.test"),
        "the pod's DNS config in /etc/resolv.conf:\n{resolv}"
    );

    // A second pod reaches the first by pod IP. It is privileged: a privileged container
    // manages links in the guest as it would on the node under runc (a bridge, a dummy link
    // in it, a VLAN on the pod's interface); an unprivileged one is refused, as under runc.
    let mut privileged = net.clone();
    merge(
        &mut privileged,
        serde_json::json!({"linux": {"security_context": {"privileged": true}}}),
    );
    let pod2 = c.run_pod("n2", privileged);
    // Its container also mounts a host directory (a shared mount, as the kubelet requires)
    // with mountPropagation HostToContainer and Bidirectional: containerd writes rslave and
    // rshared binds and rootfsPropagation rshared.
    let vol = c.dir.join("propagated");
    std::fs::create_dir_all(vol.join("sub")).unwrap();
    let v = vol.display().to_string();
    let sh = |cmd: &str| {
        let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
        assert!(st.success(), "{cmd}");
    };
    sh(&format!("mount --bind {v} {v} && mount --make-shared {v}"));
    let w2 = c.run_container_with(
        &pod2,
        "client",
        "exec sleep 1000",
        serde_json::json!({
            "linux": {"security_context": {"privileged": true}},
            "mounts": [
                {"container_path": "/h2c", "host_path": v, "propagation": "PROPAGATION_HOST_TO_CONTAINER"},
                {"container_path": "/bidi", "host_path": v, "propagation": "PROPAGATION_BIDIRECTIONAL"},
            ],
        }),
    );
    // A mount the node makes under the volume after the container started is in the container
    // through both.
    sh(&format!(
        "mount -t tmpfs nodemount {v}/sub && echo from-the-node > {v}/sub/f"
    ));
    assert_eq!(
        c.exec_ok(&w2, &["cat", "/h2c/sub/f", "/bidi/sub/f"]),
        "from-the-node\nfrom-the-node\n",
        "the node's mount reached HostToContainer and Bidirectional volumes"
    );
    let links = c.exec_ok(
        &w2,
        &[
            "sh",
            "-c",
            "brctl addbr br0 && ip link add d0 type dummy && brctl addif br0 d0 && \
             ip link add link eth0 name eth0.7 type vlan id 7 && ip link set br0 up && \
             ls /sys/class/net | tr '\\n' ' '; cat /sys/class/net/d0/master/uevent | grep INTERFACE",
        ],
    );
    assert_eq!(
        links, "br0 d0 eth0 eth0.7 lo INTERFACE=br0\n",
        "links a privileged container made in its pod's guest"
    );
    let (code, _, err) = c.exec(&w1, &["ip", "link", "add", "d1", "type", "dummy"]);
    assert!(
        code != 0 && err.contains("not permitted"),
        "an unprivileged container adds a link: {code} {err}"
    );
    let page = c.exec_ok(
        &w2,
        &["wget", "-q", "-O", "-", &format!("http://{ip1}:8080/")],
    );
    assert!(page.contains("pod-ok"), "pod n2 reaches pod n1: {page}");

    for (pod, ctr) in [(&pod1, &w1), (&pod2, &w2)] {
        c.ok(&["stop", "--timeout", "5", ctr]);
        c.ok(&["rm", ctr]);
        c.ok(&["stopp", &pod.0]);
        c.ok(&["rmp", &pod.0]);
    }
    // The pod is gone; the node's own mount under the volume is not.
    let kept = std::fs::read_to_string(vol.join("sub/f"));
    let _ = Command::new("sh")
        .args(["-c", &format!("umount {v}/sub; umount {v}")])
        .status();
    assert_eq!(
        kept.ok().as_deref(),
        Some("from-the-node\n"),
        "removing the pod took the node's mount under the volume"
    );
    // 20 create/remove cycles of a pod on the network leave nothing either: no namespace, no
    // tap (tc filters go with the taps and the namespace), no VM.
    for n in 0..20 {
        let start = Instant::now();
        let pod = c.run_pod(&format!("cycle{n}"), serde_json::json!({"linux": {"security_context": {"namespace_options": {"network": "POD"}}}}));
        c.ok(&["stopp", &pod.0]);
        c.ok(&["rmp", &pod.0]);
        eprintln!("pod cycle #{n}: {:?}", start.elapsed());
    }
    wait_until("pod network namespaces and taps gone", || {
        netns_and_taps() == before
    });
    assert_eq!(nsfs_mounts(), before_mounts, "namespace mounts left");
    wait_until("the pods' VMs gone", || {
        vmm_pids(&c.dir).len() == before_vms
    });
}

/// Bulk transfers with a pod on the CNI network on each virtio-net backend: for the handler
/// `hull` (the host's vhost-net, what `net_backend = "auto"` picks here) and `hull-userspace`
/// (hull-vmm's own device), one pod with one container whose VM is shown to be on that backend
/// (the kernel's `vhost-<pid>` worker of its hull-vmm runs, or does not), then 16 MiB from the
/// host (a server of the test's on the CNI bridge's address) to the container and 16 MiB
/// back, each SHA-256-checked by both ends, from the pod IP. Removing the pods leaves no VM,
/// shim, namespace or tap.
fn pod_transfers_on_each_backend(c: &Cri) {
    let before = netns_and_taps();
    let before_mounts = nsfs_mounts();
    let before_vms = vmm_pids(&c.dir);
    for (handler, vhost) in [(HANDLER, true), (USERSPACE_HANDLER, false)] {
        let name = format!("xfer-{handler}");
        let what = format!("pod {name} (handler {handler})");
        let pod = c.run_pod_on(
            handler,
            &name,
            serde_json::json!({"linux": {"security_context": {"namespace_options": {"network": "POD"}}}}),
        );
        let ctr = c.run_container(&pod, "xfer", "exec sleep 1000");
        let ip = c.json(&["inspectp", &pod.0])["status"]["network"]["ip"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            ip.starts_with("10.99.0."),
            "{what}: its IP from the CNI: {ip:?}"
        );
        // Its VM: the one hull-vmm that was not there before it.
        let vmm: Vec<i32> = vmm_pids(&c.dir)
            .into_iter()
            .filter(|p| !before_vms.contains(p))
            .collect();
        assert_eq!(vmm.len(), 1, "{what}: one new hull-vmm: {vmm:?}");
        // Its shim is hull's (the wrapper ran the real one) and was started for the pod.
        assert!(
            shims().iter().any(|(_, id)| *id == pod.0),
            "{what}: no shim of hull's for the pod: {:?}",
            shims()
        );
        assert_net_backend(vmm[0], vhost, &what);
        check_transfers(CNI_GATEWAY, &ip, &what, &|script| {
            c.exec_ok(&ctr, &["sh", "-c", script])
        });
        assert_net_backend(vmm[0], vhost, &what);
        c.ok(&["stop", "--timeout", "5", &ctr]);
        c.ok(&["rm", &ctr]);
        c.ok(&["stopp", &pod.0]);
        c.ok(&["rmp", &pod.0]);
        wait_until(&format!("{what}'s VM gone"), || {
            !vmm_pids(&c.dir).contains(&vmm[0])
        });
    }
    wait_until("the transfer pods' namespaces and taps gone", || {
        netns_and_taps() == before
    });
    assert_eq!(nsfs_mounts(), before_mounts, "namespace mounts left");
    wait_until("the transfer pods' VMs gone", || {
        vmm_pids(&c.dir) == before_vms
    });
}

/// CRI PortForward to `port` of pod `pod` with an HTTP request: retried for up to 30 s (the
/// shim learns a new listening port from the guest within a moment) until the answer holds
/// `needle`.
fn port_forward(c: &Cri, pod: &str, port: u16, needle: &str) -> String {
    let mut last = None;
    for _ in 0..30 {
        let out = c.hullcri(&[
            "portforward",
            pod,
            &port.to_string(),
            "GET / HTTP/1.0\r\n\r\n",
        ]);
        if out.code == 0 && out.stdout.contains(needle) {
            return out.stdout;
        }
        last = Some(out);
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("port-forward to {pod}:{port} never answered {needle:?}: {last:?}");
}

/// docs/kubernetes.md's RuntimeClass and pod, translated as the kubelet does: the
/// RuntimeClass's handler is the runtime handler, the pod's annotations go on the sandbox, the
/// container's command and memory limit on the container. Its log shows the guest kernel, and
/// its VM has the size the annotations ask for.
fn docs_pod(c: &Cri, host: &str) {
    let yaml = |heading: &str| -> serde_json::Value {
        let block = doc_block("docs/kubernetes.md", heading, "yaml");
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys, json, yaml; json.dump(yaml.safe_load(sys.stdin), sys.stdout)",
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut p| {
                use std::io::Write;
                p.stdin.take().unwrap().write_all(block.as_bytes())?;
                p.wait_with_output()
            })
            .expect("python3 with yaml (package python3-yaml)");
        assert!(
            out.status.success(),
            "docs/kubernetes.md {heading}: not YAML"
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let rc = yaml("## RuntimeClass");
    assert_eq!(rc["kind"], "RuntimeClass");
    assert_eq!(
        rc["handler"], HANDLER,
        "the RuntimeClass's handler is containerd's runtime"
    );
    let pod = yaml("## A pod");
    assert_eq!(pod["spec"]["runtimeClassName"], rc["metadata"]["name"]);
    let name = pod["metadata"]["name"].as_str().unwrap();
    let annotations = pod["metadata"]["annotations"].clone();
    let ctr = &pod["spec"]["containers"][0];
    let limit = ctr["resources"]["limits"]["memory"].as_str().unwrap();
    let limit_bytes: u64 = limit.strip_suffix("Mi").unwrap().parse::<u64>().unwrap() << 20;
    // The docs name docker.io's busybox: the test's own busybox under that name.
    let image = ctr["image"].as_str().unwrap();
    let out = c
        .containerd
        .ctr("k8s.io")
        .args([
            "images",
            "tag",
            "--force",
            "docker.io/hull-test/busybox:latest",
            image,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ctr images tag: {}",
        text(&out.stderr)
    );

    let handler = rc["handler"].as_str().unwrap();
    let sandbox = serde_json::json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("{name}-uid")},
        "log_directory": c.logs.join(name),
        "annotations": annotations,
        "linux": {"security_context": {"namespace_options": {"network": "NODE"}}},
    });
    let pod_file = c.write("docs.pod.json", &sandbox);
    let pod_id = c
        .ok(&["runp", "--runtime", handler, &pod_file])
        .trim()
        .to_string();
    let ctr_name = ctr["name"].as_str().unwrap();
    let config = serde_json::json!({
        "metadata": {"name": ctr_name},
        "image": {"image": image},
        "command": ctr["command"],
        "log_path": format!("{ctr_name}.log"),
        "linux": {"resources": {"memory_limit_in_bytes": limit_bytes}},
    });
    let ctr_file = c.write("docs.ctr.json", &config);
    let id = c
        .ok(&["create", &pod_id, &ctr_file, &pod_file])
        .trim()
        .to_string();
    c.ok(&["start", &id]);

    // `kubectl logs hello-hull`: the VM's kernel release, not the node's.
    let release = c.exec_ok(&id, &["uname", "-r"]).trim().to_string();
    assert_ne!(release, host);
    let log = c.log_with(name, ctr_name, &release);
    assert!(
        !log.contains(host),
        "the node's kernel in the pod's log:\n{log}"
    );
    // The VM's size from the annotations.
    let vcpus: u32 = annotations["io.hull.vm.vcpus"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mib: u64 = annotations["io.hull.vm.memory_mib"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let nproc = c.exec_ok(&id, &["nproc"]);
    assert_eq!(nproc.trim(), vcpus.to_string(), "vCPUs of the pod's VM");
    let mem = mem_total_kib(&c.exec_ok(&id, &["grep", "MemTotal", "/proc/meminfo"]));
    assert!(
        mem <= mib * 1024 && mem >= (mib - 128) * 1024,
        "MemTotal {mem} KiB in a VM of {mib} MiB"
    );
    // The container's memory limit is its cgroup's in the guest.
    let max = c.exec_ok(
        &id,
        &[
            "sh",
            "-c",
            "cat /sys/fs/cgroup/$(cut -d: -f3 /proc/self/cgroup)/memory.max",
        ],
    );
    assert_eq!(
        max.trim(),
        limit_bytes.to_string(),
        "the container's memory limit"
    );
    c.ok(&["stopp", &pod_id]);
    c.ok(&["rmp", &pod_id]);
}
