//! Create/delete cycles through the CLI leave nothing growing on the host: open files, threads,
//! processes, mounts, cgroups, files under the runtime root. `make test` runs
//! `HULL_SOAK_CYCLES` cycles (default 10, under 2 minutes in the emulated host); `make soak`
//! runs 200.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use hull_tests::vm::busybox_root;
use hull_tests::{bin, require_kvm, TempDir};

/// What could grow on the host. Processes, threads and open files are counted for hull's own
/// processes (any whose program name starts with `hull` or is hull's shim) and this test
/// process: the emulated host's own processes come and go.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Census {
    /// Open fds of hull's processes and of this test.
    files: usize,
    /// Threads of hull's processes.
    threads: usize,
    /// hull's processes (not zombies).
    processes: usize,
    /// Mount points in this mount namespace.
    mounts: usize,
    /// Cgroups below `/sys/fs/cgroup/hull`.
    cgroups: usize,
    /// Entries below the runtime root, and below the short socket root.
    state: usize,
}

fn count_tree(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.flatten()
        .map(|e| {
            1 + if e.file_type().is_ok_and(|t| t.is_dir()) {
                count_tree(&e.path())
            } else {
                0
            }
        })
        .sum()
}

fn count_dir(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0)
}

fn census(root: &Path) -> Census {
    let mut files = count_dir(Path::new("/proc/self/fd"));
    let mut threads = 0;
    let mut processes = 0;
    for p in hull_tests::procs::live() {
        let name = p
            .args
            .first()
            .and_then(|a| Path::new(a).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !(name.starts_with("hull") || name == "containerd-shim-hull-v2") {
            continue;
        }
        processes += 1;
        threads += count_dir(Path::new(&format!("/proc/{}/task", p.pid)));
        files += count_dir(Path::new(&format!("/proc/{}/fd", p.pid)));
    }
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    let cgroups = {
        let dir = Path::new("/sys/fs/cgroup/hull");
        std::fs::read_dir(dir)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0)
    };
    Census {
        files,
        threads,
        processes,
        mounts,
        cgroups,
        state: count_tree(root) + count_tree(Path::new("/run/hull/s")),
    }
}

fn hull(root: &Path, config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(bin("hull"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env("HULL_CONFIG", config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn cycle(root: &Path, config: &Path, bundle: &Path, id: &str) {
    // `create` leaves its pid-file process running with our stdout and stderr, as runc's
    // container does: stderr goes to a file here, not to a pipe that would stay open.
    let err = root.with_file_name(format!("{id}.err"));
    let status = Command::new(bin("hull"))
        .arg("--root")
        .arg(root)
        .args(["create", "--bundle", bundle.to_str().unwrap(), id])
        .env("HULL_CONFIG", config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "create {id}: {}",
        std::fs::read_to_string(&err).unwrap_or_default()
    );
    let out = hull(root, config, &["delete", "--force", id]);
    assert!(
        out.status.success(),
        "delete {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(&err);
}

/// Reaps what came to us (the pid-file processes end once their VM is gone, a moment after
/// `delete` returns; they are adopted by this subreaper).
fn reap() {
    // SAFETY: waitpid(-1, WNOHANG) only collects exited children.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
}

/// Waits a little (reaping) for what ends or is freed lazily: exiting pid-file processes,
/// file handles.
fn settled(root: &Path, baseline: &Census) -> Census {
    reap();
    let mut c = census(root);
    for _ in 0..100 {
        if c.files <= baseline.files
            && c.threads <= baseline.threads
            && c.processes <= baseline.processes
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        reap();
        c = census(root);
    }
    c
}

#[test]
fn create_delete_cycles_leave_nothing_growing() {
    require_kvm();
    // Orphaned pid-file processes come to us, as they come to containerd's shim: reaped below.
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer and changes only a flag.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let cycles: usize = std::env::var("HULL_SOAK_CYCLES")
        .ok()
        .map(|v| v.parse().expect("HULL_SOAK_CYCLES is a number"))
        .unwrap_or(10);
    let dir = TempDir::new("hull-soak");
    let root: PathBuf = dir.path().join("root");
    let config = dir.path().join("config.toml");
    hull_tests::vm::write_runtime_config(&config);
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let out = Command::new(bin("hull"))
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success());
    busybox_root(&bundle.join("rootfs"), &["proc", "sys", "dev", "tmp"]);
    let spec_path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(["sleep", "1000"]);
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    // One cycle first: what the first VM loads once (page cache, modules) is not growth.
    cycle(&root, &config, &bundle, "warm");
    std::thread::sleep(std::time::Duration::from_secs(2));
    reap();
    let baseline = census(&root);
    let mut half = None;
    for i in 0..cycles {
        cycle(&root, &config, &bundle, &format!("soak{i}"));
        reap();
        if i + 1 == cycles / 2 {
            half = Some(settled(&root, &baseline));
        }
    }
    let end = settled(&root, &baseline);
    eprintln!("{cycles} cycles: before {baseline:?}\nhalf-way {half:?}\nafter {end:?}");
    assert_eq!(end.mounts, baseline.mounts, "mounts grew");
    assert_eq!(end.cgroups, baseline.cgroups, "cgroups grew");
    assert_eq!(
        end.state, baseline.state,
        "files under the runtime root grew"
    );
    assert_eq!(end.processes, baseline.processes, "processes grew");
    assert!(end.threads <= baseline.threads, "threads grew");
    assert!(end.files <= baseline.files, "open files grew");
}
