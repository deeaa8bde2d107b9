//! OCI containers created by hull-agent (youki's libcontainer in the guest), driven with the
//! agent's container calls directly: the bundle is put in a sandbox's share by the test, so
//! this checks the guest side on its own (the runtime's container library and the `hull` CLI
//! have their own tests on top).

mod common;

use std::path::PathBuf;
use std::time::Duration;

use hull_agent_protocol::{
    ContainerInfo, ContainerStats, ContainerStatus, CreateContainerRequest, ErrorKind, ExecRequest,
    ExitStatus, ProcessId, Request, Response, StdStream, StdioSpec,
};
use hull_runtime::agent::AgentClient;
use hull_runtime::config::RuntimeConfig;
use hull_runtime::sandbox::{AgentCalls, Sandbox, SandboxOptions, GUEST_SHARE_DIR};
use hull_tests::vm::{busybox_root, nonce};
use hull_tests::{require_kvm, TempDir};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

use common::CALL_LIMIT;

/// Sandbox options whose agent serves every call: these tests drive the agent directly (a
/// process outside every container), as no front end does.
fn all_calls() -> SandboxOptions {
    SandboxOptions {
        agent_calls: AgentCalls::All,
        ..SandboxOptions::default()
    }
}

fn config() -> RuntimeConfig {
    hull_tests::vm::runtime_config()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A runc-like spec for a busybox container: pid, ipc, uts, mount and cgroup namespaces (the
/// network is the VM's), cgroup `/hull/<id>`, runc's default mounts.
fn spec(id: &str, args: &[&str]) -> Value {
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin:/usr/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "cgroupsPath": format!("/hull/{id}"),
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                {"type": "cgroup"}
            ],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/sys/firmware"],
            "readonlyPaths": ["/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

/// Writes bundle `id` (a busybox rootfs and `spec`) into the sandbox's share, under
/// `bundles/` (the runtime library owns `containers/`, where it bind-mounts); returns its
/// host directory and guest path.
fn bundle(sb: &Sandbox, id: &str, spec: &Value) -> (PathBuf, String) {
    let bundles = sb.share_dir().join("bundles");
    if !bundles.exists() {
        // The guest sees the share read-only but for the mounts the host makes in it (as the
        // runtime binds a container's rootfs): the bundles are a writable bind, whose source is
        // beside the sandbox's directory (the test's temporary root removes it).
        let src = sb.dir().with_file_name(format!("{}-bundles", sb.id()));
        std::fs::create_dir_all(&src).unwrap();
        std::fs::create_dir(&bundles).unwrap();
        nix::mount::mount(
            Some(&src),
            &bundles,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .expect("bind the bundles into the share");
    }
    let host = bundles.join(id);
    if !host.join("rootfs/bin/busybox").exists() {
        busybox_root(
            &host.join("rootfs"),
            &["proc", "sys", "dev", "tmp", "etc", "root"],
        );
    }
    std::fs::write(
        host.join("config.json"),
        serde_json::to_vec_pretty(spec).unwrap(),
    )
    .unwrap();
    (host, format!("{GUEST_SHARE_DIR}/bundles/{id}"))
}

async fn call(c: &AgentClient, req: Request) -> Result<Response, hull_runtime::agent::Error> {
    tokio::time::timeout(CALL_LIMIT, c.call(req, Some(CALL_LIMIT)))
        .await
        .expect("the agent answers")
}

async fn create(c: &AgentClient, id: &str, bundle: &str) -> Result<ProcessId, ErrorKindMsg> {
    let r = call(
        c,
        Request::CreateContainer(CreateContainerRequest {
            id: id.into(),
            bundle: bundle.into(),
            stdio: StdioSpec::default(),
        }),
    )
    .await;
    match r {
        Ok(Response::Spawned { process, .. }) => Ok(process),
        Ok(other) => panic!("create: unexpected reply {other:?}"),
        Err(e) => Err((e.agent_kind(), e.to_string())),
    }
}

type ErrorKindMsg = (Option<ErrorKind>, String);

async fn done(c: &AgentClient, req: Request) {
    let what = format!("{req:?}");
    match call(c, req).await {
        Ok(Response::Done) => {}
        other => panic!("{what}: {other:?}"),
    }
}

async fn info(c: &AgentClient, id: &str) -> ContainerInfo {
    match call(c, Request::ContainerState { id: id.into() }).await {
        Ok(Response::Container(i)) => i,
        other => panic!("state of {id}: {other:?}"),
    }
}

/// Attaches stdout and stderr of `p`, then returns a future-producing handle: call
/// `finish` to wait for the exit and collect both.
struct Output {
    out: tokio::task::JoinHandle<Vec<u8>>,
    err: tokio::task::JoinHandle<Vec<u8>>,
    process: ProcessId,
}

impl Output {
    async fn attach(c: &AgentClient, process: ProcessId) -> Output {
        let read = |s: tokio::net::UnixStream| {
            tokio::spawn(async move {
                let mut v = Vec::new();
                s.take(1 << 20).read_to_end(&mut v).await.unwrap();
                v
            })
        };
        let out = read(c.open_stream(process, StdStream::Stdout).await.unwrap());
        let err = read(c.open_stream(process, StdStream::Stderr).await.unwrap());
        Output { out, err, process }
    }

    async fn finish(self, c: &AgentClient) -> (ExitStatus, String, String) {
        let status = tokio::time::timeout(CALL_LIMIT, c.wait(self.process))
            .await
            .expect("the process exits")
            .unwrap();
        let out = String::from_utf8_lossy(&self.out.await.unwrap()).into_owned();
        let err = String::from_utf8_lossy(&self.err.await.unwrap()).into_owned();
        (status, out, err)
    }
}

/// Runs `args` as a container to its end: create, start, collect, delete.
async fn run_container(sb: &Sandbox, id: &str, spec: Value) -> (ExitStatus, String, String) {
    let c = sb.agent().unwrap();
    let (_, guest) = bundle(sb, id, &spec);
    let p = create(c, id, &guest)
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
    let o = Output::attach(c, p).await;
    done(c, Request::StartContainer { id: id.into() }).await;
    let r = o.finish(c).await;
    done(
        c,
        Request::DeleteContainer {
            id: id.into(),
            force: false,
        },
    )
    .await;
    r
}

fn cgroup_exists(dir: &str) -> String {
    format!("test -d /sys/fs/cgroup/hull/{dir} && echo yes || echo no")
}

#[test]
fn lifecycle_exit_codes_exec_and_resources() {
    require_kvm();
    let dir = TempDir::new("hull-ctr");
    let root = dir.path().join("root");
    let cfg = config();
    runtime().block_on(async {
        let sb = Sandbox::create(&cfg, &root, "ctr", &all_calls())
            .await
            .unwrap_or_else(|e| panic!("create sandbox: {e}"));
        let c = sb.agent().unwrap();

        // create → created, and the program has not run; start → it runs; exit → stopped.
        let marker = nonce();
        let (host, guest) = bundle(
            &sb,
            "life",
            &spec(
                "life",
                &[
                    "sh",
                    "-c",
                    &format!("echo {marker} > /ran; uname -r; hostname; echo $$; cat /proc/self/status | grep -E '^(CapEff|NoNewPrivs)'; echo err >&2; exit 3"),
                ],
            ),
        );
        let p = create(c, "life", &guest).await.expect("create life");
        let i = info(c, "life").await;
        assert_eq!(i.status, ContainerStatus::Created);
        assert_eq!(i.process, p);
        assert!(
            !host.join("rootfs/ran").exists(),
            "the user program ran before start"
        );
        let e = create(c, "life", &guest).await.unwrap_err();
        assert_eq!(e.0, Some(ErrorKind::ContainerExists), "{}", e.1);
        let o = Output::attach(c, p).await;
        done(c, Request::StartContainer { id: "life".into() }).await;
        let (status, out, err) = o.finish(c).await;
        assert_eq!(status, ExitStatus::Exited { code: 3 }, "stderr: {err}");
        assert_eq!(err, "err\n");
        let lines: Vec<&str> = out.lines().collect();
        let version = match call(c, Request::Version).await.unwrap() {
            Response::Version(v) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(lines[0], version.kernel, "uname -r is the guest kernel");
        assert_eq!(lines[1], "life", "hostname from the spec");
        assert_eq!(lines[2], "1", "init is pid 1 in its own pid namespace");
        // CAP_KILL (5), CAP_NET_BIND_SERVICE (10), CAP_AUDIT_WRITE (29).
        assert_eq!(lines[3], "CapEff:\t0000000020000420", "{out}");
        assert_eq!(lines[4], "NoNewPrivs:\t1", "{out}");
        assert_eq!(
            std::fs::read_to_string(host.join("rootfs/ran")).unwrap().trim(),
            marker
        );
        let i = info(c, "life").await;
        assert_eq!(i.status, ContainerStatus::Stopped);
        assert_eq!(i.exit, Some(ExitStatus::Exited { code: 3 }));
        assert!(!i.oom_killed);
        let e = call(c, Request::StartContainer { id: "life".into() })
            .await
            .unwrap_err();
        assert_eq!(e.agent_kind(), Some(ErrorKind::WrongState), "{e}");
        done(
            c,
            Request::DeleteContainer {
                id: "life".into(),
                force: false,
            },
        )
        .await;
        let e = call(c, Request::ContainerState { id: "life".into() })
            .await
            .unwrap_err();
        assert_eq!(e.agent_kind(), Some(ErrorKind::UnknownContainer), "{e}");
        let (_, out, _) = common::run(c, guest_sh(&cgroup_exists("life"))).await;
        assert_eq!(out.trim(), "no", "the cgroup is removed on delete");

        // A program that is not there, and one that cannot be executed: runc's messages, as
        // error kinds the host maps to 127 and 126; nothing is left.
        let (_, g) = bundle(&sb, "nobin", &spec("nobin", &["nosuchprogram"]));
        let e = create(c, "nobin", &g).await.unwrap_err();
        assert_eq!(e.0, Some(ErrorKind::ExecutableNotFound), "{}", e.1);
        assert!(
            e.1.contains(r#"exec: "nosuchprogram": executable file not found in $PATH"#),
            "{}",
            e.1
        );
        let (_, g) = bundle(&sb, "noexec", &spec("noexec", &["/etc"]));
        let e = create(c, "noexec", &g).await.unwrap_err();
        assert_eq!(e.0, Some(ErrorKind::NotExecutable), "{}", e.1);
        assert!(e.1.contains(r#"exec: "/etc": permission denied"#), "{}", e.1);
        for id in ["nobin", "noexec"] {
            let e = call(c, Request::ContainerState { id: id.into() })
                .await
                .unwrap_err();
            assert_eq!(e.agent_kind(), Some(ErrorKind::UnknownContainer), "{e}");
        }

        // A running container: exec with pipes, pids, pause/resume, stats, kill.
        let (_, g) = bundle(&sb, "svc", &spec("svc", &["sleep", "1000"]));
        let init = create(c, "svc", &g).await.expect("create svc");
        done(c, Request::StartContainer { id: "svc".into() }).await;
        assert_eq!(info(c, "svc").await.status, ContainerStatus::Running);
        let exec = |args: &[&str]| {
            Request::Exec(ExecRequest {
                id: "svc".into(),
                process: json!({"args": args, "cwd": "/", "env": ["PATH=/bin"],
                                "user": {"uid": 0, "gid": 0}}),
                stdio: StdioSpec::default(),
            })
        };
        let p = match call(c, exec(&["sh", "-c", "ps -o pid,comm; echo out; exit 7"])).await {
            Ok(Response::Spawned { process, .. }) => process,
            other => panic!("exec: {other:?}"),
        };
        let (status, out, err) = Output::attach(c, p).await.finish(c).await;
        assert_eq!(status, ExitStatus::Exited { code: 7 }, "{err}");
        assert!(
            out.contains("1 sleep"),
            "the exec sees the container's pid namespace: {out}"
        );
        assert!(out.ends_with("out\n"), "{out}");
        let pids = match call(c, Request::ContainerPids { id: "svc".into() }).await {
            Ok(Response::Pids { pids }) => pids,
            other => panic!("pids: {other:?}"),
        };
        assert_eq!(pids, vec![info(c, "svc").await.pid], "only init is left");

        done(c, Request::PauseContainer { id: "svc".into() }).await;
        assert_eq!(info(c, "svc").await.status, ContainerStatus::Paused);
        let e = call(c, exec(&["true"])).await.unwrap_err();
        assert_eq!(e.agent_kind(), Some(ErrorKind::WrongState), "{e}");
        done(c, Request::ResumeContainer { id: "svc".into() }).await;
        assert_eq!(info(c, "svc").await.status, ContainerStatus::Running);

        done(
            c,
            Request::UpdateContainer {
                id: "svc".into(),
                resources: json!({"pids": {"limit": 7}, "memory": {"limit": 67108864}}),
            },
        )
        .await;
        let stats: ContainerStats = match call(c, Request::ContainerStats { id: "svc".into() }).await
        {
            Ok(Response::ContainerStats(s)) => s,
            other => panic!("stats: {other:?}"),
        };
        assert_eq!(stats.pids.current, 1);
        assert_eq!(stats.pids.limit, Some(7));
        assert_eq!(stats.memory.limit, Some(64 << 20));
        assert!(stats.memory.usage > 0);
        assert!(stats.cpu.usage_usec > 0);

        let e = call(
            c,
            Request::DeleteContainer {
                id: "svc".into(),
                force: false,
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.agent_kind(), Some(ErrorKind::WrongState), "{e}");
        done(
            c,
            Request::KillContainer {
                id: "svc".into(),
                signal: 9,
                all: false,
            },
        )
        .await;
        let status = tokio::time::timeout(CALL_LIMIT, c.wait(init))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            status,
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            }
        );
        let e = call(
            c,
            Request::KillContainer {
                id: "svc".into(),
                signal: 15,
                all: false,
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.agent_kind(), Some(ErrorKind::WrongState), "{e}");
        done(
            c,
            Request::DeleteContainer {
                id: "svc".into(),
                force: false,
            },
        )
        .await;

        // A memory limit that an allocation hits: the OOM killer, reported as such.
        let mut s = spec(
            "oom",
            &["sh", "-c", "echo start; x=$(head -c 104857600 /dev/zero | tr '\\0' a); echo survived"],
        );
        s["linux"]["resources"]["memory"] = json!({"limit": 33554432, "swap": 33554432});
        let (status, out, err) = run_container_keep(&sb, "oom", s).await;
        assert_eq!(
            status,
            ExitStatus::Signaled {
                signal: 9,
                core_dumped: false
            },
            "out: {out} err: {err}"
        );
        assert!(!out.contains("survived"), "{out}");
        assert!(info(c, "oom").await.oom_killed, "reported as an OOM kill");
        done(
            c,
            Request::DeleteContainer {
                id: "oom".into(),
                force: false,
            },
        )
        .await;

        // A pids limit that stops fork; rlimits; a readonly root; masked paths; sysctl.
        let mut s = spec(
            "lim",
            &[
                "sh",
                "-c",
                "ulimit -n; touch /x 2>&1; cat /proc/version 2>/dev/null | wc -c; \
                 cat /proc/sys/kernel/msgmax; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; \
                 for i in 1 2 3 4 5 6; do sleep 5 & done; sleep 5 & echo forked=$?; wait",
            ],
        );
        s["root"]["readonly"] = json!(true);
        s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 321, "soft": 123}]);
        s["linux"]["resources"]["pids"] = json!({"limit": 6});
        s["linux"]["maskedPaths"] = json!(["/proc/version"]);
        // An IPC-namespaced sysctl, and a net.* one (docker sets ip_unprivileged_port_start):
        // the VM's network is the container's, so the agent sets net.* ones in the guest.
        s["linux"]["sysctl"] = json!({"kernel.msgmax": "12345", "net.ipv4.ip_unprivileged_port_start": "77"});
        let (status, out, err) = run_container(&sb, "lim", s).await;
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "123", "soft RLIMIT_NOFILE: {out} {err}");
        assert!(lines[1].contains("Read-only file system"), "{out}");
        assert_eq!(lines[2], "0", "/proc/version is masked: {out}");
        assert_eq!(lines[3], "12345", "sysctl applied: {out}");
        assert_eq!(lines[4], "77", "net sysctl applied to the VM's network: {out}");
        assert!(
            err.contains("can't fork") || err.contains("Resource temporarily unavailable"),
            "the pids limit stops fork: {err}"
        );
        let _ = status;

        sb.destroy(Duration::from_secs(60)).await.unwrap();
    });
}

/// Like [`run_container`] without the delete.
async fn run_container_keep(sb: &Sandbox, id: &str, spec: Value) -> (ExitStatus, String, String) {
    let c = sb.agent().unwrap();
    let (_, guest) = bundle(sb, id, &spec);
    let p = create(c, id, &guest)
        .await
        .unwrap_or_else(|e| panic!("create {id}: {e:?}"));
    let o = Output::attach(c, p).await;
    done(c, Request::StartContainer { id: id.into() }).await;
    o.finish(c).await
}

/// `sh -c SCRIPT` in the guest's own root (the agent's initramfs has no shell: use the
/// busybox of the last bundle in the share).
fn guest_sh(script: &str) -> hull_agent_protocol::SpawnRequest {
    let mut r = hull_agent_protocol::SpawnRequest::new([
        format!("{GUEST_SHARE_DIR}/bundles/life/rootfs/bin/busybox"),
        "sh".into(),
        "-c".into(),
        script.into(),
    ]);
    r.env = vec!["PATH=/nonexistent".into()];
    r
}

#[test]
fn terminal_user_seccomp_and_shared_namespaces() {
    require_kvm();
    let dir = TempDir::new("hull-ctr2");
    let root = dir.path().join("root");
    let cfg = config();
    runtime().block_on(async {
        let sb = Sandbox::create(&cfg, &root, "ctr2", &all_calls())
            .await
            .unwrap_or_else(|e| panic!("create sandbox: {e}"));
        let c = sb.agent().unwrap();

        // A terminal: libcontainer makes it in the container and hands the master to the
        // agent over the console socket; its size is the one asked for, and resizes reach it.
        let mut s = spec("tty", &["sh", "-c", "tty; stty size; read x; stty size"]);
        s["process"]["terminal"] = json!(true);
        let (_, g) = bundle(&sb, "tty", &s);
        let p = match call(
            c,
            Request::CreateContainer(CreateContainerRequest {
                id: "tty".into(),
                bundle: g,
                stdio: StdioSpec::Terminal {
                    rows: 33,
                    cols: 101,
                },
            }),
        )
        .await
        {
            Ok(Response::Spawned { process, .. }) => process,
            other => panic!("create tty: {other:?}"),
        };
        let mut out = c.open_stream(p, StdStream::Stdout).await.unwrap();
        done(c, Request::StartContainer { id: "tty".into() }).await;
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("33 101") {
            let n = tokio::time::timeout(CALL_LIMIT, out.read(&mut buf))
                .await
                .expect("terminal output")
                .unwrap();
            assert!(
                n > 0,
                "terminal closed early: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
        done(
            c,
            Request::ResizeTerminal {
                process: p,
                rows: 44,
                cols: 55,
            },
        )
        .await;
        let mut input = c.open_stream(p, StdStream::Stdin).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut input, b"go\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        out.read_to_end(&mut rest).await.unwrap();
        seen.extend_from_slice(&rest);
        let text = String::from_utf8_lossy(&seen).replace('\r', "");
        let status = c.wait(p).await.unwrap();
        assert_eq!(status, ExitStatus::Exited { code: 0 }, "{text}");
        assert!(text.contains("/dev/pts/0\n"), "{text}");
        assert!(text.contains("33 101\n"), "{text}");
        assert!(text.contains("44 55\n"), "resize reached the guest: {text}");
        done(
            c,
            Request::DeleteContainer {
                id: "tty".into(),
                force: false,
            },
        )
        .await;

        // The user, its groups and the umask.
        let mut s = spec("user", &["sh", "-c", "id; umask"]);
        s["process"]["user"] =
            json!({"uid": 1000, "gid": 1001, "additionalGids": [27, 44], "umask": 63});
        let (status, out, err) = run_container(&sb, "user", s).await;
        assert_eq!(status, ExitStatus::Exited { code: 0 }, "{err}");
        assert_eq!(out, "uid=1000 gid=1001 groups=27,44\n0077\n", "{err}");

        // A seccomp profile that denies mkdir with EPERM (and allows the rest).
        let mut s = spec(
            "sec",
            &["sh", "-c", "mkdir /tmp/d 2>&1; echo rc=$?; ls -d /tmp"],
        );
        s["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
        });
        let (status, out, err) = run_container(&sb, "sec", s).await;
        assert_eq!(status, ExitStatus::Exited { code: 0 }, "{err}");
        assert!(out.contains("Operation not permitted"), "{out}");
        assert!(out.contains("rc=1\n/tmp\n"), "{out}");

        // Two containers in one sandbox: separate pid namespaces and root file systems, and a
        // third that joins the first one's pid namespace by path (as a pod's containers join
        // its sandbox container).
        let (_, g) = bundle(&sb, "pod", &spec("pod", &["sleep", "1000"]));
        create(c, "pod", &g).await.expect("create pod");
        done(c, Request::StartContainer { id: "pod".into() }).await;
        let pod_pid = info(c, "pod").await.pid;
        let (host_other, _) = bundle(&sb, "other", &spec("other", &["true"]));
        std::fs::write(host_other.join("rootfs/mine"), "other\n").unwrap();
        let (status, out, _) = run_container(
            &sb,
            "other",
            spec(
                "other",
                &["sh", "-c", "ps -o pid,comm | grep -c sleep; cat /mine"],
            ),
        )
        .await;
        assert_eq!(status, ExitStatus::Exited { code: 0 });
        assert_eq!(out, "0\nother\n", "own pid namespace and rootfs");
        let mut s = spec(
            "joined",
            &[
                "sh",
                "-c",
                "ps -o pid,comm | grep sleep; test -e /mine; echo $?",
            ],
        );
        s["linux"]["namespaces"][0] =
            json!({"type": "pid", "path": format!("/proc/{pod_pid}/ns/pid")});
        let (status, out, err) = run_container(&sb, "joined", s).await;
        assert_eq!(status, ExitStatus::Exited { code: 0 }, "{err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 2, "{out}");
        assert!(
            lines[0].trim().starts_with("1 sleep"),
            "sees pod's init as pid 1: {out}"
        );
        assert_eq!(lines[1], "1", "but its own rootfs: {out}");
        done(
            c,
            Request::DeleteContainer {
                id: "pod".into(),
                force: true,
            },
        )
        .await;

        sb.destroy(Duration::from_secs(60)).await.unwrap();
    });
}
