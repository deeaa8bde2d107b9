//! containerd with hull's shim (`io.containerd.hull.v2`), end to end: a containerd 1.6 of the
//! test's own (root on a tmpfs, its own sockets, the CRI plugin off) runs a busybox image
//! through `ctr`, and every task runs in a hull VM: the guest's kernel, exit codes, exec,
//! kill, pause/resume, metrics, removal leaving no VM and no mount, and a shim killed with
//! SIGKILL cleaned up by `containerd-shim-hull-v2 delete`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hull_tests::procs::{shim_pids, vmm_pids};
use hull_tests::terminal::interactive_shell;
use hull_tests::vm::mounts_below;
use hull_tests::{bin, require_kvm, workspace_root, TempDir};

const NS: &str = "hull";
const RUNTIME: &str = "io.containerd.hull.v2";
/// Longest any one ctr command may take (a VM boots under emulation in the test host).
const CTR_LIMIT_SECS: u32 = 600;
/// Longest the test waits for containerd, or for a state it polls for.
const WAIT_LIMIT: Duration = Duration::from_secs(300);

struct Containerd {
    child: Child,
    dir: TempDir,
    sock: PathBuf,
    /// `HULL_SHIM_ROOT`: the shim's sandboxes live below it.
    shim_root: PathBuf,
    tmpfs: PathBuf,
}

impl Containerd {
    fn start() -> Containerd {
        let dir = TempDir::new("hull-shim-vm");
        let d = dir.path();
        // overlayfs snapshots cannot sit on the overlay the test host's /tmp may be.
        let tmpfs = d.join("root");
        std::fs::create_dir(&tmpfs).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &tmpfs,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("mode=0700"),
        )
        .expect("mount a tmpfs for containerd's root");
        let sock = d.join("c.sock");
        let shim_root = d.join("shim");
        let hull_config = d.join("hull.toml");
        hull_tests::vm::write_runtime_config(&hull_config);
        let config = d.join("containerd.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = {root:?}
state = {state:?}
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = {sock:?}

[ttrpc]
  address = {ttrpc:?}

[debug]
  level = "debug"
"#,
                root = tmpfs.join("containerd"),
                state = d.join("state"),
                sock = sock,
                ttrpc = d.join("c.sock.ttrpc"),
            ),
        )
        .unwrap();
        let shim = bin("containerd-shim-hull-v2");
        let path = format!(
            "{}:{}",
            shim.parent().unwrap().display(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
        );
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let child = Command::new("/usr/bin/containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", path)
            .env("HULL_CONFIG", &hull_config)
            .env("HULL_SHIM_ROOT", &shim_root)
            .env("HULL_SHIM_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start /usr/bin/containerd");
        let c = Containerd {
            child,
            dir,
            sock,
            shim_root,
            tmpfs,
        };
        let start = Instant::now();
        loop {
            let out = c.ctr_output(&["version"]);
            if out.status.success() {
                break;
            }
            assert!(
                start.elapsed() < WAIT_LIMIT,
                "containerd did not come up; its log:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr -a SOCK -n hull ARGS...` (under `timeout`), its output.
    fn ctr_output(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg(CTR_LIMIT_SECS.to_string())
            .arg("ctr")
            .arg("-a")
            .arg(&self.sock)
            .arg("-n")
            .arg(NS)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Runs ctr; returns (exit code, stdout, stderr).
    fn ctr(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.ctr_output(args);
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs ctr and expects success; returns stdout.
    fn ctr_ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.ctr(args);
        assert_eq!(
            code,
            0,
            "ctr {args:?} failed\nstdout: {out}\nstderr: {err}\ncontainerd's log (tail):\n{}",
            tail(&self.log(), 80)
        );
        out
    }

    /// The task's status column in `ctr task ls` (None: not listed).
    fn task_status(&self, id: &str) -> Option<String> {
        self.ctr_ok(&["task", "ls"])
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.first() == Some(&id))
            .and_then(|f| f.last().map(|s| s.to_string()))
    }

    fn wait_until(&self, what: &str, cond: impl Fn() -> bool) {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < WAIT_LIMIT,
                "{what} did not happen; containerd's log (tail):\n{}",
                tail(&self.log(), 120)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Imports the test image; returns its name as containerd lists it.
    fn import_busybox(&self) -> String {
        let tar = self.dir.path().join("busybox.tar");
        let script = workspace_root().join("tests/images/build.sh");
        let st = Command::new(&script)
            .arg(&tar)
            .status()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(st.success(), "{} failed", script.display());
        self.ctr_ok(&["images", "import", tar.to_str().unwrap()]);
        let names = self.ctr_ok(&["images", "ls", "-q"]);
        names
            .lines()
            .find(|n| n.contains("hull-test/busybox"))
            .unwrap_or_else(|| panic!("no hull-test/busybox image after the import: {names}"))
            .trim()
            .to_string()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
        for p in vmm_pids(&self.shim_root) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(p),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        for m in mounts_below(self.dir.path()).into_iter().rev() {
            let _ = nix::mount::umount2(Path::new(&m), nix::mount::MntFlags::MNT_DETACH);
        }
        let _ = nix::mount::umount2(&self.tmpfs, nix::mount::MntFlags::MNT_DETACH);
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<_> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn host_kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn ctr_runs_tasks_in_hull_vms() {
    require_kvm();
    let c = Containerd::start();
    let image = c.import_busybox();
    let img = image.as_str();

    // The task runs in a VM: another kernel. `--rm` removes it again.
    let out = c.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        img,
        "t1",
        "uname",
        "-r",
    ]);
    let release = out.trim();
    assert!(!release.is_empty(), "uname -r printed nothing");
    assert_ne!(
        release,
        host_kernel_release(),
        "the task ran on the host's kernel"
    );

    // Exit codes come through.
    let (code, out, err) = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        img,
        "t1b",
        "sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(code, 3, "stdout: {out}\nstderr: {err}");

    // A detached task, an exec in it.
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        img,
        "t2",
        "sleep",
        "1000",
    ]);
    assert_eq!(c.task_status("t2").as_deref(), Some("RUNNING"));
    let out = c.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "e1",
        "t2",
        "sh",
        "-c",
        "echo hi",
    ]);
    assert_eq!(out.trim(), "hi");
    let (code, _, _) = c.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "t2",
        "sh",
        "-c",
        "exit 7",
    ]);
    assert_eq!(code, 7);

    // Pause and resume.
    c.ctr_ok(&["task", "pause", "t2"]);
    assert_eq!(c.task_status("t2").as_deref(), Some("PAUSED"));
    c.ctr_ok(&["task", "resume", "t2"]);
    assert_eq!(c.task_status("t2").as_deref(), Some("RUNNING"));

    // Metrics: the guest cgroup's memory figures.
    let metrics = c.ctr_ok(&["task", "metrics", "t2"]);
    let usage = metrics
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"memory.usage"))
        .and_then(|f| f.get(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or_else(|| panic!("no memory.usage in `ctr task metrics`:\n{metrics}"));
    assert!(usage > 0, "memory.usage is 0:\n{metrics}");

    // The task's processes, as guest pids.
    let ps = c.ctr_ok(&["task", "ps", "t2"]);
    assert!(
        ps.lines().count() >= 2,
        "ctr task ps t2 lists nothing:\n{ps}"
    );

    // `ctr task exec -t`: a shell on a real terminal (tmux) in the running task.
    let sock = c.sock.to_str().unwrap().to_string();
    let ctr = |args: &[&str]| -> Vec<String> {
        ["ctr", "-a", &sock, "-n", NS]
            .iter()
            .chain(args)
            .map(|s| s.to_string())
            .collect()
    };
    let argv = ctr(&["task", "exec", "-t", "--exec-id", "e3", "t2", "sh"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    interactive_shell(
        c.dir.path(),
        &argv,
        Duration::from_secs(CTR_LIMIT_SECS.into()),
    );

    // Kill: STOPPED; removal leaves no VM and no mount.
    c.ctr_ok(&["task", "kill", "-s", "KILL", "t2"]);
    c.wait_until("t2 STOPPED", || {
        c.task_status("t2").as_deref() == Some("STOPPED")
    });
    c.ctr_ok(&["task", "rm", "t2"]);
    c.ctr_ok(&["c", "rm", "t2"]);
    c.wait_until("no hull-vmm left", || vmm_pids(&c.shim_root).is_empty());
    assert_eq!(mounts_below(&c.shim_root), Vec::<String>::new());
    c.wait_until("t2's shim gone", || shim_pids("t2").is_empty());
    assert!(
        !c.shim_root.join(NS).join("t2").exists(),
        "t2's sandbox directory is left"
    );

    // `ctr run -t`: a shell on a real terminal, in a VM of its own that goes with it.
    let argv = ctr(&["run", "-t", "--rm", "--runtime", RUNTIME, img, "t5", "sh"]);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    interactive_shell(
        c.dir.path(),
        &argv,
        Duration::from_secs(CTR_LIMIT_SECS.into()),
    );
    c.wait_until("t5's VM gone", || vmm_pids(&c.shim_root).is_empty());
    assert!(
        !c.shim_root.join(NS).join("t5").exists(),
        "t5's sandbox is left"
    );

    // Bad input: a rootfs that does not exist, and a spec hull cannot read. containerd shows
    // hull's error, and no VM, shim, mount or sandbox is left.
    let (code, _, err) = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--rootfs",
        "/nonexistent-hull-rootfs",
        "t6",
        "sh",
    ]);
    assert_ne!(code, 0, "a missing rootfs ran");
    assert!(
        err.contains("/nonexistent-hull-rootfs"),
        "the error names the missing rootfs: {err}"
    );
    let rootfs = c.dir.path().join("t7-rootfs");
    hull_tests::vm::busybox_root(&rootfs, &["proc", "dev", "sys", "tmp"]);
    let spec = c.ctr_ok(&["oci", "spec"]);
    let mut spec: serde_json::Value = serde_json::from_str(&spec).unwrap();
    spec["linux"]["namespaces"][0]["type"] = serde_json::json!("bogus-namespace");
    spec["root"]["path"] = serde_json::json!(rootfs);
    spec["process"]["args"] = serde_json::json!(["sh"]);
    let spec_file = c.dir.path().join("t7.json");
    std::fs::write(&spec_file, serde_json::to_vec(&spec).unwrap()).unwrap();
    let (code, _, err) = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--config",
        spec_file.to_str().unwrap(),
        "t7",
    ]);
    assert_ne!(code, 0, "a broken spec ran");
    assert!(
        err.contains("linux.namespaces[0].type") && err.contains("bogus-namespace"),
        "the error names the bad field: {err}"
    );
    for id in ["t6", "t7"] {
        let _ = c.ctr(&["c", "rm", id]);
        c.wait_until(&format!("{id}'s shim gone"), || shim_pids(id).is_empty());
        assert!(
            !c.shim_root.join(NS).join(id).exists(),
            "{id}'s sandbox is left"
        );
    }
    assert!(
        vmm_pids(&c.shim_root).is_empty(),
        "a VM is left after bad input"
    );
    assert_eq!(mounts_below(&c.shim_root), Vec::<String>::new());

    // A shim killed with SIGKILL: containerd runs `containerd-shim-hull-v2 delete`, which
    // stops the VM and removes its mounts and directory.
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        img,
        "t3",
        "sleep",
        "1000",
    ]);
    assert_eq!(vmm_pids(&c.shim_root).len(), 1, "t3 runs in one VM");
    let shims = shim_pids("t3");
    assert_eq!(shims.len(), 1, "one shim serves t3: {shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    c.wait_until("t3's VM stopped by the shim's delete", || {
        vmm_pids(&c.shim_root).is_empty()
    });
    c.wait_until("t3's sandbox removed", || {
        !c.shim_root.join(NS).join("t3").exists()
    });
    assert_eq!(mounts_below(&c.shim_root), Vec::<String>::new());
    c.wait_until("t3's task gone or stopped", || {
        c.task_status("t3").is_none_or(|s| s == "STOPPED")
    });
    let _ = c.ctr(&["task", "rm", "t3"]);
    c.ctr_ok(&["c", "rm", "t3"]);

    // A shim SIGKILLed during create, while its VM boots: `ctr run` fails, containerd's
    // cleanup (`containerd-shim-hull-v2 delete`) finds the VM on record and removes it with its
    // mounts and directory.
    let run = Command::new("timeout")
        .arg(CTR_LIMIT_SECS.to_string())
        .args(["ctr", "-a", c.sock.to_str().unwrap(), "-n", NS])
        .args([
            "run",
            "-d",
            "--runtime",
            RUNTIME,
            img,
            "t4",
            "sleep",
            "1000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    c.wait_until("t4's VM on record", || !vmm_pids(&c.shim_root).is_empty());
    let shims = shim_pids("t4");
    assert_eq!(shims.len(), 1, "one shim serves t4: {shims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let out = run.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "ctr run succeeded although its shim was killed during create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    c.wait_until("t4's VM stopped by containerd's cleanup", || {
        vmm_pids(&c.shim_root).is_empty()
    });
    c.wait_until("t4's sandbox removed", || {
        !c.shim_root.join(NS).join("t4").exists()
    });
    assert_eq!(mounts_below(&c.shim_root), Vec::<String>::new());
    let _ = c.ctr(&["task", "rm", "t4"]);
    let _ = c.ctr(&["c", "rm", "t4"]);
    c.wait_until("t4's shim gone", || shim_pids("t4").is_empty());
    assert!(
        c.ctr_ok(&["c", "ls", "-q"]).trim().is_empty(),
        "containers are left"
    );
}
