//! hull-vmm confines itself (jailer-style) once the VM is built and before any guest
//! instruction runs. The guest is hostile, all of it: a bug in a device, in the FUSE server or
//! in the guard must find a process that can do little on the host.
//!
//! Two steps, as Firecracker's jailer and virtiofsd's `--sandbox=namespace` do them:
//!
//! 1. [`enter`], once, while hull-vmm is still single-threaded (checked): resource limits, new
//!    mount/IPC/UTS namespaces with the root pivoted into an empty read-only tmpfs that
//!    holds only the socket directories and a `/proc` (`mount.rs`; the shares are reached
//!    through descriptors opened before),
//!    every capability dropped but the FUSE passthrough's (bounding set included),
//!    `no_new_privs`, and the seccomp filters compiled (`seccomp.rs`). Everything else the VMM
//!    needs (kernel, initramfs, `/dev/kvm`, the tap, guest memory, the listening sockets) was
//!    opened before.
//! 2. [`enter_thread`], by every long-lived thread at its start before it touches guest state:
//!    its own capabilities and its own seccomp allowlist ([`ThreadKind`]). Threads are started
//!    in an order that keeps each filter its own: the virtio-fs workers and the vCPUs are
//!    started by the event-loop thread before it installs its filter (filters are inherited).
//!
//! What is kept, and why (docs/security.md has the whole picture):
//!
//! | capability | who | why |
//! |---|---|---|
//! | CHOWN, FOWNER, FSETID, SETFCAP | virtio-fs workers | files keep the owner, mode and file capabilities the guest sets |
//! | DAC_OVERRIDE | virtio-fs workers | the guest's root reaches every file of its share, whatever its mode |
//! | DAC_READ_SEARCH | virtio-fs workers | a hard link is made from the inode's fd (`linkat(AT_EMPTY_PATH)`); `open_by_handle_at`, what else it allows, is in no allowlist |
//! | SETUID, SETGID | virtio-fs workers | new files are created with the caller's uid/gid (per-thread `setresuid`) |
//! | SYS_ADMIN | virtio-fs workers, only when a share has `xattr` | `trusted.*` and `security.*` attributes (the workers' allowlist has no mount, namespace or BPF call it could serve) |
//!
//! CAP_MKNOD is not kept: the guard refuses device nodes. vCPU threads and the event loop keep
//! no capability.

mod mount;
pub mod seccomp;

use std::cell::Cell;
use std::path::PathBuf;
use std::sync::OnceLock;

use caps::{CapSet, Capability, CapsHashSet};
use hull_vmm_api::config::JailConfig;

/// The capabilities the virtio-fs workers keep (see the module documentation).
pub const FS_CAPABILITIES: [Capability; 8] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
];

/// The kinds of hull-vmm threads, each with its own allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ThreadKind {
    /// The main thread: the event loop (API, vsock, net, signals, virtio-fs activation).
    Vmm = 1,
    /// A vCPU thread (KVM_RUN, MMIO/PIO exits, the serial console).
    Vcpu = 2,
    /// A virtio-fs queue worker (the FUSE passthrough).
    Fs = 3,
}

impl ThreadKind {
    pub fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Fs => "fs",
        }
    }
}

thread_local! {
    /// This thread's kind, for the SIGSYS handler (a const-initialised `Cell`: reading it
    /// allocates nothing and takes no lock).
    static KIND: Cell<u8> = const { Cell::new(0) };
}

/// Why confinement failed: hull-vmm stops rather than run the guest unconfined.
#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("jail: hull-vmm has {0} threads; it must confine itself while it has one")]
    Threads(usize),
    #[error("jail: {what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("jail: capabilities: {0}")]
    Caps(String),
    #[error("jail: seccomp: {0}")]
    Seccomp(String),
}

impl JailError {
    pub(crate) fn sys(what: impl Into<String>, source: impl Into<std::io::Error>) -> JailError {
        JailError::Sys {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// What the process is confined with, for each thread to apply to itself.
struct Policy {
    capabilities: bool,
    filters: Option<seccomp::Filters>,
}

static POLICY: OnceLock<Policy> = OnceLock::new();

/// What the jail keeps. The shared directories are not in it: each virtio-fs device opened
/// its directory before and reaches it through that descriptor, in the host's mount
/// namespace (a copy in the jail's would receive the host's later mounts as slaves, and the
/// host's unmounts of them would fail as busy while the guest holds inodes there).
#[derive(Clone, Debug, Default)]
pub struct JailPaths {
    /// Directories of the VMM's sockets (guest-initiated vsock connections reach
    /// `<uds_path>_<port>` there; the sockets are removed there at the end).
    pub socket_dirs: Vec<PathBuf>,
    /// Whether a share passes extended attributes through (the workers then keep
    /// CAP_SYS_ADMIN, which `trusted.*` and `security.*` need).
    pub xattr: bool,
    /// A template run (`snapshot_to`): the vCPUs and the event loop may read KVM's state (see
    /// `seccomp::SNAPSHOT_VCPU_IOCTLS`).
    pub snapshot: bool,
    /// A NIC is on vhost-net: the vCPUs may make its activation's requests (see
    /// `seccomp::VHOST_NET_IOCTLS`).
    pub vhost: bool,
}

/// Step 1 (see the module documentation). `socket_dirfds` are the directories the event loop
/// may remove its sockets from (the only `unlinkat` it may make). Returns a one-line summary.
pub fn enter(
    cfg: &JailConfig,
    paths: &JailPaths,
    socket_dirfds: &[i32],
) -> Result<String, JailError> {
    // Threads that were joined (the kernel and initramfs loaders) can still be listed for a
    // moment after the join returns: the kernel wakes the joiner before it has released the
    // task. They run nothing any more; wait a bounded time for them to go.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let threads = thread_count()?;
        if threads == 1 {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(JailError::Threads(threads));
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    set_rlimits(cfg.max_open_files)?;
    let mut parts = vec![format!("max_open_files={}", cfg.max_open_files)];
    if cfg.namespaces {
        mount::pivot(paths)?;
        parts.push("namespaces=mnt,ipc,uts".into());
    }
    if cfg.capabilities {
        let keep = fs_capabilities(paths.xattr);
        drop_process_capabilities(&keep)?;
        let mut names: Vec<String> = keep.iter().map(|c| c.to_string()).collect();
        names.sort();
        parts.push(format!("fs-worker-capabilities={}", names.join(",")));
    }
    set_no_new_privs()?;
    let filters = if cfg.seccomp {
        seccomp::install_sigsys_handler()?;
        parts.push(format!("seccomp={}", seccomp::mode_name()));
        Some(seccomp::Filters::new(
            socket_dirfds,
            paths.snapshot,
            paths.vhost,
        )?)
    } else {
        None
    };
    let policy = Policy {
        capabilities: cfg.capabilities,
        filters,
    };
    if POLICY.set(policy).is_err() {
        return Err(JailError::Seccomp("already confined".into()));
    }
    Ok(parts.join(" "))
}

/// This thread's effective and permitted capabilities cleared, if [`enter`] dropped
/// capabilities (a no-op otherwise). [`enter_thread`] does it too, for every kind but the
/// virtio-fs workers; the main thread calls this earlier, once the workers are started and
/// before the devices' `after_jail`.
pub fn drop_thread_capabilities() -> Result<(), JailError> {
    if POLICY.get().is_some_and(|p| p.capabilities) {
        for set in [CapSet::Effective, CapSet::Permitted] {
            caps::clear(None, set).map_err(|e| JailError::Caps(e.to_string()))?;
        }
    }
    Ok(())
}

/// Step 2: this thread takes its own capabilities and allowlist. A no-op when [`enter`] was not
/// called (unit tests) or turned the parts off.
pub fn enter_thread(kind: ThreadKind) -> Result<(), JailError> {
    KIND.with(|k| k.set(kind as u8));
    let Some(policy) = POLICY.get() else {
        return Ok(());
    };
    if kind != ThreadKind::Fs {
        drop_thread_capabilities()?;
    }
    if let Some(f) = &policy.filters {
        f.apply(kind)?;
    }
    Ok(())
}

/// This thread's kind as [`enter_thread`] recorded it (0 when none), for the SIGSYS handler.
pub(crate) fn current_kind() -> u8 {
    KIND.with(|k| k.get())
}

/// What `hull check` and the tests read: whether this process is confined.
pub fn is_confined() -> bool {
    POLICY.get().is_some()
}

/// This process's threads that have not exited (an exiting thread's state is `Z` or `X`).
fn thread_count() -> Result<usize, JailError> {
    let rd =
        std::fs::read_dir("/proc/self/task").map_err(|e| JailError::sys("/proc/self/task", e))?;
    let exited = |stat: &str| {
        // "tid (comm) S ...": the state follows the last ')' (comm may hold one).
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st == "Z" || st == "X")
    };
    Ok(rd
        .flatten()
        .filter(|e| match std::fs::read_to_string(e.path().join("stat")) {
            Ok(stat) => !exited(&stat),
            // Gone between the listing and the read.
            Err(_) => false,
        })
        .count())
}

fn set_rlimits(max_open_files: u64) -> Result<(), JailError> {
    use nix::sys::resource::{setrlimit, Resource};
    // The hard limit may not go above fs.nr_open.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(max_open_files);
    let n = max_open_files.min(nr_open);
    setrlimit(Resource::RLIMIT_NOFILE, n, n)
        .map_err(|e| JailError::sys(format!("RLIMIT_NOFILE {n}"), e))?;
    // Guest memory never lands in a core file.
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| JailError::sys("RLIMIT_CORE 0", e))?;
    Ok(())
}

/// What the virtio-fs workers keep (see the module documentation).
pub fn fs_capabilities(xattr: bool) -> CapsHashSet {
    let mut keep: CapsHashSet = FS_CAPABILITIES.iter().copied().collect();
    if xattr {
        keep.insert(Capability::CAP_SYS_ADMIN);
    }
    keep
}

fn drop_process_capabilities(keep: &CapsHashSet) -> Result<(), JailError> {
    let err = |e: caps::errors::CapsError| JailError::Caps(e.to_string());
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(err)?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(err)?;
    caps::clear(None, CapSet::Inheritable).map_err(err)?;
    caps::set(None, CapSet::Effective, keep).map_err(err)?;
    caps::set(None, CapSet::Permitted, keep).map_err(err)?;
    Ok(())
}

fn set_no_new_privs() -> Result<(), JailError> {
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(JailError::sys(
            "no_new_privs",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
