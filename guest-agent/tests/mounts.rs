//! `mount`, `unmount` and spawn's `root` against a real `hull-agent --listen unix:PATH`.
//!
//! Mounting and chroot need root: these tests run as root (as `make test` does on the build
//! machine) and fail, saying so, otherwise.

mod common;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::TestAgent;
use hull_agent_protocol::{ErrorKind, MountOption, MountRequest, Request, Response, SpawnRequest};
use hull_runtime::agent::{AgentClient, Error, ProcessOutput};

const T: Duration = Duration::from_secs(30);

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests mount file systems and chroot: run them as root"
    );
}

/// An agent and its client, for a test that needs root.
async fn root_agent() -> (TestAgent, AgentClient) {
    require_root();
    TestAgent::with_client().await
}

/// `argv` chrooted into `root`.
fn chrooted(root: &Path, argv: &[&str]) -> SpawnRequest {
    let mut req = SpawnRequest::new(argv.iter().copied());
    req.root = Some(root.display().to_string());
    req
}

/// The process exited with `code` (its stderr says why not).
fn assert_exit(out: &ProcessOutput, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends the request as is (the client's own checks would stop bad ones before the agent).
async fn raw(c: &AgentClient, call: Request) -> Result<Response, Error> {
    c.call(call, Some(T)).await
}

fn agent_err(r: Result<impl std::fmt::Debug, Error>, what: &str) -> (ErrorKind, String) {
    match r {
        Err(Error::Agent(e)) => (e.kind, e.message),
        other => panic!("{what}: expected an agent error, got {other:?}"),
    }
}

fn is_mountpoint(p: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = p.to_str().unwrap();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(p))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_mount_requests_are_refused_naming_the_problem() {
    let (agent, c) = TestAgent::with_client().await;
    let dir = agent.dir().display().to_string();
    let file = format!("{dir}/agent.log");
    let cases: Vec<(MountRequest, ErrorKind, &str)> = vec![
        (
            MountRequest::virtiofs("rootfs", "run/rootfs"),
            ErrorKind::InvalidArgument,
            "mount target \"run/rootfs\" is not an absolute path",
        ),
        (
            MountRequest::virtiofs("rootfs", &format!("{dir}/a/../../etc")),
            ErrorKind::InvalidArgument,
            "has a \"..\" component",
        ),
        (
            MountRequest::virtiofs("rootfs", "/run/a\0b"),
            ErrorKind::InvalidArgument,
            "contains a NUL byte",
        ),
        (
            MountRequest::virtiofs("rootfs", "/"),
            ErrorKind::InvalidArgument,
            "is the root directory",
        ),
        (
            MountRequest {
                fstype: "ext4".into(),
                ..MountRequest::virtiofs("/dev/vda", &format!("{dir}/m"))
            },
            ErrorKind::InvalidArgument,
            "unknown file system type \"ext4\": the agent mounts virtiofs, tmpfs, proc, bind",
        ),
        (
            MountRequest::virtiofs("", &format!("{dir}/m")),
            ErrorKind::InvalidArgument,
            "virtiofs source is empty",
        ),
        (
            MountRequest::bind("relative/src", &format!("{dir}/m")),
            ErrorKind::InvalidArgument,
            "bind source \"relative/src\" is not an absolute path",
        ),
        (
            MountRequest::bind(&format!("{dir}/missing"), &format!("{dir}/m")),
            ErrorKind::InvalidArgument,
            "does not exist",
        ),
        (
            MountRequest::tmpfs(&format!("{file}/sub")),
            ErrorKind::InvalidArgument,
            "exists and is not a directory",
        ),
        (
            MountRequest {
                data: vec!["size=1m,exec".into()],
                ..MountRequest::tmpfs(&format!("{dir}/m"))
            },
            ErrorKind::InvalidArgument,
            "is not KEY=VALUE with a plain",
        ),
    ];
    for (req, kind, what) in cases {
        let (k, msg) = agent_err(raw(&c, Request::Mount(req.clone())).await, what);
        assert_eq!(k, kind, "{what}: {msg}");
        assert!(msg.contains(what), "expected {what:?} in {msg:?}");
        // The client refuses the same requests without asking the agent.
        if req.validate().is_err() {
            let (_, local) = agent_err(c.mount(req).await, what);
            assert_eq!(local, msg);
        }
    }
    // Unmount checks its target the same way, and says when nothing is mounted.
    let (_, msg) = agent_err(
        raw(
            &c,
            Request::Unmount {
                target: "x/y".into(),
                lazy: false,
            },
        )
        .await,
        "relative unmount",
    );
    assert!(
        msg.contains("unmount target \"x/y\" is not an absolute path"),
        "{msg}"
    );
    let (k, msg) = agent_err(c.unmount(&dir, false).await, "not mounted");
    assert_eq!(k, ErrorKind::InvalidArgument);
    assert!(msg.contains("nothing is mounted there"), "{msg}");

    // Nothing was created by the failed calls.
    assert!(!agent.dir().join("m").exists());
    assert!(!agent.dir().join("missing").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_mount_removes_the_directories_it_created() {
    let (agent, c) = root_agent().await;
    // There is no virtio-fs device on the host: the kernel refuses the tag.
    let target = agent.dir().join("new/deeper/target");
    let (_, msg) = agent_err(
        c.mount(MountRequest::virtiofs(
            "no-such-tag",
            target.to_str().unwrap(),
        ))
        .await,
        "virtiofs on the host",
    );
    assert!(
        msg.starts_with(&format!(
            "mount virtiofs tag \"no-such-tag\" on {}: ",
            target.display()
        )),
        "{msg}"
    );
    assert!(!agent.dir().join("new").exists(), "mount left directories");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmpfs_mount_is_used_by_a_chrooted_process_then_unmounted() {
    let (agent, c) = root_agent().await;
    let root = busybox_root(&agent);
    let tmp = root.join("tmp");
    let _guard = DetachOnDrop(tmp.clone());
    c.mount(MountRequest {
        options: vec![MountOption::Nosuid, MountOption::Nodev],
        data: vec!["size=1m".into(), "mode=1777".into()],
        ..MountRequest::tmpfs(tmp.to_str().unwrap())
    })
    .await
    .unwrap();
    assert!(is_mountpoint(&tmp));

    let req = chrooted(
        &root,
        &[
            "/bin/busybox",
            "sh",
            "-c",
            "echo in-tmpfs > /tmp/f; busybox cp /bin/busybox /tmp/big; \
             echo $?; cat /tmp/f",
        ],
    );
    let out = c.run(req, None).await.unwrap();
    assert_exit(&out, 0);
    // The 1 MiB size limit holds: copying the 2 MB busybox fails with ENOSPC.
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\nin-tmpfs\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left on device"), "{err}");
    assert_eq!(std::fs::read(tmp.join("f")).unwrap(), b"in-tmpfs\n");

    // Busy while a process has its cwd there; lazily it detaches at once.
    let mut busy = chrooted(&root, &["/bin/busybox", "sleep", "1000"]);
    busy.cwd = "/tmp".into();
    let p = c.spawn(busy).await.unwrap();
    common::eventually(T, "the process is in /tmp", || {
        std::fs::read_link(format!("/proc/{}/cwd", p.pid))
            .ok()
            .as_deref()
            == Some(&tmp)
    });
    let (k, msg) = agent_err(c.unmount(tmp.to_str().unwrap(), false).await, "busy");
    assert_eq!(k, ErrorKind::Busy, "{msg}");
    assert!(msg.contains("busy"), "{msg}");
    c.unmount(tmp.to_str().unwrap(), true).await.unwrap();
    assert!(!is_mountpoint(&tmp));
    assert!(!tmp.join("f").exists(), "the tmpfs contents are gone");
    c.signal(p.process, libc::SIGKILL, false).await.unwrap();
    c.wait(p.process).await.unwrap();
}

/// Lazily unmounts a test's mount if the test fails before it does.
struct DetachOnDrop(std::path::PathBuf);

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        if is_mountpoint(&self.0) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// A root directory in the agent's dir with `/bin/busybox` (static) and the applets the tests
/// use.
fn busybox_root(agent: &TestAgent) -> PathBuf {
    let root = agent.dir().join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::create_dir_all(root.join("proc")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "cat", "echo", "pwd", "ls"] {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_with_root_runs_chrooted() {
    let (agent, c) = root_agent().await;
    let root = busybox_root(&agent);
    std::fs::create_dir_all(root.join("work/sub")).unwrap();
    // An absolute symlink inside the root resolves inside it (as after chroot), not on the host.
    symlink("/work", root.join("link")).unwrap();
    let rootstr = root.display().to_string();

    // The acceptance: `busybox sh -c 'echo hi > /x'` writes into the root.
    let req = chrooted(&root, &["/bin/busybox", "sh", "-c", "echo hi > /x"]);
    let out = c.run(req, None).await.unwrap();
    assert_exit(&out, 0);
    assert_eq!(std::fs::read(root.join("x")).unwrap(), b"hi\n");
    assert!(!Path::new("/x").exists() || std::fs::read("/x").unwrap() != b"hi\n");

    // cwd is inside the root; a bare name is looked up in PATH inside the root.
    let mut req = chrooted(&root, &["sh", "-c", "pwd; ls /"]);
    req.env = vec!["PATH=/bin".into()];
    req.cwd = "/link/sub".into();
    let out = c.run(req, None).await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8_lossy(&out.stdout);
    // getcwd reports the directory the symlink led to, inside the root.
    assert!(text.starts_with("/work/sub\n"), "{text}");
    assert!(text.contains("busybox") || text.contains("bin\n"), "{text}");
    assert!(text.contains("work"), "{text}");

    // Exec failures inside the root: 127 / 126 with the reason on stderr.
    let out = c.run(chrooted(&root, &["/bin/bash"]), None).await.unwrap();
    assert_exit(&out, 127);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("hull-agent: /bin/bash: No such file or directory"),
        "{err}"
    );
    std::fs::write(root.join("notexec"), "data").unwrap();
    let out = c.run(chrooted(&root, &["/notexec"]), None).await.unwrap();
    assert_exit(&out, 126);
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));

    // Bad roots and cwds start nothing.
    let cases: Vec<(Option<String>, &str, &str)> = vec![
        (
            Some("rel/root".into()),
            "/",
            "root \"rel/root\" is not an absolute path",
        ),
        (Some(format!("{rootstr}/../root")), "/", "\"..\" component"),
        (Some(format!("{rootstr}/missing")), "/", "is not usable"),
        (Some(format!("{rootstr}/x")), "/", "is not a directory"),
        (Some(rootstr.clone()), "/nowhere", "(inside root"),
        // The host's /etc exists, but not inside the root.
        (Some(rootstr.clone()), "/etc", "not usable"),
    ];
    for (root, cwd, what) in cases {
        let mut req = SpawnRequest::new(["/bin/busybox", "true"]);
        req.root = root;
        req.cwd = cwd.into();
        let (k, msg) = agent_err(c.spawn(req).await, what);
        assert_eq!(k, ErrorKind::InvalidArgument, "{msg}");
        assert!(msg.contains(what), "expected {what:?} in {msg:?}");
    }
    assert_eq!(c.health().await.unwrap().running_processes, 0);
}
