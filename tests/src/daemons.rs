//! containerd and dockerd started by a test, each with its own state directories and sockets
//! (Debian's packages; their package scripts do not start them). Their roots are tmpfs mounts:
//! the emulated KVM host's root is an overlay, and overlayfs snapshots cannot sit on overlay.
//! Dropping one stops the daemon and removes everything it made.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon may take to come up (generous: the emulated host is slow).
const START_LIMIT: Duration = Duration::from_secs(120);

fn mount_tmpfs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let st = Command::new("mount")
        .args(["-t", "tmpfs", "tmpfs"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "mount tmpfs on {}", dir.display());
}

fn unmount_all(dir: &Path) {
    let _ = Command::new("umount").arg("-R").arg("-l").arg(dir).status();
}

/// Waits until `path` exists, or panics with the daemon's log.
fn wait_socket(what: &str, path: &Path, child: &mut Child, log: &Path) {
    let start = Instant::now();
    while !path.exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "{what} exited ({st}) before it listened on {}:\n{}",
                path.display(),
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            start.elapsed() < START_LIMIT,
            "{what} did not listen on {} within {START_LIMIT:?}:\n{}",
            path.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut Child) {
    // SAFETY: kill with a pid we own and a signal number.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let start = Instant::now();
    while child.try_wait().ok().flatten().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A containerd of the test's own.
pub struct Containerd {
    child: Child,
    dir: PathBuf,
    /// Its gRPC socket (`ctr -a`).
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Containerd {
    /// Starts containerd under `dir` (a short path: its sockets live there) with `env` added
    /// to its environment (the shims it starts inherit it) and `extra` appended to its
    /// config.toml.
    pub fn start(dir: &Path, env: &[(&str, &std::ffi::OsStr)], extra: &str) -> Containerd {
        let root = dir.join("root");
        mount_tmpfs(&root);
        let socket = dir.join("c.sock");
        let config = dir.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = {:?}\nstate = {:?}\n[grpc]\n  address = {:?}\n[ttrpc]\n  address = {:?}\n{extra}\n",
                root.join("lib"),
                root.join("run"),
                socket,
                dir.join("c.sock.ttrpc"),
            ),
        )
        .unwrap();
        let log = dir.join("containerd.log");
        let mut child = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("containerd (package containerd) runs");
        wait_socket("containerd", &socket, &mut child, &log);
        Containerd {
            child,
            dir: dir.to_path_buf(),
            socket,
            log,
        }
    }

    /// `ctr -a SOCKET -n NAMESPACE ...`.
    pub fn ctr(&self, namespace: &str) -> Command {
        let mut c = Command::new("ctr");
        c.arg("-a").arg(&self.socket).args(["-n", namespace]);
        c
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        stop(&mut self.child);
        unmount_all(&self.dir.join("root"));
    }
}

/// A dockerd of the test's own, on a [`Containerd`].
pub struct Dockerd {
    child: Child,
    data: PathBuf,
    /// dockerd's `--exec-root`: runtime roots below it (`runtime-NAME/moby`).
    pub exec_root: PathBuf,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Dockerd {
    /// Starts dockerd under `dir` with the runtimes `(name, runc-compatible binary)`, its
    /// default bridge network (docker0) and no iptables (the test host has no firewall to
    /// manage; docker-proxy publishes ports).
    pub fn start(dir: &Path, containerd: &Containerd, runtimes: &[(&str, &Path)]) -> Dockerd {
        let data = dir.join("data");
        mount_tmpfs(&data);
        // Short: the runtime root below it (runtime-NAME/moby/<64-hex id>) gets long.
        let exec_root = PathBuf::from(format!("/run/hd{}", std::process::id()));
        std::fs::create_dir_all(&exec_root).unwrap();
        let socket = dir.join("d.sock");
        let log = dir.join("dockerd.log");
        let mut cmd = Command::new("dockerd");
        cmd.arg("--data-root")
            .arg(&data)
            .arg("--exec-root")
            .arg(&exec_root)
            .arg("-H")
            .arg(format!("unix://{}", socket.display()))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("--containerd")
            .arg(&containerd.socket)
            .args([
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--storage-driver=overlay2",
            ]);
        for (name, path) in runtimes {
            cmd.arg("--add-runtime")
                .arg(format!("{name}={}", path.display()));
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("dockerd (package docker.io) runs");
        wait_socket("dockerd", &socket, &mut child, &log);
        Dockerd {
            child,
            data,
            exec_root,
            socket,
            log,
        }
    }

    /// `docker -H unix://SOCKET ...`.
    pub fn docker(&self) -> Command {
        let mut c = Command::new("docker");
        c.arg("-H").arg(format!("unix://{}", self.socket.display()));
        c
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        stop(&mut self.child);
        unmount_all(&self.data);
        unmount_all(&self.exec_root);
        let _ = std::fs::remove_dir_all(&self.exec_root);
    }
}

/// A docker-archive of a test image (`tests/images/build.sh`: `busybox` or `server`).
pub fn image(dir: &Path, kind: &str) -> PathBuf {
    let out = dir.join(format!("{kind}.tar"));
    let st = Command::new(crate::workspace_root().join("tests/images/build.sh"))
        .arg(&out)
        .arg(kind)
        .status()
        .unwrap();
    assert!(st.success(), "tests/images/build.sh {kind}");
    out
}
