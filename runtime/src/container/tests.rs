//! The container lifecycle against a fake agent (no VM): create with its share, hooks and
//! record, start, state, exec, delete; failures that must leave nothing behind; a dead guest.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex};

use hull_agent_protocol::{AgentError, ContainerInfo, Request, Response};
use serde_json::{json, Value};

use super::*;
use crate::agent::tests::{hostile_agent, next_request, reply, Dir};
use crate::sandbox::{process_start_time, SandboxState, GUEST_SHARE_DIR};

/// What the fake agent knows: containers and their status, and the calls it got.
#[derive(Default)]
struct Guest {
    containers: HashMap<String, ContainerStatus>,
    calls: Vec<String>,
    /// The guest config.json of each create, read from the host share as the guest would.
    configs: Vec<Value>,
}

/// Reads the bundle at `bundle` and creates container `id` from it, as the front ends do.
async fn create_at(
    sb: &Sandbox,
    id: &str,
    bundle: &Path,
    opts: &CreateOptions,
) -> Result<Container, ContainerError> {
    let b = load_bundle(bundle)?;
    Container::create(sb, id, &b, opts).await
}

fn state_of(pid: u32) -> SandboxState {
    SandboxState {
        id: "sb".into(),
        vmm_pid: pid,
        vmm_start_time: process_start_time(pid).unwrap_or(1),
        vcpus: 1,
        memory_mib: 128,
        created: 0,
        own_network: None,
        host_cgroup: None,
    }
}

/// Unmounts whatever a test left mounted below a directory, also when it fails.
struct Unmount(PathBuf);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = crate::mount::unmount_below(&self.0);
    }
}

/// A sandbox directory in a tempdir with a fake agent that plays libcontainer's states.
async fn sandbox_with_guest(
    tag: &str,
) -> (tempfile::TempDir, Unmount, Dir, Sandbox, Arc<Mutex<Guest>>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sb");
    std::fs::create_dir_all(&dir).unwrap();
    let layout = crate::sandbox::Layout::of_dir(&dir);
    layout.share().create().unwrap();
    // The fake guest reads what the real one would: the read-only view.
    let share = layout.share().view().to_path_buf();
    let guest = Arc::new(Mutex::new(Guest::default()));
    let g = guest.clone();
    let (sock_dir, agent) = hostile_agent(tag, move |_, mut s| {
        let g = g.clone();
        let share = share.clone();
        async move {
            while let Some(req) = next_request(&mut s).await {
                let result = fake_call(&mut g.lock().unwrap(), &share, req.call);
                reply(&mut s, req.id, result).await;
            }
        }
    })
    .await;
    let sb = Sandbox::fake(&dir, state_of(std::process::id()), Some(agent));
    (tmp, Unmount(dir), sock_dir, sb, guest)
}

fn fake_call(g: &mut Guest, share: &Path, call: Request) -> Result<Response, AgentError> {
    let unknown = |id: &str| AgentError::new(ErrorKind::UnknownContainer, format!("no {id}"));
    let wrong = |id: &str| AgentError::new(ErrorKind::WrongState, format!("{id}: wrong state"));
    g.calls.push(call.type_name().to_string());
    match call {
        Request::CreateContainer(c) => {
            if g.containers.contains_key(&c.id) {
                return Err(AgentError::new(ErrorKind::ContainerExists, "exists"));
            }
            let host = share.join(
                c.bundle
                    .strip_prefix(&format!("{GUEST_SHARE_DIR}/"))
                    .unwrap(),
            );
            let cfg = std::fs::read(host.join("config.json")).unwrap();
            let cfg: serde_json::Value = serde_json::from_slice(&cfg).unwrap();
            // The root is the container's own in the root file systems' share.
            let root = cfg["root"]["path"].as_str().unwrap();
            let name = root
                .strip_prefix(&format!("{}/", crate::sandbox::GUEST_ROOTFS_DIR))
                .unwrap();
            assert!(name.starts_with(&format!("{}@", c.id)), "{root}");
            assert!(
                share.join("rootfs").join(name).join("bin/sh").exists(),
                "the rootfs is in the share"
            );
            g.configs.push(cfg);
            g.containers.insert(c.id, ContainerStatus::Created);
            Ok(Response::Spawned {
                process: ProcessId(10 + g.containers.len() as u64),
                pid: 100 + g.containers.len() as i32,
            })
        }
        Request::StartContainer { id } => match g.containers.get_mut(&id) {
            Some(s @ ContainerStatus::Created) => {
                *s = ContainerStatus::Running;
                Ok(Response::Done)
            }
            Some(_) => Err(wrong(&id)),
            None => Err(unknown(&id)),
        },
        Request::ContainerState { id } => match g.containers.get(&id) {
            Some(&status) => Ok(Response::Container(ContainerInfo {
                id,
                status,
                process: ProcessId(11),
                pid: 101,
                exit: None,
                oom_killed: false,
            })),
            None => Err(unknown(&id)),
        },
        Request::Exec(e) => {
            assert_eq!(e.process["args"], json!(["ls"]));
            Ok(Response::Spawned {
                process: ProcessId(50),
                pid: 150,
            })
        }
        Request::KillContainer { id, .. } => {
            g.containers.insert(id, ContainerStatus::Stopped);
            Ok(Response::Done)
        }
        Request::DeleteContainer { id, force } => match g.containers.get(&id) {
            Some(ContainerStatus::Running) if !force => Err(wrong(&id)),
            Some(_) => {
                g.containers.remove(&id);
                Ok(Response::Done)
            }
            None => Err(unknown(&id)),
        },
        _ => Ok(Response::Done),
    }
}

/// A bundle in `dir` with a rootfs, a bind-mounted data dir and file, and `hooks`.
fn bundle(dir: &Path, hooks: Value) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("rootfs/bin")).unwrap();
    std::fs::write(b.join("rootfs/bin/sh"), b"").unwrap();
    std::fs::create_dir_all(b.join("data")).unwrap();
    std::fs::write(b.join("hosts"), b"").unwrap();
    let spec = json!({
        "ociVersion": "1.0.2",
        "root": {"path": "rootfs"},
        "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
        "mounts": [
            {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "hosts", "options": ["ro"]},
        ],
        "annotations": {"io.example": "x"},
        "hooks": hooks,
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/proc/self/ns/net"},
                                 {"type": "ipc", "path": "/proc/self/ns/ipc"}]},
    });
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    b
}

/// A hook script that appends `<name> <status> <pid> <bundle>` (from its stdin) to `log`.
fn recorder(dir: &Path, log: &Path, name: &str, exit: i32) -> Value {
    let p = dir.join(format!("hook-{name}"));
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nread -r s\necho \"$1 $s\" >> {}\nexit {exit}\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    json!({"path": p, "args": ["hook", name]})
}

fn log_lines(log: &Path) -> Vec<(String, Value)> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let (name, state) = l.split_once(' ').unwrap();
            (name.to_string(), serde_json::from_str(state).unwrap())
        })
        .collect()
}

/// Whether anything is mounted at or below `p`; for a share directory, below its
/// `containers/` (the share's own two mounts are there for the sandbox's life).
fn mounted_below(p: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let share = p.ends_with(crate::sandbox::SHARE_RW_DIR) || p.ends_with(crate::sandbox::SHARE_DIR);
    let p = if share {
        p.join("containers")
    } else {
        p.to_path_buf()
    };
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| Path::new(m).starts_with(&p))
}

#[tokio::test]
async fn create_start_exec_delete() {
    let (tmp, _mounts, _sock, sb, guest) = sandbox_with_guest("ctr-life").await;
    let log = tmp.path().join("hooks.log");
    let hooks = json!({
        "prestart": [recorder(tmp.path(), &log, "prestart", 0)],
        "createRuntime": [recorder(tmp.path(), &log, "createRuntime", 0)],
        "createContainer": [recorder(tmp.path(), &log, "createContainer", 0)],
        "poststart": [recorder(tmp.path(), &log, "poststart", 1)],
        "poststop": [recorder(tmp.path(), &log, "poststop", 0)],
    });
    let b = bundle(tmp.path(), hooks);
    let share = sb.share_dir().join("containers/c1");
    {
        let mut c = create_at(&sb, "c1", &b, &CreateOptions::default())
            .await
            .unwrap();
        assert_eq!(c.id(), "c1");
        assert_eq!(c.bundle(), std::fs::canonicalize(&b).unwrap());
        assert_eq!((c.init_process(), c.guest_pid()), (ProcessId(11), 101));
        assert!(mounted_below(&share.join("mounts/0")) && mounted_below(&share.join("mounts/1")));
        let cfg = guest.lock().unwrap().configs[0].clone();
        let root = cfg["root"]["path"].as_str().unwrap().to_string();
        let name = root.strip_prefix("/run/hull/rootfs/").unwrap();
        assert!(mounted_below(&sb.share_dir().join("rootfs").join(name)));
        assert_eq!(cfg["root"], json!({"path": root}));
        assert_eq!(
            cfg["mounts"][0]["source"],
            "/run/hull/shared/containers/c1/mounts/0"
        );
        assert_eq!(cfg["linux"]["cgroupsPath"], "/hull/c1");
        assert_eq!(cfg["linux"]["namespaces"], json!([{"type": "pid"}]));
        assert!(cfg.get("hooks").is_none());
        // Hooks so far: prestart, createRuntime with status created; createContainer skipped.
        let lines = log_lines(&log);
        let names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["prestart", "createRuntime"]);
        let st = &lines[0].1;
        assert_eq!(st["status"], "created");
        assert_eq!(st["id"], "c1");
        assert_eq!(st["pid"], std::process::id());
        assert_eq!(st["bundle"], json!(c.bundle()));
        assert_eq!(st["annotations"], json!({"io.example": "x"}));

        assert_eq!(Container::ids(&sb).unwrap(), ["c1"]);
        let e = create_at(&sb, "c1", &b, &CreateOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, ContainerError::AlreadyExists(_)), "{e}");

        c.set_host_pid(&sb, 4242).unwrap();
        let c = Container::load(&sb, "c1").unwrap();
        assert_eq!(c.host_pid(), Some(4242));
        let st = c.oci_state(&sb).await.unwrap();
        assert_eq!((st.status.as_str(), st.pid), ("created", 4242));
        assert_eq!(st.rootfs, c.bundle().join("rootfs"));

        let ls: Process = serde_json::from_value(
            json!({"args": ["ls"], "cwd": "/", "user": {"uid": 0, "gid": 0}}),
        )
        .unwrap();
        let e = c.exec(&sb, &ls, StdioSpec::default()).await.unwrap_err();
        assert!(
            matches!(
                e,
                ContainerError::WrongState {
                    wanted: "running",
                    ..
                }
            ),
            "{e}"
        );
        // The failing poststart hook is only a warning.
        c.start(&sb).await.unwrap();
        let e = c.start(&sb).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "container \"c1\" is running, it must be created"
        );
        assert_eq!(
            c.exec(&sb, &ls, StdioSpec::default()).await.unwrap(),
            (ProcessId(50), 150)
        );
        let lines = log_lines(&log);
        assert_eq!(lines[2].0, "poststart");
        assert_eq!(lines[2].1["status"], "running");

        // Not stopped, no force: the agent refuses and nothing is removed.
        let e = c.clone().delete(&sb, false).await.unwrap_err();
        assert_eq!(e.agent_kind(), Some(ErrorKind::WrongState), "{e}");
        assert!(share.join("config.json").exists());
        c.kill(&sb, 9, false).await.unwrap();
        let st = c.oci_state(&sb).await.unwrap();
        assert_eq!((st.status.as_str(), st.pid), ("stopped", 0));
        c.delete(&sb, false).await.unwrap();
        let lines = log_lines(&log);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[3].0, "poststop");
        assert_eq!(lines[3].1["status"], "stopped");
        assert!(lines[3].1.get("pid").is_none());
    }
    assert!(!mounted_below(&sb.share_dir()), "mounts left behind");
    assert!(!share.exists());
    assert_eq!(Container::ids(&sb).unwrap(), Vec::<String>::new());
    assert!(matches!(
        Container::load(&sb, "c1").unwrap_err(),
        ContainerError::NotFound(_)
    ));
    // The bundle is untouched.
    assert!(b.join("rootfs/bin/sh").exists() && b.join("data").is_dir());
    let calls = guest.lock().unwrap().calls.clone();
    assert!(calls.contains(&"delete_container".to_string()), "{calls:?}");
}

/// Writes `spec` as the bundle's config.json and expects creating "c1" from it to fail.
async fn create_with(sb: &Sandbox, b: &Path, spec: &Value) -> ContainerError {
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    create_at(sb, "c1", b, &CreateOptions::default())
        .await
        .expect_err("the create fails")
}

#[tokio::test]
async fn failures_leave_nothing_behind() {
    let (tmp, _mounts, _sock, sb, guest) = sandbox_with_guest("ctr-fail").await;
    let log = tmp.path().join("hooks.log");
    let nothing_left = |sb: &Sandbox| {
        assert!(!mounted_below(&sb.share_dir()));
        assert!(!sb.share_dir().join("containers/c1").exists());
        assert_eq!(Container::ids(sb).unwrap(), Vec::<String>::new());
    };
    // A failing createRuntime hook: the create is undone, in the guest too.
    let hooks = json!({"createRuntime": [recorder(tmp.path(), &log, "cr", 3)]});
    let b = bundle(tmp.path(), hooks);
    let e = create_at(&sb, "c1", &b, &CreateOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            ContainerError::Hook {
                which: "createRuntime",
                ..
            }
        ),
        "{e}"
    );
    nothing_left(&sb);
    assert!(guest.lock().unwrap().containers.is_empty());

    // A bind source that does not exist: named, and nothing is made.
    let mut spec: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    spec["hooks"] = json!({});
    spec["mounts"][1]["source"] = json!("/nonexistent/hosts");
    let e = create_with(&sb, &b, &spec).await;
    assert!(
        e.to_string().contains("/etc/hosts") && e.to_string().contains("/nonexistent/hosts"),
        "{e}"
    );
    nothing_left(&sb);

    // An invalid config.json, a bad id, a join with an unknown container.
    spec["process"]["args"] = json!(42);
    let e = create_with(&sb, &b, &spec).await;
    assert!(
        e.to_string()
            .contains("config.json: process.args: invalid type"),
        "{e}"
    );
    spec["process"]["args"] = json!(["sh"]);
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    let e = create_at(&sb, "../c", &b, &CreateOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, ContainerError::InvalidId { .. }), "{e}");
    let opts = CreateOptions {
        join: Some("pause".into()),
        ..CreateOptions::default()
    };
    let e = create_at(&sb, "c1", &b, &opts).await.unwrap_err();
    assert!(
        matches!(e, ContainerError::NotFound(ref id) if id == "pause"),
        "{e}"
    );
    nothing_left(&sb);
    assert_eq!(
        guest.lock().unwrap().calls,
        ["create_container", "delete_container"]
    );
}

#[tokio::test]
async fn join_rewrites_host_namespaces_to_the_other_container() {
    let (tmp, _mounts, _sock, sb, guest) = sandbox_with_guest("ctr-join").await;
    let b = bundle(tmp.path(), json!({}));
    let pause = create_at(&sb, "pause", &b, &CreateOptions::default())
        .await
        .unwrap();
    let opts = CreateOptions {
        join: Some("pause".into()),
        ..CreateOptions::default()
    };
    let app = create_at(&sb, "app", &b, &opts).await.unwrap();
    assert_eq!(Container::ids(&sb).unwrap(), ["app", "pause"]);
    let cfg = guest.lock().unwrap().configs[1].clone();
    assert_eq!(
        cfg["linux"]["namespaces"],
        json!([{"type": "pid"}, {"type": "ipc", "path": format!("/proc/{}/ns/ipc", pause.guest_pid())}])
    );
    // Destroying the sandbox's host side removes every container's mounts and share
    // directories (the records go with the sandbox's directory).
    drop((app, pause));
    sb.share().remove_all().unwrap();
    assert!(!mounted_below(&sb.share_dir()));
    assert!(std::fs::read_dir(sb.share_dir().join("containers"))
        .unwrap()
        .next()
        .is_none());
}

#[tokio::test]
async fn a_dead_guest_is_stopped_and_delete_cleans_the_host() {
    let (tmp, _mounts, _sock, sb, _guest) = sandbox_with_guest("ctr-dead").await;
    let log = tmp.path().join("hooks.log");
    let b = bundle(
        tmp.path(),
        json!({"poststop": [recorder(tmp.path(), &log, "poststop", 0)]}),
    );
    let c = create_at(&sb, "c1", &b, &CreateOptions::default())
        .await
        .unwrap();
    // The VM died: a handle without agent, whose VMM is not running.
    let dir = sb.dir().to_path_buf();
    drop(sb);
    let gone = Sandbox::fake(&dir, state_of(u32::MAX), None);
    assert_eq!(
        c.info(&gone).await.unwrap().status,
        ContainerStatus::Stopped
    );
    assert_eq!(c.oci_state(&gone).await.unwrap().status, "stopped");
    let e = c.kill(&gone, 15, false).await.unwrap_err();
    assert!(matches!(e, ContainerError::WrongState { .. }), "{e}");
    c.delete(&gone, false).await.unwrap();
    assert!(!mounted_below(&gone.share_dir()));
    assert!(!gone.share_dir().join("containers/c1").exists());
    assert_eq!(Container::ids(&gone).unwrap(), Vec::<String>::new());
    assert_eq!(log_lines(&log)[0].0, "poststop");
}

#[test]
fn sandbox_cleanup_unmounts_container_shares() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let src = tmp.path().join("rootfs");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/keep"), b"x").unwrap();
    std::fs::create_dir_all(root.join("sb")).unwrap();
    let sh = crate::sandbox::Layout::of_dir(&root.join("sb")).share();
    sh.create().unwrap();
    let share = root.join("sb");
    let spec: oci_spec::runtime::Spec = serde_json::from_value(json!({})).unwrap();
    let name = crate::share::rootfs_name("c1");
    sh.prepare("c1", &name, &src, &[], &spec).unwrap();
    assert!(mounted_below(&sh.rootfs_view().join(&name)));
    let rec_dir = root.join("sb");
    std::fs::create_dir_all(rec_dir.join(CONTAINERS_DIR)).unwrap();
    std::fs::write(record_path(&rec_dir, "c1"), b"{}").unwrap();
    let _mounts = Unmount(share.clone());
    crate::sandbox::cleanup(&root, "sb").unwrap();
    assert!(!mounted_below(&share));
    assert!(!root.join("sb").exists());
    assert!(src.join("etc/keep").exists());
}

#[test]
fn update_leaves_out_what_docker_does_not_change() {
    // What docker 20.10 sends for `docker update --memory 96m --memory-swap 96m`.
    let mut v = json!({
        "memory": {"limit": 100663296, "reservation": 0, "swap": 100663296, "kernel": 0},
        "cpu": {"shares": 0, "quota": 0, "period": 0, "realtimeRuntime": 0, "cpus": "", "mems": ""},
        "pids": {"limit": 0},
        "blockIO": {"weight": 0},
        "devices": []
    });
    drop_unchanged(&mut v);
    assert_eq!(
        v,
        json!({"memory": {"limit": 100663296, "swap": 100663296}, "devices": []})
    );
    let mut v = json!({"cpu": {"quota": 50000, "period": 100000, "cpus": "0"}});
    let before = v.clone();
    drop_unchanged(&mut v);
    assert_eq!(v, before, "set values stay");
}
