//! The `hull` CLI (runc's command line) with real microVMs: OCI bundles built by the test from
//! Debian's busybox-static, run as runc runs them. The test process is a child subreaper, as
//! containerd-shim-runc-v2 is, so it reaps the `--pid-file` process and sees the container's
//! exit status through it.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use hull_tests::vm::{busybox_root, nonce};
use hull_tests::{bin, require_kvm, TempDir};
use serde_json::{json, Value};

/// A scratch root and config for one test.
struct Env {
    dir: TempDir,
    root: PathBuf,
    config: PathBuf,
}

impl Env {
    fn new(name: &str) -> Env {
        require_kvm();
        // Orphaned pid-file processes come to us, as they come to containerd's shim.
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer and changes only a flag.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        let dir = TempDir::new(&format!("hull-cli-{name}"));
        let root = dir.path().join("root");
        let config = dir.path().join("config.toml");
        hull_tests::vm::write_runtime_config(&config);
        Env { dir, root, config }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(bin("hull"));
        c.arg("--root")
            .arg(&self.root)
            .args(args)
            .env("HULL_CONFIG", &self.config)
            .stdin(Stdio::null());
        c
    }

    fn hull(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// runc, side by side, with a root of this test's own (the tests that compare need it).
    fn runc_cmd(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root")
            .arg(self.dir.path().join("runc-root"))
            .stdin(Stdio::null());
        c
    }

    /// `runc run --bundle BUNDLE ID`, in the foreground.
    fn runc_run(&self, bundle: &Path, id: &str) -> Output {
        self.runc_cmd()
            .args(["run", "--bundle", bundle.to_str().unwrap(), id])
            .output()
            .unwrap_or_else(|e| panic!("runc (package runc) is needed side by side: {e}"))
    }

    /// For commands that leave a container running (`run -d`, `create`): its pid-file process
    /// inherits stdout and stderr, as runc's container process does, so they go to files here
    /// (a pipe would stay open as long as the container runs). Returns the exit code and stderr.
    fn hull_detached(&self, args: &[&str]) -> (Option<i32>, String) {
        let out = self.dir.path().join("detached.out");
        let err = self.dir.path().join("detached.err");
        let status = self
            .cmd(args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .status()
            .unwrap();
        (
            status.code(),
            std::fs::read_to_string(&err).unwrap_or_default(),
        )
    }

    /// A busybox bundle with `args` (runc's default spec from `hull spec`, edited).
    fn bundle(&self, name: &str, args: &[&str], edit: impl FnOnce(&mut Value)) -> PathBuf {
        let b = self.dir.path().join(name);
        let _ = std::fs::remove_dir_all(&b);
        std::fs::create_dir_all(&b).unwrap();
        let out = Command::new(bin("hull"))
            .args(["spec", "--bundle"])
            .arg(&b)
            .output()
            .unwrap();
        assert!(out.status.success(), "hull spec: {}", text(&out.stderr));
        busybox_root(
            &b.join("rootfs"),
            &["proc", "sys", "dev", "tmp", "etc", "root"],
        );
        let path = b.join("config.json");
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(args);
        spec["root"]["readonly"] = json!(false);
        edit(&mut spec);
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
        b
    }

    /// Nothing of container `id` is left: no state dir, no mount below the root, no hull-vmm.
    fn assert_gone(&self, id: &str) {
        assert!(
            !self.root.join(id).exists(),
            "the state dir of {id} is left"
        );
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = self.root.to_string_lossy().into_owned();
        assert!(
            !mounts.lines().any(|l| l.contains(&root)),
            "mounts left below {root}:\n{mounts}"
        );
        let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
        let ps = text(&ps.stdout);
        assert!(
            !ps.lines()
                .any(|l| l.contains("hull-vmm") && l.contains(&root)),
            "a hull-vmm of {id} still runs:\n{ps}"
        );
        // The cgroup hull-vmm got when the spec named none (`hull/<id>-<hash>`).
        let prefix = format!("{id}-");
        let left: Vec<_> = std::fs::read_dir("/sys/fs/cgroup/hull")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "cgroups of {id} left: {left:?}");
    }

    /// Runs `hull ARGS` and fails the test if it has not ended within `limit`: a host command
    /// the guest can make hang forever is the failure these tests look for.
    fn hull_within(&self, args: &[&str], limit: Duration) -> Output {
        let out = self.dir.path().join("within.out");
        let err = self.dir.path().join("within.err");
        let mut child = self
            .cmd(args)
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "hull {args:?} still runs after {limit:?} (the guest holds it): {}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Output {
            status,
            stdout: std::fs::read(&out).unwrap_or_default(),
            stderr: std::fs::read(&err).unwrap_or_default(),
        }
    }
}

/// A sacrificial host tree outside the share: what a hostile guest would like to change.
struct Victim {
    dir: PathBuf,
    before: Vec<(PathBuf, Vec<u8>)>,
}

impl Victim {
    fn new(env: &Env) -> Victim {
        let dir = env.dir.path().join("victim");
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("precious"), b"host data").unwrap();
        std::fs::write(dir.join("sub/more"), b"more host data").unwrap();
        let before = tree(&dir);
        Victim { dir, before }
    }

    fn assert_unchanged(&self) {
        assert_eq!(tree(&self.dir), self.before, "the host tree changed");
    }
}

/// A spec edit: every capability, no seccomp filter, nothing masked, and none of the
/// namespaces `unshare` names (the guest's own instead): a container that owns its guest.
fn owns_the_guest(s: &mut Value, unshare: &[&str]) {
    s["process"]["capabilities"] = json!({
        "bounding": ALL_CAPS, "effective": ALL_CAPS, "permitted": ALL_CAPS,
    });
    s["linux"]["seccomp"] = Value::Null;
    s["linux"]["maskedPaths"] = json!([]);
    s["linux"]["readonlyPaths"] = json!([]);
    let ns = s["linux"]["namespaces"].as_array_mut().unwrap();
    ns.retain(|n| !unshare.contains(&n["type"].as_str().unwrap_or_default()));
}

/// The guest-side probe (`hull-guest-probe`, static), copied into a bundle's rootfs.
fn install_probe(bundle: &Path) {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_hull-guest-probe"));
    std::fs::copy(&p, bundle.join("rootfs/bin/hull-guest-probe"))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn state(env: &Env, id: &str) -> Value {
    let out = env.hull(&["state", id]);
    assert!(out.status.success(), "state {id}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Reaps our child (or adopted orphan) `pid`: its exit code, or 128+signal.
fn reap(pid: i32) -> i32 {
    let mut status = 0;
    // SAFETY: waitpid writes the status into the int we pass.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(
        r,
        pid,
        "waitpid({pid}): {}",
        std::io::Error::last_os_error()
    );
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    }
}

fn read_pid(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn host_release() -> String {
    text(&Command::new("uname").arg("-r").output().unwrap().stdout)
        .trim()
        .to_string()
}

#[test]
fn run_prints_the_guest_kernel_and_returns_exit_codes() {
    let env = Env::new("run");
    let b = env.bundle("b", &["uname", "-r"], |_| {});
    let out = env.hull(&["run", "--bundle", b.to_str().unwrap(), "r1"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let release = text(&out.stdout).trim().to_string();
    assert!(!release.is_empty());
    assert_ne!(release, host_release(), "ran on the host's kernel");
    env.assert_gone("r1");

    for (args, code) in [
        (vec!["sh", "-c", "exit 3"], 3),
        (vec!["sh", "-c", "nosuchcmd"], 127),
        // (init ignores its own SIGKILL inside its pid namespace, with runc too)
        (vec!["sh", "-c", "sleep 100 & kill -9 $!; wait $!"], 137),
    ] {
        let b = env.bundle("codes", &args, |_| {});
        let out = env.hull(&["run", "--bundle", b.to_str().unwrap(), "codes"]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            text(&out.stderr)
        );
        env.assert_gone("codes");
    }

    // No program / not executable: runc's message, 127 / 126, nothing left.
    let b = env.bundle("nobin", &["nosuchprogram"], |_| {});
    let out = env.hull(&["run", "--bundle", b.to_str().unwrap(), "nobin"]);
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(r#"exec: "nosuchprogram": executable file not found in $PATH"#),
        "{}",
        text(&out.stderr)
    );
    env.assert_gone("nobin");
    let b = env.bundle("noexec", &["/etc"], |_| {});
    let out = env.hull(&["run", "--bundle", b.to_str().unwrap(), "noexec"]);
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("permission denied"),
        "{}",
        text(&out.stderr)
    );
    env.assert_gone("noexec");

    // Bad input: a bundle that does not exist, a missing rootfs, an invalid config.json.
    let out = env.hull(&["run", "--bundle", "/nonexistent/bundle", "bad"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("/nonexistent/bundle"),
        "{}",
        text(&out.stderr)
    );
    let b = env.bundle("norootfs", &["true"], |s| {
        s["root"]["path"] = json!("missing-rootfs")
    });
    let out = env.hull(&["run", "--bundle", b.to_str().unwrap(), "bad"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("missing-rootfs"),
        "{}",
        text(&out.stderr)
    );
    let b = env.bundle("badspec", &["true"], |s| {
        s["process"]["args"] = json!("not a list")
    });
    let out = env.hull(&["run", "--bundle", b.to_str().unwrap(), "bad"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("process.args"),
        "{}",
        text(&out.stderr)
    );
    env.assert_gone("bad");

    // A namespace path that is not a namespace of its entry's type: runc refuses it (when it
    // joins it); hull before anything starts, naming the entry.
    let b = env.bundle("badns", &["true"], |s| {
        let ns = s["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "ipc");
        ns.push(json!({"type": "ipc", "path": "/proc/self/ns/uts"}));
    });
    let runc = env.runc_run(&b, "badns");
    assert!(
        !runc.status.success(),
        "runc ran it: {}",
        text(&runc.stderr)
    );
    let out = env.hull(&["run", "--bundle", b.to_str().unwrap(), "badns"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("linux.namespaces[")
            && err.contains("/proc/self/ns/uts is a uts namespace, but the entry's type is ipc"),
        "{err}"
    );
    env.assert_gone("badns");
}

#[test]
fn create_start_kill_delete_with_the_pid_file_process() {
    let env = Env::new("life");
    let marker = nonce();
    let b = env.bundle(
        "b",
        &[
            "sh",
            "-c",
            &format!("echo {marker} > /ran; echo out; sleep 1000 & wait"),
        ],
        |_| {},
    );
    let pid_file = env.dir.path().join("pid");
    // The container's stdout is this pipe (the pid-file process carries it, as runc's
    // container does); stderr goes to a file, since the pid-file process keeps it open too.
    let err_file = env.dir.path().join("create.err");
    let mut create = env
        .cmd(&[
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "--pid-file",
            pid_file.to_str().unwrap(),
            "c1",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    let mut stdout = create.stdout.take().unwrap();
    let status = create.wait().unwrap();
    assert!(
        status.success(),
        "create: {}",
        std::fs::read_to_string(&err_file).unwrap_or_default()
    );
    let pid = read_pid(&pid_file);
    let st = state(&env, "c1");
    assert_eq!(st["status"], "created", "{st}");
    assert_eq!(st["id"], "c1");
    assert_eq!(st["pid"], pid, "state's pid is the pid-file process");
    assert_eq!(Path::new(st["bundle"].as_str().unwrap()), b.as_path());
    assert!(
        !b.join("rootfs/ran").exists(),
        "the user program ran before start"
    );

    let out = env.hull(&["start", "c1"]);
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    let mut first = [0u8; 4];
    std::io::Read::read_exact(&mut stdout, &mut first).unwrap();
    assert_eq!(&first, b"out\n");
    assert_eq!(state(&env, "c1")["status"], "running");
    assert_eq!(
        std::fs::read_to_string(b.join("rootfs/ran"))
            .unwrap()
            .trim(),
        marker
    );

    // ps, pause/resume, update, events --stats, list.
    let out = env.hull(&["ps", "--format", "json", "c1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pids: Vec<i32> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(pids.len(), 2, "sh and sleep: {pids:?}");
    assert!(env.hull(&["pause", "c1"]).status.success());
    assert_eq!(state(&env, "c1")["status"], "paused");
    assert!(env.hull(&["resume", "c1"]).status.success());
    assert_eq!(state(&env, "c1")["status"], "running");
    let out = env.hull(&["update", "--pids-limit", "9", "--memory", "67108864", "c1"]);
    assert!(out.status.success(), "update: {}", text(&out.stderr));
    let out = env.hull(&["events", "--stats", "c1"]);
    assert!(out.status.success(), "events: {}", text(&out.stderr));
    let ev: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ev["type"], "stats", "{ev}");
    assert_eq!(ev["data"]["pids"]["current"], 2, "{ev}");
    assert_eq!(ev["data"]["pids"]["limit"], 9, "{ev}");
    assert_eq!(ev["data"]["memory"]["usage"]["limit"], 67108864u64, "{ev}");
    let out = env.hull(&["list", "--format", "json"]);
    let list: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], "c1", "{list}");
    assert_eq!(list[0]["status"], "running", "{list}");

    // delete refuses a running container; kill → the pid-file process exits 137.
    let out = env.hull(&["delete", "c1"]);
    assert_eq!(out.status.code(), Some(1), "delete of a running container");
    let out = env.hull(&["kill", "c1", "KILL"]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    assert_eq!(reap(pid), 137);
    assert_eq!(state(&env, "c1")["status"], "stopped");
    let out = env.hull(&["kill", "c1", "TERM"]);
    assert_eq!(out.status.code(), Some(1), "kill of a stopped container");
    let out = env.hull(&["delete", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_gone("c1");
    let out = env.hull(&["state", "c1"]);
    assert_eq!(out.status.code(), Some(1));

    // SIGTERM to an init that is not its pid namespace's init: 143 through the pid file.
    let b = env.bundle("noname", &["sleep", "1000"], |s| {
        let ns = s["linux"]["namespaces"].as_array_mut().unwrap();
        ns.retain(|n| n["type"] != "pid");
    });
    let (code, err) = env.hull_detached(&[
        "run",
        "--detach",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "c2",
    ]);
    assert_eq!(code, Some(0), "run -d: {err}");
    let pid = read_pid(&pid_file);
    assert_eq!(state(&env, "c2")["status"], "running");
    // A signal sent to the pid-file process reaches the container.
    // SAFETY: kill with a pid and a signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert_eq!(reap(pid), 143);
    let out = env.hull(&["delete", "c2"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_gone("c2");

    // delete --force of a running container, and of one that does not exist.
    let b = env.bundle("f", &["sleep", "1000"], |_| {});
    let (code, err) = env.hull_detached(&["run", "-d", "--bundle", b.to_str().unwrap(), "c3"]);
    assert_eq!(code, Some(0), "run -d: {err}");
    assert!(env.hull(&["delete", "--force", "c3"]).status.success());
    env.assert_gone("c3");
    assert!(env.hull(&["delete", "--force", "c3"]).status.success());
}

/// Receives one descriptor over a Unix socket (runc's console-socket protocol).
fn receive_fd(listener: &UnixListener) -> OwnedFd {
    let (conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = nix::sys::socket::recvmsg::<()>(
        conn.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        nix::sys::socket::MsgFlags::empty(),
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: SCM_RIGHTS installed this descriptor for us alone.
            return unsafe { OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no descriptor on the console socket");
}

/// Reads the terminal master until `needle` shows up.
fn read_until(master: &std::fs::File, needle: &str) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 512];
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} on the terminal: {}",
            String::from_utf8_lossy(&seen)
        );
        let n = std::io::Read::read(&mut &*master, &mut buf).unwrap();
        assert!(n > 0, "terminal closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).replace('\r', "")
}

fn set_size(master: &std::fs::File, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which points at `ws`.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0);
}

#[test]
fn exec_console_socket_and_bind_mounts() {
    let env = Env::new("exec");
    // Host files and directories bind-mounted into the container, one read-only.
    let data = env.dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), "from the host dir\n").unwrap();
    let file = env.dir.path().join("hostfile");
    std::fs::write(&file, "from the host file\n").unwrap();
    let b = env.bundle("b", &["sleep", "1000"], |s| {
        let m = s["mounts"].as_array_mut().unwrap();
        m.push(json!({"destination": "/data", "type": "bind", "source": data, "options": ["rbind", "ro"]}));
        m.push(json!({"destination": "/etc/hostfile", "type": "bind", "source": file, "options": ["bind", "rw"]}));
    });
    let (code, err) = env.hull_detached(&["run", "-d", "--bundle", b.to_str().unwrap(), "e1"]);
    assert_eq!(code, Some(0), "run -d: {err}");

    // exec with pipes: output, stdin, exit status.
    let mut child = env
        .cmd(&["exec", "e1", "sh", "-c", "cat /data/f /etc/hostfile; read x; echo got $x; touch /data/new 2>&1; echo more >> /etc/hostfile; exit 5"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), b"hello\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    let o = text(&out.stdout);
    assert!(
        o.starts_with("from the host dir\nfrom the host file\ngot hello\n"),
        "{o}"
    );
    assert!(
        o.contains("Read-only file system"),
        "the ro bind is read-only: {o}"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "from the host file\nmore\n",
        "the rw file bind writes through to the host"
    );

    // exec --tty --console-socket: the test gets the master over SCM_RIGHTS, and resizes
    // reach the guest.
    let sock = env.dir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let pid_file = env.dir.path().join("exec.pid");
    let out = env.hull(&[
        "exec",
        "--tty",
        "--detach",
        "--console-socket",
        sock.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "e1",
        "sh",
        "-c",
        "tty; while read x; do stty size; done; exit 4",
    ]);
    assert!(out.status.success(), "exec -t: {}", text(&out.stderr));
    let master = std::fs::File::from(receive_fd(&listener));
    let pid = read_pid(&pid_file);
    let seen = read_until(&master, "\n");
    assert!(seen.starts_with("/dev/pts/"), "{seen}");
    // Each line typed makes the guest print its terminal size: type until the new size shows
    // (the resize travels host pty → pid-file process → agent asynchronously).
    set_size(&master, 44, 55);
    let mut seen = String::new();
    for _ in 0..100 {
        std::io::Write::write_all(&mut &master, b"\n").unwrap();
        seen = read_until(&master, "\n");
        if seen.contains("44 55") {
            break;
        }
    }
    assert!(seen.contains("44 55"), "resize reached the guest: {seen}");
    // End of input (^D): the loop ends, the shell exits 4.
    std::io::Write::write_all(&mut &master, b"\x04").unwrap();
    assert_eq!(reap(pid), 4);

    assert!(env.hull(&["delete", "--force", "e1"]).status.success());
    env.assert_gone("e1");
}

/// A prestart hook that sets up the network of the pid it is given, as docker's
/// `libnetwork-setkey` does: the VM boots in a namespace of the sandbox's own, the hook puts a
/// veth with an address, a MAC and a default route there, and the container sees them on its
/// eth0 in the guest and reaches the other end. Deleting the container takes the veth with it.
#[test]
fn a_prestart_hook_gives_the_vm_its_network() {
    let env = Env::new("hooknet");
    let hook = env.dir.path().join("setkey.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\n\
         set -e\n\
         pid=$(jq -r .pid)\n\
         ip link add hvnet-host type veth peer name hvnet-ctr\n\
         ip link set hvnet-ctr netns \"$pid\"\n\
         ip addr add 10.98.0.1/24 dev hvnet-host\n\
         ip link set hvnet-host up\n\
         nsenter --net=/proc/$pid/ns/net sh -ec 'ip link set hvnet-ctr name eth0 address 02:42:0a:62:00:02; \
           ip addr add 10.98.0.2/24 dev eth0; ip link set eth0 up; ip route add default via 10.98.0.1'\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let script = "ip -o -4 addr show dev eth0; cat /sys/class/net/eth0/address; ip route; \
                  ping -c 1 -W 10 10.98.0.1 > /dev/null && echo PING-OK";
    let b = env.bundle("b", &["sh", "-c", script], |s| {
        s["hooks"] = json!({"prestart": [{"path": hook.to_str().unwrap()}]});
        // ping needs CAP_NET_RAW, which runc's default spec does not give (docker's does).
        for set in ["bounding", "effective", "permitted"] {
            if let Some(caps) = s["process"]["capabilities"][set].as_array_mut() {
                caps.push(json!("CAP_NET_RAW"));
            }
        }
    });
    let out = env.hull(&["run", "--bundle", b.to_str().unwrap(), "net1"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let got = text(&out.stdout);
    for want in [
        "inet 10.98.0.2/24 ",
        "02:42:0a:62:00:02",
        "default via 10.98.0.1 dev eth0",
        "PING-OK",
    ] {
        assert!(
            got.contains(want),
            "{want:?} not in the guest's view:\n{got}"
        );
    }
    env.assert_gone("net1");
    // The sandbox's namespace went with the VM, and the veth pair with it.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while Command::new("ip")
        .args(["link", "show", "hvnet-host"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the hook's veth is left on the host"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every file below `dir` with its content, sorted: a checksum of a host tree.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p.clone());
                out.push((p, Vec::new()));
            } else {
                let data = std::fs::read(&p).unwrap_or_default();
                out.push((p, data));
            }
        }
    }
    out.sort();
    out
}

/// Every capability the guest kernel knows: a container as privileged as docker's
/// `--privileged`.
const ALL_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

/// The trust boundary of the share: a privileged container mounts the sandbox's shares itself
/// (the tags the agent mounts) and tries to plant links at every path the host works at, to
/// rename the host's directories away and to fill the host's memory. Every attempt fails with a
/// read-only file system; its root file system and its volume stay writable; the host tree the
/// links point at is unchanged after the run and the delete, and nothing is left.
#[test]
fn a_privileged_container_cannot_redirect_the_host_through_the_share() {
    let env = Env::new("hostile");
    // The host tree a planted link would point the host's cleanup at.
    let victim = Victim::new(&env);
    let volume = env.dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let v = victim.dir.display();
    let script = format!(
        r#"mkdir -p /share /roots && mount -t virtiofs hull-shared /share || {{ echo NO-MOUNT; exit 1; }}
mount -t virtiofs hull-rootfs /roots || {{ echo NO-ROOTFS-MOUNT; exit 1; }}
c=/share/containers/hostile
[ -f $c/config.json ] || {{ echo NOT-THE-SHARE; ls -la /share $c; exit 1; }}
r=$(ls -d /roots/hostile@*)
[ -d "$r/tmp" ] || {{ echo NOT-THE-ROOT; ls -la /roots; exit 1; }}
try() {{ if "$@" 2>/dev/null; then echo "ESCAPED: $*"; else echo "refused: $*"; fi; }}
try ln -s {v} /share/containers/next
try mkdir /share/containers/next
try mv /share/containers /share/moved
try ln -s {v} /share/planted
try ln -s {v} $c/mounts/9
try mv $c/mounts $c/mounts.old
try rm -rf $c/mounts
try ln -s {v} /share/rootfs/next@0000000000000000
try mkdir /share/rootfs/next@0000000000000000
try mv /share/rootfs /share/rootfs.old
try mv /share/rootfs/${{r#/roots/}} /share/rootfs/moved
try ln -s {v} /roots/next@0000000000000000
try mkdir /roots/next@0000000000000000
try mv $r /roots/moved
try dd if=/dev/zero of=/roots/fill bs=1M count=8
try rm -f $c/config.json
try ln -s {v}/precious $c/config.json.new
try sh -c 'echo {{}} > '$c/config.json
try dd if=/dev/zero of=/share/fill bs=1M count=8
try dd if=/dev/zero of=$c/fill bs=1M count=8
echo guest > $r/tmp/guest-wrote && echo ROOTFS-WRITABLE
m=$(ls -d $c/mounts/* | head -n 1)
echo guest > $m/guest-wrote && echo VOLUME-WRITABLE
echo DONE"#
    );
    let b = env.bundle("hostile", &["sh", "-c", &script], |s| {
        owns_the_guest(s, &[]);
        s["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/data", "type": "bind", "source": volume, "options": ["rbind"]}),
        );
    });
    let out = env.hull(&["run", "--bundle", b.to_str().unwrap(), "hostile"]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {}",
        text(&out.stderr)
    );
    assert!(!stdout.contains("ESCAPED"), "{stdout}");
    assert_eq!(stdout.matches("refused:").count(), 20, "{stdout}");
    for want in ["ROOTFS-WRITABLE", "VOLUME-WRITABLE", "DONE"] {
        assert!(stdout.contains(want), "{want}: {stdout}");
    }
    // The guest's writes landed where runc's would: the rootfs and the volume.
    assert_eq!(
        std::fs::read_to_string(b.join("rootfs/tmp/guest-wrote")).unwrap(),
        "guest\n"
    );
    assert_eq!(
        std::fs::read_to_string(volume.join("guest-wrote")).unwrap(),
        "guest\n"
    );
    victim.assert_unchanged();
    let out = env.hull(&["delete", "--force", "hostile"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    victim.assert_unchanged();
    env.assert_gone("hostile");
}

/// `hull create` killed (SIGKILL, as containerd's create timeout or a Ctrl-C may) while its VM
/// boots: hull-vmm is on record from its start, so `delete --force` finds the VM and removes it
/// with everything else.
#[test]
fn create_killed_during_boot_leaves_nothing_after_delete_force() {
    let env = Env::new("killed");
    let b = env.bundle("b", &["true"], |_| {});
    let out = env.dir.path().join("create.out");
    let mut create = env
        .cmd(&["create", "--bundle", b.to_str().unwrap(), "k1"])
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&out).unwrap())
        .spawn()
        .unwrap();
    let state = env.root.join("k1").join("state.json");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !state.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "hull-vmm never got on record: {}",
            std::fs::read_to_string(&out).unwrap_or_default()
        );
        assert!(
            create.try_wait().unwrap().is_none(),
            "create ended before it was killed: {}",
            std::fs::read_to_string(&out).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let st: Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let vmm = st["vmm_pid"].as_u64().unwrap() as i32;
    create.kill().unwrap();
    create.wait().unwrap();
    let alive = |pid: i32| {
        // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
        unsafe { libc::kill(pid, 0) == 0 }
    };
    assert!(alive(vmm), "hull-vmm went with its creator");
    let out = env.hull(&["delete", "--force", "k1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.assert_gone("k1");
    // The orphaned hull-vmm came to this test (a subreaper, as containerd's shim is): reap it.
    // SAFETY: waitpid with a null status pointer only collects the child's exit.
    unsafe { libc::waitpid(vmm, std::ptr::null_mut(), 0) };
    assert!(!alive(vmm), "hull-vmm {vmm} still runs");
}

/// A container's hull-vmm runs jailed (docs/security.md) and in a cgroup of its own when the
/// spec names none (`hull/<id>-<hash>`), which `delete` removes; `hull check` says what the
/// jail holds.
#[test]
fn a_container_s_vmm_is_jailed_in_a_cgroup_of_its_own() {
    let env = Env::new("jailed");
    let b = env.bundle("jailed", &["sleep", "1000"], |_| {});
    let (code, err) = env.hull_detached(&["run", "-d", "--bundle", b.to_str().unwrap(), "jailed"]);
    assert_eq!(code, Some(0), "{err}");
    let st: Value =
        serde_json::from_slice(&std::fs::read(env.root.join("jailed").join("state.json")).unwrap())
            .unwrap();
    let vmm = st["vmm_pid"].as_u64().unwrap() as i32;
    let report = hull_tests::jail::assert_jailed(vmm);
    eprintln!("{report}");
    let cgroup = std::fs::read_to_string(format!("/proc/{vmm}/cgroup")).unwrap();
    let cg = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup v2 line: {cgroup}"))
        .to_string();
    assert!(cg.starts_with("/hull/jailed-"), "hull-vmm's cgroup: {cg}");
    let cg_dir = Path::new("/sys/fs/cgroup").join(cg.trim_start_matches('/'));
    assert!(cg_dir.is_dir());

    let check = env.hull(&["check"]);
    let out = text(&check.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("ok   VMM jail: namespaces") && l.contains("seccomp")),
        "{out}"
    );
    // Its NIC is on the host's vhost-net (the default where /dev/vhost-net opens, as it does
    // in the emulated host), whose worker the kernel started for hull-vmm and put in its
    // cgroup.
    assert!(
        out.lines()
            .any(|l| l == "ok   virtio-net: the host kernel's vhost-net (/dev/vhost-net)"),
        "{out}"
    );
    let vm: Value =
        serde_json::from_slice(&std::fs::read(env.root.join("jailed").join("vm.json")).unwrap())
            .unwrap();
    assert_eq!(vm["net"].as_array().map(Vec::len), Some(1), "{vm}");
    let worker = hull_tests::net::vhost_worker(vmm)
        .unwrap_or_else(|| panic!("no vhost-{vmm} worker: the NIC is not on vhost-net"));
    let worker_cg = std::fs::read_to_string(format!("/proc/{worker}/cgroup")).unwrap();
    assert!(
        worker_cg
            .lines()
            .any(|l| l.strip_prefix("0::") == Some(cg.as_str())),
        "vhost-{vmm} ({worker})'s cgroup: {worker_cg} (hull-vmm's: {cg})"
    );

    let out = env.hull(&["delete", "--force", "jailed"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.assert_gone("jailed");
    assert!(!cg_dir.exists(), "{} is left", cg_dir.display());
}

/// A privileged container that owns its guest ends the VM from inside, both ways it can: it
/// reboots the guest, and it kills the guest's PID 1 (hull's agent; the kernel ignores SIGKILL
/// sent to init from inside, so `hull-guest-probe kill-init` turns the agent's next system call
/// into `exit_group` with ptrace, and the guest kernel panics). `hull run` reports the container
/// gone (137, as when runc's container is killed), `delete --force` leaves nothing, and a host
/// tree outside the share is byte-for-byte the same.
#[test]
fn a_guest_that_ends_its_vm_leaves_nothing() {
    let env = Env::new("crash");
    let victim = Victim::new(&env);
    for (id, script) in [
        ("reboot", "reboot -f; sleep 30; echo STILL-HERE"),
        (
            "killinit",
            "hull-guest-probe kill-init; sleep 30; echo STILL-HERE",
        ),
    ] {
        let b = env.bundle(id, &["sh", "-c", script], |s| owns_the_guest(s, &["pid"]));
        install_probe(&b);
        let out = env.hull_within(
            &["run", "--bundle", b.to_str().unwrap(), id],
            Duration::from_secs(300),
        );
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(137), "{id}: {stdout}\n{stderr}");
        assert!(!stdout.contains("STILL-HERE"), "{id}: {stdout}");
        eprintln!("{id}: {stdout}\n{stderr}");
        let out = env.hull_within(&["delete", "--force", id], Duration::from_secs(120));
        assert!(out.status.success(), "{}", text(&out.stderr));
        env.assert_gone(id);
        victim.assert_unchanged();
    }
}

/// A guest that never closes a container's stdout: the container's process leaves a child
/// holding it (in the guest's pid namespace, so the child outlives it) and exits 3. `hull run`
/// still returns 3 with the output, after a bounded wait for the stream's end; delete leaves
/// nothing.
#[test]
fn a_guest_that_never_closes_stdout_cannot_hold_the_host() {
    let env = Env::new("noeof");
    let victim = Victim::new(&env);
    let b = env.bundle(
        "b",
        &["sh", "-c", "sleep 100000 & echo BEFORE-EXIT; exit 3"],
        |s| owns_the_guest(s, &["pid"]),
    );
    let out = env.hull_within(
        &["run", "--bundle", b.to_str().unwrap(), "noeof"],
        Duration::from_secs(300),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("BEFORE-EXIT"), "{stdout}\n{stderr}");
    let out = env.hull_within(&["delete", "--force", "noeof"], Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.assert_gone("noeof");
    victim.assert_unchanged();
}

/// A guest that stops reading the agent's vsock: a privileged container moves the guest's
/// PID 1 (hull's agent) into a cgroup of its own and freezes it, so nothing in the guest answers
/// the host or reads what it sends. `hull kill` and `hull state` end within their call limits
/// instead of hanging (a SIGKILL kills the VM, as it would a runc container), and `delete
/// --force` still removes everything.
#[test]
fn a_guest_that_freezes_its_agent_cannot_hang_the_host() {
    let env = Env::new("frozen");
    let victim = Victim::new(&env);
    let volume = env.dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let script = "mkdir -p /cg && mount -t cgroup2 none /cg && mkdir /cg/frozen \
        && echo 1 > /cg/frozen/cgroup.procs && echo 1 > /cg/frozen/cgroup.freeze \
        && grep -q 'frozen 1' /cg/frozen/cgroup.events && touch /data/frozen; sleep 100000";
    let b = env.bundle("b", &["sh", "-c", script], |s| {
        owns_the_guest(s, &["pid", "cgroup"]);
        s["mounts"].as_array_mut().unwrap().push(
            json!({"destination": "/data", "type": "bind", "source": volume, "options": ["rbind"]}),
        );
    });
    let (code, err) = env.hull_detached(&["run", "-d", "--bundle", b.to_str().unwrap(), "fz"]);
    assert_eq!(code, Some(0), "{err}");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !volume.join("frozen").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent was never frozen: {}",
            String::from_utf8_lossy(
                &std::fs::read(env.dir.path().join("detached.out")).unwrap_or_default()
            )
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A signal the agent would deliver fails, naming why; `state` answers from the host's
    // records; SIGKILL is the VM's to carry out: it is killed.
    let out = env.hull_within(&["kill", "fz", "TERM"], Duration::from_secs(300));
    let err = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a signal nobody received was sent: {err}"
    );
    assert!(err.contains("does not answer"), "{err}");
    let out = env.hull_within(&["state", "fz"], Duration::from_secs(300));
    eprintln!(
        "hull state against a frozen agent: {:?}\n{}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    let st: Value =
        serde_json::from_slice(&std::fs::read(env.root.join("fz/state.json")).unwrap()).unwrap();
    let vmm = st["vmm_pid"].as_u64().unwrap() as i32;
    let out = env.hull_within(&["kill", "fz", "KILL"], Duration::from_secs(300));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    while unsafe { libc::kill(vmm, 0) } == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGKILL left the VM running"
        );
        // SAFETY: waitpid(WNOHANG) with a null status pointer only collects an exit (the VM
        // may be this subreaper's orphan).
        unsafe { libc::waitpid(vmm, std::ptr::null_mut(), libc::WNOHANG) };
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = env.hull_within(&["delete", "--force", "fz"], Duration::from_secs(300));
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.assert_gone("fz");
    victim.assert_unchanged();
}

/// A guest that fills what it can write and creates many files: the container's writes land in
/// its rootfs, on the disk the bundle is on (a 64 MiB tmpfs here), as runc's would, and stop
/// there with ENOSPC; the host's state root is not where they go, and `delete --force` leaves
/// nothing.
#[test]
fn a_guest_that_fills_its_disk_and_makes_many_files_leaves_nothing() {
    let env = Env::new("fill");
    let victim = Victim::new(&env);
    let disk = env.dir.path().join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &disk,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=64m"),
    )
    .unwrap();
    let script = "mkdir /many && cd /many && for i in $(seq 1 100); do mkdir $i && \
        (cd $i && touch $(seq 1 100)) || exit 1; done; echo MANY=$(find /many -type f | wc -l); \
        dd if=/dev/zero of=/fill bs=1M 2>&1 | grep -o 'No space left on device' | head -n 1; \
        echo DONE";
    let b = env.bundle("disk/b", &["sh", "-c", script], |s| owns_the_guest(s, &[]));
    let out = env.hull_within(
        &["run", "--bundle", b.to_str().unwrap(), "fill"],
        Duration::from_secs(600),
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for want in ["MANY=10000", "No space left on device", "DONE"] {
        assert!(stdout.contains(want), "{want}: {stdout}\n{stderr}");
    }
    let filled = std::fs::metadata(b.join("rootfs/fill")).unwrap().len();
    assert!(
        filled > 32 << 20,
        "the fill landed elsewhere: {filled} bytes in the rootfs"
    );
    let out = env.hull_within(&["delete", "--force", "fill"], Duration::from_secs(120));
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.assert_gone("fill");
    victim.assert_unchanged();
    nix::mount::umount2(&disk, nix::mount::MntFlags::MNT_DETACH).unwrap();
}

/// Fault injection: the pid-file process of a running container (what containerd's shim
/// watches as the container) is SIGKILLed. The VM goes on until `delete --force`, which
/// leaves nothing: no VM, mount, state or cgroup.
#[test]
fn a_killed_pid_file_process_leaves_nothing_after_delete_force() {
    let env = Env::new("killmon");
    let b = env.bundle("b", &["sleep", "1000"], |_| {});
    let pid_file = env.dir.path().join("pid");
    let (code, err) = env.hull_detached(&[
        "run",
        "-d",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "m1",
    ]);
    assert_eq!(code, Some(0), "{err}");
    let monitor = read_pid(&pid_file);
    let st: Value =
        serde_json::from_slice(&std::fs::read(env.root.join("m1").join("state.json")).unwrap())
            .unwrap();
    let vmm = st["vmm_pid"].as_u64().unwrap() as i32;
    let cgroup = st["host_cgroup"].as_str().map(PathBuf::from);
    // SAFETY: kill(2) of the pid-file process this test started.
    assert_eq!(unsafe { libc::kill(monitor, libc::SIGKILL) }, 0);
    assert_eq!(reap(monitor), 128 + libc::SIGKILL);
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    assert_eq!(unsafe { libc::kill(vmm, 0) }, 0, "the VM went with it");
    let out = env.hull(&["delete", "--force", "m1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    env.assert_gone("m1");
    if let Some(cg) = cgroup {
        assert!(!cg.exists(), "{} is left", cg.display());
    }
}

/// Fault injection: the state root is full (a 16 KiB tmpfs). `create` fails with an error
/// that says so, and leaves nothing: no sandbox directory, VM or mount.
#[test]
fn a_full_state_root_is_a_clear_error_that_leaves_nothing() {
    let mut env = Env::new("enospc");
    let small = env.dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=16k"),
    )
    .unwrap();
    // Fill it but for a page or so.
    let filler = small.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 12 * 1024]);
    env.root = small.join("root");
    let b = env.bundle("b", &["true"], |_| {});
    let out = env.hull(&["create", "--bundle", b.to_str().unwrap(), "full"]);
    let stderr = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    env.assert_gone("full");
    let left: Vec<_> = std::fs::read_dir(&env.root)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left under the root: {left:?}");
    nix::mount::umount2(&small, nix::mount::MntFlags::MNT_DETACH).unwrap();
}

/// What a process can see of its own confinement, printed the same way by a container's init
/// and by processes exec'd into it: seccomp mode, no_new_privs, capabilities, ids and groups,
/// its open-files limit, a masked file, a read-only path, a call the container's filter
/// answers with EXDEV, and its cgroup (last, on one line).
const CONFINEMENT_PROBE: &str = r#"grep -E '^(Seccomp|NoNewPrivs|CapInh|CapPrm|CapEff|CapBnd|CapAmb|Uid|Gid|Groups):' /proc/self/status
grep 'Max open files' /proc/self/limits
echo "masked=[$(cat /etc/secret)]"
if touch /etc/rodir/x 2>/dev/null; then echo readonly=no; else echo readonly=yes; fi
hostname changed 2>&1; echo "hostname=$?"
echo "cgroup=$(cat /proc/self/cgroup)"
"#;

/// A bundle whose container is confined in every way runc confines one: a seccomp filter
/// that answers `sethostname` with EXDEV, two capabilities, no_new_privs, uid/gid 1000 with a
/// supplementary group, an open-files limit of 777/888, a masked file and a read-only path.
/// The probe script is `/probe.sh`; `/out` is writable by everyone.
fn confined_bundle(env: &Env, name: &str, args: &[&str]) -> PathBuf {
    let b = env.bundle(name, args, |s| {
        s["linux"]["seccomp"] = json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64"],
            "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EXDEV}],
        });
        let caps = json!(["CAP_KILL", "CAP_CHOWN"]);
        s["process"]["capabilities"] = json!({"bounding": caps, "effective": caps, "permitted": caps});
        s["process"]["noNewPrivileges"] = json!(true);
        s["process"]["user"] = json!({"uid": 1000, "gid": 1000, "additionalGids": [3000]});
        s["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "soft": 777, "hard": 888}]);
        s["process"]["cwd"] = json!("/");
        let masked = s["linux"]["maskedPaths"].as_array_mut().unwrap();
        masked.push(json!("/etc/secret"));
        let ro = s["linux"]["readonlyPaths"].as_array_mut().unwrap();
        ro.push(json!("/etc/rodir"));
    });
    let root = b.join("rootfs");
    std::fs::write(root.join("probe.sh"), CONFINEMENT_PROBE).unwrap();
    std::fs::write(root.join("etc/secret"), "host secret").unwrap();
    std::fs::create_dir_all(root.join("etc/rodir")).unwrap();
    std::fs::create_dir_all(root.join("out")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for d in ["etc/rodir", "out"] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    b
}

/// The probe's output without its cgroup line (which names the cgroup tree of the kernel it
/// ran on), and the cgroup line.
fn split_cgroup(out: &str) -> (String, String) {
    let (rest, cg) = out
        .split_once("cgroup=")
        .unwrap_or_else(|| panic!("no cgroup line in the probe's output:\n{out}"));
    (rest.to_string(), cg.trim().to_string())
}

/// A field of the probe's output (`Name:` line of /proc/self/status), whitespace-normalised.
fn field(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in:\n{out}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// runc's `exec` runs a process under the container's confinement: its seccomp filter (the
/// container's, always), and the exec's own capabilities, no_new_privs, user and groups and
/// rlimits, in the container's cgroup and mount namespace (masked and read-only paths). The
/// container's init is compared with runc's side by side; exec'd processes (runc's `exec`
/// cannot run in the emulated host) with what their process object asks for.
#[test]
fn exec_runs_under_the_container_s_confinement() {
    let env = Env::new("confine");

    // runc, side by side: its init's view of the same spec.
    let rb = confined_bundle(&env, "runc", &["sh", "/probe.sh"]);
    let out = env.runc_run(&rb, "confine-runc");
    assert!(out.status.success(), "runc run: {}", text(&out.stderr));
    let (runc_view, _) = split_cgroup(&text(&out.stdout));
    assert!(
        runc_view.contains("Invalid cross-device link"),
        "runc applied the filter:\n{runc_view}"
    );

    // hull: the same spec's init, then exec'd processes.
    let b = confined_bundle(
        &env,
        "hull",
        &["sh", "-c", "sh /probe.sh > /out/init; exec sleep 1000"],
    );
    let (code, err) = env.hull_detached(&["run", "-d", "--bundle", b.to_str().unwrap(), "conf"]);
    assert_eq!(code, Some(0), "run -d: {err}");
    let init_out = b.join("rootfs/out/init");
    for _ in 0..200 {
        if std::fs::read_to_string(&init_out).is_ok_and(|s| s.contains("cgroup=")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let init = std::fs::read_to_string(&init_out).expect("the container's init ran the probe");
    let (init_view, init_cgroup) = split_cgroup(&init);
    assert_eq!(init_view, runc_view, "hull's init is confined as runc's");

    // exec with the flags: the container's own process (runc's `exec` without --process).
    let out = env.hull(&["exec", "conf", "sh", "/probe.sh"]);
    assert!(out.status.success(), "exec: {}", text(&out.stderr));
    let (view, cgroup) = split_cgroup(&text(&out.stdout));
    assert_eq!(view, init_view, "exec is confined as the container's init");
    assert_eq!(cgroup, init_cgroup, "exec runs in the container's cgroup");

    // exec --process: its own capabilities, user, groups, no_new_privs and rlimits; the
    // container's seccomp filter, cgroup and mounts whatever it asks for.
    let process = env.dir.path().join("process.json");
    // (inheritable and ambient too: a non-root user keeps only ambient capabilities across
    // execve, with runc as in the kernel)
    let cap = json!(["CAP_NET_BIND_SERVICE"]);
    std::fs::write(
        &process,
        serde_json::to_vec(&json!({
            "terminal": false,
            "user": {"uid": 2000, "gid": 2000, "additionalGids": [4000]},
            "args": ["sh", "/probe.sh"],
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {"bounding": cap, "effective": cap, "permitted": cap, "inheritable": cap, "ambient": cap},
            "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 555, "hard": 666}],
            "noNewPrivileges": true,
        }))
        .unwrap(),
    )
    .unwrap();
    let out = env.hull(&["exec", "--process", process.to_str().unwrap(), "conf"]);
    assert!(
        out.status.success(),
        "exec --process: {}",
        text(&out.stderr)
    );
    let (view, cgroup) = split_cgroup(&text(&out.stdout));
    assert_eq!(field(&view, "Seccomp"), "2", "{view}");
    assert_eq!(field(&view, "NoNewPrivs"), "1", "{view}");
    let net_bind = format!("{:016x}", 1u64 << 10);
    for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(&view, set), net_bind, "{set}: {view}");
    }
    assert_eq!(field(&view, "Uid"), "2000 2000 2000 2000", "{view}");
    assert_eq!(field(&view, "Gid"), "2000 2000 2000 2000", "{view}");
    assert_eq!(field(&view, "Groups"), "4000", "{view}");
    let limits = view
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        limits.split_whitespace().collect::<Vec<_>>(),
        ["Max", "open", "files", "555", "666", "files"],
        "{view}"
    );
    assert!(view.contains("masked=[]\n"), "{view}");
    assert!(view.contains("readonly=yes\n"), "{view}");
    assert!(
        view.contains("Invalid cross-device link") && view.contains("hostname=1\n"),
        "the container's filter holds for exec:\n{view}"
    );
    assert_eq!(cgroup, init_cgroup, "exec runs in the container's cgroup");

    assert!(env.hull(&["delete", "--force", "conf"]).status.success());
    env.assert_gone("conf");
}

/// `linux.devices`: each node is made in the container with its type, numbers, mode and owner,
/// as runc makes it, and the device cgroup's rules hold: one allowed by `linux.resources`
/// opens, one no rule allows is refused. In the guest the numbers name the guest kernel's
/// devices: /dev/fuse and /dev/net/tun are its FUSE and TUN (built in).
#[test]
fn linux_devices_are_made_in_the_guest_as_runc_makes_them() {
    let env = Env::new("devices");
    let probe = "stat -c '%n %F %t:%T %a %u:%g' /dev/fuse /dev/denied; \
                 if (exec 3</dev/denied) 2>/dev/null; then echo denied=opened; else echo denied=refused; fi";
    let edit = |s: &mut Value| {
        s["linux"]["devices"] = json!([
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o640, "uid": 0, "gid": 2},
            {"path": "/dev/denied", "type": "c", "major": 1, "minor": 1, "fileMode": 0o600, "uid": 0, "gid": 0},
            {"path": "/dev/net/tun", "type": "c", "major": 10, "minor": 200, "fileMode": 0o666, "uid": 0, "gid": 0},
        ]);
        let rules = s["linux"]["resources"]["devices"].as_array_mut().unwrap();
        rules.push(json!({"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"}));
        rules.push(json!({"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}));
    };
    let rb = env.bundle("runc", &["sh", "-c", probe], edit);
    let out = env.runc_run(&rb, "dev-runc");
    assert!(out.status.success(), "runc run: {}", text(&out.stderr));
    let runc_view = text(&out.stdout);
    assert!(
        runc_view.contains("/dev/fuse character special file a:e5 640 0:2"),
        "{runc_view}"
    );
    assert!(runc_view.contains("denied=refused"), "{runc_view}");

    let script = format!(
        "{probe}; if [ -c /dev/fuse ] && (exec 3<>/dev/fuse); then echo fuse=opened; fi; \
         if [ -c /dev/net/tun ] && (exec 3<>/dev/net/tun); then echo tun=opened; fi"
    );
    let b = env.bundle("hull", &["sh", "-c", &script], edit);
    let out = env.hull(&["run", "--bundle", b.to_str().unwrap(), "dev"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let view = text(&out.stdout);
    assert_eq!(
        view.strip_suffix("fuse=opened\ntun=opened\n"),
        Some(runc_view.as_str()),
        "the nodes as runc makes them, and the guest's FUSE and TUN open:\n{view}"
    );
    env.assert_gone("dev");
}

/// Bind mounts of a host directory (a shared mount, as kubelet volumes are) with each
/// propagation option, plain and recursive: each is in the container with the propagation
/// runc gives it (mountinfo's optional fields: shared, master, unbindable, or none).
#[test]
fn bind_propagation_options_are_as_under_runc() {
    let env = Env::new("bindprop");
    let modes = [
        "shared",
        "slave",
        "private",
        "unbindable",
        "rshared",
        "rslave",
        "rprivate",
        "runbindable",
    ];
    let probe = format!(
        "for d in {}; do awk -v d=/p-$d '$5 == d {{ t = \"\"; for (i = 7; $i != \"-\"; i++) {{ split($i, a, \":\"); t = t \" \" a[1] }} print d \":\" t }}' /proc/self/mountinfo; done",
        modes.join(" ")
    );
    let mut views = Vec::new();
    for (name, with_runc) in [("runc", true), ("hull", false)] {
        let vol = env.dir.path().join(format!("vol-{name}"));
        std::fs::create_dir_all(&vol).unwrap();
        let v = vol.display();
        let st = Command::new("sh")
            .args([
                "-c",
                &format!("mount --bind {v} {v} && mount --make-shared {v}"),
            ])
            .status()
            .unwrap();
        assert!(st.success());
        let b = env.bundle(name, &["sh", "-c", &probe], |s| {
            let m = s["mounts"].as_array_mut().unwrap();
            for mode in modes {
                let bind = if mode.starts_with('r') { "rbind" } else { "bind" };
                m.push(json!({"destination": format!("/p-{mode}"), "type": "bind", "source": vol, "options": [bind, mode]}));
            }
        });
        let out = if with_runc {
            env.runc_run(&b, "bindprop-runc")
        } else {
            env.hull(&["run", "--bundle", b.to_str().unwrap(), "bindprop"])
        };
        let _ = Command::new("umount").arg(&vol).status();
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        views.push(text(&out.stdout));
    }
    assert_eq!(
        views[0].lines().count(),
        modes.len(),
        "every bind is in runc's container:\n{}",
        views[0]
    );
    assert_eq!(
        views[1], views[0],
        "hull's propagation fields against runc's"
    );
    env.assert_gone("bindprop");
}

/// What a privileged container manages on a stock distribution kernel under runc, it manages
/// in hull's guest: bridges, veth pairs, dummy, VLAN, macvlan, ipvlan and VXLAN links, and
/// netfilter rules through iptables' legacy and nft back ends (NAT, masquerade, redirect,
/// conntrack, addrtype, comment, multiport, statistic, IPv6 NAT), bridge netfilter, and a time
/// namespace. The host's iptables, ip and unshare (Debian's, read-only at /usr; `/bin` is
/// busybox's) run in both;
/// runc here runs on the host's Debian kernel, side by side.
#[test]
fn a_privileged_container_manages_links_and_netfilter_as_under_runc() {
    let env = Env::new("netadmin");
    let probe = r#"set -e
ip=/usr/bin/ip
$ip link add br0 type bridge
$ip link add v0 type veth peer name v1
$ip link set v0 master br0
$ip link add d0 type dummy
$ip link add d1 type dummy
$ip link add link d0 name d0.5 type vlan id 5
$ip link add mv0 link d0 type macvlan mode bridge
$ip link add ipv0 link d1 type ipvlan mode l2
$ip link add vx0 type vxlan id 42 dstport 4789 dev d0
for l in br0 v0 v1 d0 d1 d0.5 mv0 ipv0 vx0; do $ip -d -o link show $l | grep -oE '^[0-9]+: [^:@]+|(bridge|veth|dummy|vlan|macvlan|ipvlan|vxlan) ' | tr '
' ' ' | sed 's/^[0-9]*: //'; echo; done
echo master: $($ip -o link show v0 | grep -o 'master br0')
for ipt in iptables-legacy iptables-nft; do
  $ipt -t nat -A POSTROUTING -s 10.1.0.0/16 ! -o br0 -j MASQUERADE
  $ipt -t nat -A PREROUTING -p tcp -m multiport --dports 80,443 -j REDIRECT --to-ports 8080
  $ipt -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
  $ipt -A INPUT -m addrtype --dst-type LOCAL -m comment --comment hull -j ACCEPT
  $ipt -A INPUT -m statistic --mode random --probability 0.5 -j ACCEPT
  $ipt -A FORWARD -m mark --mark 0x1 -j DROP
  echo "$ipt:"; $ipt -S; $ipt -t nat -S
done
ip6tables-legacy -t nat -A POSTROUTING -j MASQUERADE
ip6tables-legacy -t nat -S POSTROUTING
/usr/bin/unshare --time readlink /proc/self/ns/time_for_children >/dev/null && echo time-ns
echo done"#;
    let edit = |s: &mut Value| {
        for set in ["bounding", "effective", "permitted"] {
            s["process"]["capabilities"][set] = json!(ALL_CAPS);
        }
        s["process"]["env"] = json!(["PATH=/bin:/usr/sbin:/usr/bin"]);
        s["linux"]["maskedPaths"] = json!([]);
        s["linux"]["readonlyPaths"] = json!([]);
        let m = s["mounts"].as_array_mut().unwrap();
        m.push(json!({"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]}));
        // iptables takes its lock in /run.
        m.push(json!({"destination": "/run", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}));
        // /proc/sys writable, as a privileged container's is.
        for mount in m.iter_mut() {
            if mount["destination"] == "/sys" {
                mount["options"] = json!(["nosuid", "noexec", "nodev"]);
            }
        }
    };
    let libs = |b: &Path| {
        for l in ["lib", "lib64", "sbin"] {
            std::os::unix::fs::symlink(format!("usr/{l}"), b.join("rootfs").join(l)).unwrap();
        }
    };
    let rb = env.bundle("runc", &["sh", "-c", probe], edit);
    libs(&rb);
    let out = env.runc_run(&rb, "netadmin-runc");
    assert!(
        out.status.success(),
        "runc run on the host's kernel: {}
{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let runc_view = text(&out.stdout);
    assert!(
        runc_view.ends_with(
            "time-ns
done
"
        ),
        "{runc_view}"
    );

    // Bridge netfilter is built into the guest kernel; on the host it is a module that only
    // a host's modprobe loads, so it is checked in the guest alone.
    let script =
        format!("{probe}\necho bridge-nf: $(cat /proc/sys/net/bridge/bridge-nf-call-iptables)");
    let b = env.bundle("hull", &["sh", "-c", &script], edit);
    libs(&b);
    let out = env.hull(&["run", "--bundle", b.to_str().unwrap(), "netadmin"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}
{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let view = text(&out.stdout);
    assert_eq!(
        view.strip_suffix("bridge-nf: 1\n"),
        Some(runc_view.as_str()),
        "the guest kernel does what the host's stock kernel does under runc:\n{view}"
    );
    env.assert_gone("netadmin");
}

/// Mount propagation as CRI writes it for `mountPropagation: Bidirectional` and
/// `HostToContainer`: `rootfsPropagation: rshared` with an `rshared` and an `rslave` bind of a
/// host directory on a shared mount (as the kubelet requires). The container starts as runc's
/// does, and a mount the host makes under the volume after the container started appears in
/// it through both binds (host to container; container to host cannot cross the VM).
#[test]
fn host_mounts_propagate_into_rshared_and_rslave_volumes() {
    let env = Env::new("propagation");
    for (name, run_with_runc) in [("runc", true), ("hull", false)] {
        let vol = env.dir.path().join(format!("vol-{name}"));
        std::fs::create_dir_all(vol.join("sub")).unwrap();
        let sh = |cmd: &str| {
            let st = Command::new("sh").args(["-c", cmd]).status().unwrap();
            assert!(st.success(), "{cmd}");
        };
        let v = vol.display();
        sh(&format!("mount --bind {v} {v} && mount --make-shared {v}"));
        // Waits (at most 60 s) for the host's mount, then shows what came through each bind.
        let script = "touch /shared/started; i=0; \
                      while [ ! -e /shared/sub/f ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; \
                      cat /shared/sub/f /slave/sub/f";
        let b = env.bundle(name, &["sh", "-c", script], |s| {
            s["linux"]["rootfsPropagation"] = json!("rshared");
            let m = s["mounts"].as_array_mut().unwrap();
            m.push(json!({"destination": "/shared", "type": "bind", "source": vol, "options": ["rbind", "rshared"]}));
            m.push(json!({"destination": "/slave", "type": "bind", "source": vol, "options": ["rbind", "rslave"]}));
        });
        let mut cmd = if run_with_runc {
            env.runc_cmd()
        } else {
            env.cmd(&[])
        };
        let child = cmd
            .args([
                "run",
                "--bundle",
                b.to_str().unwrap(),
                &format!("prop-{name}"),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let started = vol.join("started");
        for _ in 0..1200 {
            if started.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(started.exists(), "{name}: the container did not start");
        sh(&format!(
            "mount -t tmpfs hostmount {v}/sub && echo from-the-host > {v}/sub/f"
        ));
        let out = child.wait_with_output().unwrap();
        // The container is gone (run deletes it): the host's own mount under the volume must
        // still be there. Taking a propagating bind off could take the host's submount with it.
        let still = Command::new("sh")
            .args(["-c", &format!("mountpoint -q {v}/sub && cat {v}/sub/f")])
            .output()
            .unwrap();
        sh(&format!("umount {v}/sub && umount {v}"));
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        assert_eq!(
            text(&still.stdout),
            "from-the-host\n",
            "{name}: removing the container unmounted the host's mount under the volume"
        );
        assert_eq!(
            text(&out.stdout),
            "from-the-host\nfrom-the-host\n",
            "{name}: the host's mount reached both binds"
        );
    }
    env.assert_gone("prop-hull");
}

#[test]
fn hull_template_makes_lists_and_removes_the_template_containers_start_from() {
    let env = Env::new("template");
    let templates = env.dir.path().join("templates");
    // This test's own templates, and the template start path whatever HULL_TEST_START says.
    let mut cfg = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("start = \"boot\"", "start = \"snapshot\"");
    cfg.push_str(&format!("template_dir = {:?}\n", templates));
    std::fs::write(&env.config, cfg).unwrap();
    let lines = |out: &Output| -> Vec<String> {
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout).lines().map(str::to_string).collect()
    };
    assert_eq!(
        lines(&env.hull(&["template", "list"])).len(),
        1,
        "a header only"
    );

    // Made ahead of the first container (one NIC: a container's network of its own).
    let made = lines(&env.hull_within(&["template", "build"], Duration::from_secs(300)));
    let dir = PathBuf::from(&made[0]);
    assert!(dir.join("snapshot/vmstate").exists(), "{made:?}");
    let key = dir.file_name().unwrap().to_string_lossy().into_owned();
    let list = lines(&env.hull(&["template", "list"]));
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(
        list[1].starts_with(&key) && list[1].ends_with("yes"),
        "{list:?}"
    );

    // A container starts from it, and runs.
    let b = env.bundle("b", &["sh", "-c", "echo ran"], |_| {});
    let out = env.hull_within(
        &["create", "--bundle", b.to_str().unwrap(), "t1"],
        Duration::from_secs(300),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let vm: Value =
        serde_json::from_slice(&std::fs::read(env.root.join("t1/vm.json")).unwrap()).unwrap();
    assert_eq!(
        vm["restore_from"].as_str(),
        Some(dir.join("snapshot").to_str().unwrap()),
        "{vm}"
    );
    let out = env.hull_within(&["delete", "--force", "t1"], Duration::from_secs(300));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    env.assert_gone("t1");
    let out = env.hull_within(
        &["run", "--bundle", b.to_str().unwrap(), "t2"],
        Duration::from_secs(300),
    );
    assert_eq!(text(&out.stdout), "ran\n", "{}", text(&out.stderr));
    env.assert_gone("t2");
    assert_eq!(
        lines(&env.hull(&["template", "list"])).len(),
        2,
        "one template"
    );

    // Removed: by key, or all of them; a key that names none is an error.
    let out = env.hull(&["template", "rm"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("--all"), "{}", text(&out.stderr));
    assert_eq!(
        lines(&env.hull(&["template", "rm", "--all"])),
        [format!("removed {key}")]
    );
    assert!(!dir.exists());
    assert_eq!(lines(&env.hull(&["template", "list"])).len(), 1);
    let out = env.hull(&["template", "rm", "0123abcd"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("no template 0123abcd"),
        "{}",
        text(&out.stderr)
    );
}
