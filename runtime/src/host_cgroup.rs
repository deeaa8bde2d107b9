//! The host side of a container's resources: the VM is sized from the container's limits, and
//! the processes that stand for the container on the host (hull-vmm, the CLI's pid-file
//! process) go into the cgroup the caller asked for (`linux.cgroupsPath`), so that what the
//! host accounts to the container (docker stats, the kubelet) is what its VM really uses. The
//! container's own limits are enforced inside the guest, on its guest cgroup.
//!
//! Only a cgroup v2 host (`/sys/fs/cgroup/cgroup.controllers`) is handled; on a v1 or hybrid
//! host the processes stay where they were started, with a warning.

use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Spec;

/// A VM's size from a container's limits; `None`: the configuration's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmSize {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
}

/// Guest memory added to a container's memory limit: the guest kernel, hull-agent and the page
/// cache a small guest needs to run its workload at the limit (documented in runtime/README.md).
pub const VM_MEMORY_OVERHEAD_MIB: u64 = 128;

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The VM's size for a container: memory = its memory limit + [`VM_MEMORY_OVERHEAD_MIB`],
/// vCPUs = its CPU quota / period rounded up (else the number of CPUs in its cpuset), capped at
/// the host's CPUs. Unset limits leave the configuration's defaults.
pub fn vm_size(spec: &Spec) -> VmSize {
    let mut opts = VmSize::default();
    let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
        return opts;
    };
    if let Some(limit) = res.memory().as_ref().and_then(|m| m.limit()) {
        if limit > 0 {
            let mib = (limit as u64).div_ceil(1 << 20);
            opts.memory_mib = Some(mib + VM_MEMORY_OVERHEAD_MIB);
        }
    }
    let host_cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    let cpu = res.cpu().as_ref();
    let from_quota = cpu.and_then(|c| match (c.quota(), c.period()) {
        (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p) as u32),
        (Some(q), None) if q > 0 => Some((q as u64).div_ceil(100_000) as u32),
        _ => None,
    });
    let from_cpuset = cpu.and_then(|c| c.cpus().as_deref()).and_then(cpuset_count);
    if let Some(n) = from_quota.or(from_cpuset) {
        opts.vcpus = Some(n.clamp(1, host_cpus));
    }
    opts
}

/// How many CPUs a cpuset list (`0-3,5`) names.
fn cpuset_count(list: &str) -> Option<u32> {
    let mut n = 0u32;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                n = n.checked_add(b.checked_sub(a)?.checked_add(1)?)?;
            }
            None => {
                part.parse::<u32>().ok()?;
                n = n.checked_add(1)?;
            }
        }
    }
    (n > 0).then_some(n)
}

/// The host directory of an OCI `cgroupsPath`: `/a/b` (cgroupfs) or systemd's
/// `slice:prefix:name` (`system.slice:docker:ID` → `system.slice/docker-ID.scope`). `None` for
/// a path with `..` or nothing usable.
pub fn host_dir(cgroups_path: &Path) -> Option<PathBuf> {
    let s = cgroups_path.to_str()?;
    let rel = match s.split(':').collect::<Vec<_>>()[..] {
        [slice, prefix, name] if !s.starts_with('/') => {
            let slice = if slice.is_empty() {
                "system.slice"
            } else {
                slice
            };
            format!("{slice}/{prefix}-{name}.scope")
        }
        _ => s.trim_start_matches('/').to_string(),
    };
    let rel = Path::new(&rel);
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(Path::new(CGROUP_ROOT).join(rel))
}

fn v2_host() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// Why hull-vmm cannot be given its cgroup: the sandbox is not started.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cgroupsPath {0}: not a usable cgroup path (no `..`, not empty)")]
    Path(PathBuf),
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where a sandbox's hull-vmm goes when its spec names no cgroup: `hull/<name>` under the
/// cgroup v2 root (every VM is always in a cgroup of its own, accounted and killable as one).
pub const DEFAULT_PARENT: &str = "hull";

/// The cgroup v2 directory of `cgroups_path`, created if missing: where hull-vmm is started
/// (`SandboxOptions::host_cgroup`) so that every page of the VM is charged there from the
/// first one (memory charged before a move stays where it was). `Ok(None)`, with a warning, on
/// a cgroup v1 or hybrid host; an unusable path or a directory that cannot be made is an error.
pub fn prepare(cgroups_path: &Path) -> Result<Option<PathBuf>, CgroupError> {
    if !v2_host() {
        tracing::warn!(
            "cgroup v1 host: hull-vmm stays in its parent's cgroups instead of {}",
            cgroups_path.display()
        );
        return Ok(None);
    }
    let dir = host_dir(cgroups_path).ok_or_else(|| CgroupError::Path(cgroups_path.into()))?;
    create(&dir)?;
    Ok(Some(dir))
}

/// [`prepare`] for a sandbox whose spec names no cgroup: `hull/<name>`.
pub fn prepare_default(name: &str) -> Result<Option<PathBuf>, CgroupError> {
    if !v2_host() {
        return Ok(None);
    }
    let rel = Path::new(DEFAULT_PARENT).join(name);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(CgroupError::Path(rel));
    }
    let dir = Path::new(CGROUP_ROOT).join(rel);
    create(&dir)?;
    Ok(Some(dir))
}

fn create(dir: &Path) -> Result<(), CgroupError> {
    std::fs::create_dir_all(dir).map_err(|source| CgroupError::Create {
        path: dir.to_path_buf(),
        source,
    })
}

/// Moves `pid` into the cgroup directory `dir` that [`prepare`] made. Best effort, with a
/// warning.
pub fn join_dir(dir: &Path, pid: u32) {
    if let Err(e) = std::fs::write(dir.join("cgroup.procs"), pid.to_string()) {
        tracing::warn!("cannot move pid {pid} into cgroup {}: {e}", dir.display());
    }
}

/// Whether `dir` is a cgroup directory this module could have made: below the cgroup v2 root,
/// with no `..` (a record read back from a sandbox's directory is checked so).
pub(crate) fn is_own_dir(dir: &Path) -> bool {
    dir.strip_prefix(CGROUP_ROOT).is_ok_and(|rel| {
        !rel.as_os_str().is_empty() && rel.components().all(|c| matches!(c, Component::Normal(_)))
    })
}

/// Kills every process in the cgroup directory `dir` (`cgroup.kill`, or SIGKILL to each pid
/// of `cgroup.procs` on kernels before 5.14) and waits, at most `limit`, until it is empty,
/// reaping those that were this process's children. What a sandbox's cleanup does when a VM
/// may run that no record names.
pub(crate) fn kill_all(dir: &Path, limit: std::time::Duration) {
    let procs = || -> Vec<i32> {
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    };
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        for pid in procs() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let deadline = std::time::Instant::now() + limit;
    loop {
        let left = procs();
        for &pid in &left {
            let _ = nix::sys::wait::waitpid(
                nix::unistd::Pid::from_raw(pid),
                Some(nix::sys::wait::WaitPidFlag::WNOHANG),
            );
        }
        if left.is_empty() {
            return;
        }
        if std::time::Instant::now() > deadline {
            tracing::warn!(
                "cgroup {}: {left:?} still in it after SIGKILL",
                dir.display()
            );
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Removes the cgroup directory `dir` that [`prepare`] made, once it is empty (after the VM
/// and every process that stood for the container are gone). Only a sandbox's cleanup calls
/// this (the sandbox module): the sandbox owns the cgroup its VM was started in.
pub(crate) fn remove_dir(dir: &Path) {
    // A process that stood for the container may take a moment to exit after its VM (the
    // CLI's pid-file process ends when it sees the VM gone): a few tries, then a warning.
    for attempt in 0.. {
        match std::fs::remove_dir(dir) {
            Ok(()) => return,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && attempt < 20 => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!("cannot remove cgroup {}: {e}", dir.display());
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(resources: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {"resources": resources}
        }))
        .unwrap()
    }

    #[test]
    fn only_directories_below_the_cgroup_root_are_ours() {
        assert!(is_own_dir(Path::new("/sys/fs/cgroup/hull/a-1234")));
        assert!(is_own_dir(Path::new(
            "/sys/fs/cgroup/system.slice/docker-x.scope"
        )));
        for bad in [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/../../etc",
            "/etc/passwd",
            "hull/x",
            "",
        ] {
            assert!(!is_own_dir(Path::new(bad)), "{bad}");
        }
    }

    #[test]
    fn vm_size_follows_the_limits() {
        let s = vm_size(&spec(serde_json::json!({"memory": {"limit": 67108864}})));
        assert_eq!(s.memory_mib, Some(64 + VM_MEMORY_OVERHEAD_MIB));
        assert_eq!(s.vcpus, None);
        let s = vm_size(&spec(serde_json::json!({"memory": {"limit": 1}})));
        assert_eq!(s.memory_mib, Some(1 + VM_MEMORY_OVERHEAD_MIB), "rounded up");
        let s = vm_size(&spec(
            serde_json::json!({"cpu": {"quota": 150000, "period": 100000}}),
        ));
        let host = std::thread::available_parallelism().unwrap().get() as u32;
        assert_eq!(s.vcpus, Some(2.min(host)));
        let s = vm_size(&spec(serde_json::json!({"cpu": {"cpus": "0"}})));
        assert_eq!(s.vcpus, Some(1));
        let s = vm_size(&spec(
            serde_json::json!({"cpu": {"quota": -1, "period": 100000}}),
        ));
        assert_eq!(s.vcpus, None, "-1 is unlimited");
        let s = vm_size(&spec(serde_json::json!({})));
        assert_eq!((s.vcpus, s.memory_mib), (None, None));
    }

    #[test]
    fn cpusets_and_cgroup_paths() {
        assert_eq!(cpuset_count("0-3,5"), Some(5));
        assert_eq!(cpuset_count("7"), Some(1));
        assert_eq!(cpuset_count("3-1"), None);
        assert_eq!(cpuset_count("x"), None);
        assert_eq!(
            host_dir(Path::new("/docker/abc")),
            Some(PathBuf::from("/sys/fs/cgroup/docker/abc"))
        );
        assert_eq!(
            host_dir(Path::new("system.slice:docker:abc")),
            Some(PathBuf::from(
                "/sys/fs/cgroup/system.slice/docker-abc.scope"
            ))
        );
        assert_eq!(host_dir(Path::new("/a/../b")), None);
        assert_eq!(host_dir(Path::new("/")), None);
    }
}
