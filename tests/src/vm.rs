//! Booting hull-vmm in VM tests: every test launches it through hull-runtime's
//! [`VmmProcess`] (the same launcher the runtime uses), and finds here what several tests need:
//! the built agent initramfs, a busybox root file system, a nonce, waiting for the console or
//! for the exit with the console and log in the failure message.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub use hull_runtime::vmm::api::config::{
    BootProtocolConfig, FsConfig, MemoryBacking, SerialConfig, VsockConfig,
};
pub use hull_runtime::vmm::api::exit::VmmExit;
pub use hull_runtime::vmm::api::{ApiRequest, ApiResponse, CachePolicy, RunState, VmConfig};
pub use hull_runtime::vmm::{VmmExited, VmmProcess};

use crate::{bin, build_dir, kernel};

/// A configuration with the built guest kernel, `initrd` and 256 MiB; the console goes to
/// hull-vmm's stdout, which the launcher keeps in `console.log` ([`VmmProcess::console`]).
pub fn config(initrd: &Path) -> VmConfig {
    let mut c = VmConfig::new(kernel());
    c.initrd = Some(initrd.to_path_buf());
    c.memory_mib = 256;
    c
}

/// Gives `config` a vsock device (guest CID 3) whose host socket is `dir/v.sock`; returns it.
pub fn add_vsock(config: &mut VmConfig, dir: &Path) -> PathBuf {
    let uds = dir.join("v.sock");
    config.vsock = Some(VsockConfig {
        uds_path: uds.clone(),
        guest_cid: 3,
    });
    uds
}

/// Starts the built hull-vmm with `config` in `dir` (its config, console and log files go
/// there). The VM is killed when the returned handle is dropped.
pub fn launch(config: &VmConfig, dir: &Path) -> VmmProcess {
    crate::require_kvm();
    VmmProcess::launch(&bin("hull-vmm"), config, dir)
        .unwrap_or_else(|e| panic!("cannot launch hull-vmm: {e}"))
}

/// Waits at most `limit` for hull-vmm to exit; panics with its log and the console otherwise.
pub fn wait_exit(vm: &mut VmmProcess, limit: Duration) -> VmmExited {
    match vm.wait_timeout(limit) {
        Ok(Some(e)) => e,
        Ok(None) => panic!(
            "hull-vmm still running after {limit:?}\n--- log:\n{}\n--- console:\n{}",
            vm.log(),
            vm.console()
        ),
        Err(e) => panic!("waiting for hull-vmm: {e}"),
    }
}

/// Waits at most `limit` for hull-vmm to exit with status `code` and a log that says `reason`;
/// returns the console.
pub fn expect_exit(vm: &mut VmmProcess, limit: Duration, code: i32, reason: &str) -> String {
    let e = wait_exit(vm, limit);
    let (log, console) = (vm.log(), vm.console());
    assert_eq!(
        e.status.code(),
        Some(code),
        "hull-vmm exit status ({}); log:\n{log}\nconsole:\n{console}",
        e.exit
    );
    assert!(
        log.contains(reason),
        "the log should say {reason:?}:\n{log}"
    );
    console
}

/// Waits until `text()` contains `needle`; panics with what it has after `limit`.
pub fn wait_for(what: &str, text: impl Fn() -> String, needle: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let t = text();
        if t.contains(needle) {
            return t;
        }
        assert!(
            start.elapsed() < limit,
            "{needle:?} did not appear in {what} within {limit:?}; it has:\n{t}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The agent initramfs (`make initrd`).
pub fn agent_initrd() -> PathBuf {
    crate::built(build_dir().join("hull-initrd.img"), "initrd")
}

/// The agent initramfs followed by a busybox archive (the kernel unpacks concatenated archives
/// in order; the agent's own /init stays), written to `dir/initrd.img`: an agent that can run
/// processes.
pub fn agent_initrd_with_busybox(dir: &Path) -> PathBuf {
    let busybox = dir.join("busybox.cpio");
    crate::Initramfs::new().build(&busybox);
    let mut both = std::fs::read(agent_initrd()).unwrap();
    // Each archive starts 4-byte aligned (cpio output is block-padded already).
    while !both.len().is_multiple_of(4) {
        both.push(0);
    }
    both.extend_from_slice(&std::fs::read(&busybox).unwrap());
    let out = dir.join("initrd.img");
    std::fs::write(&out, both).unwrap();
    out
}

/// A busybox root file system: /bin/busybox, its applets as symlinks, and empty `dirs`
/// (e.g. tmp, dev, proc, etc).
pub fn busybox_root(root: &Path, dirs: &[&str]) {
    for d in dirs.iter().chain(&["bin"]) {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))
        .expect("/bin/busybox (package busybox-static) is needed for a busybox root");
    for a in crate::busybox_applets() {
        symlink("busybox", root.join("bin").join(a)).unwrap();
    }
}

/// A string no earlier run printed.
pub fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{:x}{:x}", t.as_nanos(), std::process::id())
}

/// `sha256sum` of a host file.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "sha256sum {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The start path VM tests use: `HULL_TEST_START=boot` runs them with every sandbox booted
/// (`start = "boot"`); otherwise the default, restored from a template.
pub fn test_start() -> hull_runtime::config::StartPath {
    match std::env::var("HULL_TEST_START").as_deref() {
        Ok("boot") => hull_runtime::config::StartPath::Boot,
        Ok("snapshot") | Err(_) => hull_runtime::config::StartPath::Snapshot,
        Ok(other) => panic!("HULL_TEST_START must be boot or snapshot, not {other:?}"),
    }
}

/// hull's runtime configuration for VM tests: the built guest kernel, agent initramfs and
/// hull-vmm, the start path of [`test_start`], every other key at its default.
pub fn runtime_config() -> hull_runtime::config::RuntimeConfig {
    hull_runtime::config::RuntimeConfig {
        kernel: kernel(),
        initrd: agent_initrd(),
        vmm: bin("hull-vmm"),
        start: test_start(),
        ..Default::default()
    }
}

/// Writes [`runtime_config`]'s keys as a config.toml at `path`, for `HULL_CONFIG` (the `hull`
/// CLI, and the shims containerd starts, read it).
pub fn write_runtime_config(path: &Path) {
    std::fs::write(
        path,
        format!(
            "kernel = {:?}\ninitrd = {:?}\nvmm = {:?}\nstart = \"{}\"\n",
            kernel(),
            agent_initrd(),
            bin("hull-vmm"),
            match test_start() {
                hull_runtime::config::StartPath::Boot => "boot",
                hull_runtime::config::StartPath::Snapshot => "snapshot",
            }
        ),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Mount points at or below `dir` (this process's mount namespace).
pub fn mounts_below(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}
