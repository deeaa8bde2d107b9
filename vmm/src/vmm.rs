//! Running one VM: [`run`] builds it (`builder.rs`), starts its vCPU threads, runs the event
//! loop until the VM stops, and cleans up. The pieces it is made of live by role:
//! `builder.rs` (building the VM), `device_manager/` (where devices sit and how they are wired)
//! and `rpc_interface.rs` (what the API socket and signals drive).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use event_manager::EventManager;
use vmm_sys_util::signal::Killable;

use crate::api;
use crate::arch::x86_64::{boot, mptable};
use crate::config::{ConfigError, VmConfig};
use crate::device_manager::mmio::{DeviceManagerError, Subscriber};
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::fs::FsError;
use crate::devices::virtio::vsock::VsockError;
use crate::devices::virtio::GuestMemory;
use crate::exit::{ExitReason, ExitState};
use crate::jail::{self, ThreadKind};
use crate::sync::LockExt;
use crate::vstate::vcpu::{self, RunState, Vcpu, VcpuContext, VcpuControl};
use crate::vstate::vm::{self, Vm};

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error("virtio device: {0}")]
    Devices(#[from] DeviceManagerError),
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    #[error("cannot open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("device bus: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
    #[error("signals: {0}")]
    Signals(#[source] nix::Error),
    #[error("event loop: {0}")]
    EventLoop(#[source] event_manager::Error),
    #[error("vsock: {0}")]
    Vsock(#[from] VsockError),
    #[error("virtio-fs: {0}")]
    Fs(#[from] FsError),
    #[error("virtio-net: {0}")]
    Net(#[from] crate::devices::virtio::net::NetError),
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    #[error("{what}: {reason}")]
    Device { what: String, reason: String },
}

/// Removes the sockets the VMM created, however `run` ends. Each is removed through an fd of
/// its directory (`unlinkat`), opened when the socket was bound: the jailed event loop may
/// unlink in those directories only, and a path swapped meanwhile is never followed.
#[derive(Default)]
pub(crate) struct SocketCleanup(pub(crate) Vec<(OwnedFd, CString, PathBuf)>);

impl SocketCleanup {
    /// Records `path` (a socket the VMM just bound) for removal.
    pub(crate) fn push(&mut self, path: &Path) -> Result<(), VmmError> {
        let err = |source| VmmError::Open {
            what: "socket directory",
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let name = path
            .file_name()
            .and_then(|n| CString::new(n.as_bytes()).ok())
            .ok_or_else(|| err(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
        let fd = nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| err(e.into()))?;
        // SAFETY: `fd` was just returned by open(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        self.0.push((fd, name, path.to_path_buf()));
        Ok(())
    }

    /// The directories of the sockets (what the jail keeps, and their fds).
    pub(crate) fn dirs(&self) -> (Vec<PathBuf>, Vec<i32>) {
        let paths = self
            .0
            .iter()
            .map(|(_, _, p)| {
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.to_path_buf()))
                    .unwrap_or_else(|| std::env::current_dir().unwrap_or_default())
            })
            .collect();
        let fds = self.0.iter().map(|(fd, _, _)| fd.as_raw_fd()).collect();
        (paths, fds)
    }
}

impl Drop for SocketCleanup {
    fn drop(&mut self) {
        for (dir, name, path) in &self.0 {
            // SAFETY: unlinkat(2) with a directory fd we own and a NUL-terminated name, both
            // alive for the call.
            if unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) } != 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove {}: {e}", path.display());
                }
            }
        }
    }
}

/// The vCPU threads, kept behind a mutex so that kicking and joining never race.
#[derive(Default)]
pub(crate) struct VcpuThreads(pub(crate) Mutex<Vec<JoinHandle<()>>>);

impl VcpuThreads {
    pub(crate) fn kick_all(&self) {
        let g = self.0.locked();
        for h in g.iter() {
            if let Err(e) = h.kill(vcpu::kick_signal()) {
                tracing::warn!("cannot kick a vCPU thread: {e}");
            }
        }
    }

    pub(crate) fn join_all(&self) {
        let handles: Vec<_> = std::mem::take(&mut *self.0.locked());
        for h in handles {
            if h.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
    }
}

/// Validates `config`, boots the VM and runs it until it stops. Returns why it stopped; every
/// socket the VMM created is gone when this returns.
pub fn run(config: &VmConfig) -> Result<ExitReason, VmmError> {
    Ok(Vmm::build(config)?.run())
}

/// A VM built and ready to run: guest memory loaded, devices wired, vCPUs configured, sockets
/// bound; no guest instruction has run yet. Dropping it instead of running it releases
/// everything and removes the sockets.
pub struct Vmm {
    pub(crate) start: Instant,
    pub(crate) exit: Arc<ExitState>,
    pub(crate) control: Arc<VcpuControl>,
    pub(crate) threads: Arc<VcpuThreads>,
    pub(crate) ctx: VcpuContext,
    pub(crate) vcpus: Vec<Vcpu>,
    pub(crate) em: EventManager<Subscriber>,
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    // Dropped in this order: the VM, then its memory, then the sockets (after the event loop,
    // which owns the listeners, is gone).
    pub(crate) _vm: Arc<Vm>,
    pub(crate) _mem: GuestMemory,
    pub(crate) _sockets: SocketCleanup,
}

impl Vmm {
    /// Validates `config` and builds the VM (see [`Vmm`]).
    pub fn build(config: &VmConfig) -> Result<Vmm, VmmError> {
        crate::builder::build(config)
    }

    /// Runs the guest until the VM stops; returns why. The sockets are removed when this
    /// returns.
    pub fn run(self) -> ExitReason {
        let Vmm {
            start,
            exit,
            control,
            threads,
            ctx,
            vcpus,
            mut em,
            serial,
            _vm,
            _mem,
            _sockets,
        } = self;
        for v in vcpus {
            let ctx = ctx.clone();
            let h = std::thread::Builder::new()
                .name(format!("vcpu{}", v.id()))
                .spawn(move || {
                    // Confined before the first KVM_RUN.
                    if let Err(e) = jail::enter_thread(ThreadKind::Vcpu) {
                        ctx.exit.request(ExitReason::Internal(e.to_string()));
                        return;
                    }
                    v.run(ctx)
                });
            match h {
                Ok(h) => threads.0.locked().push(h),
                Err(e) => {
                    exit.request(ExitReason::Internal(format!(
                        "cannot start a vCPU thread: {e}"
                    )));
                    break;
                }
            }
        }
        tracing::debug!("VM started {:?} after hull-vmm began", start.elapsed());
        // The event loop confines itself once every thread it starts is started (filters are
        // inherited), before it reads any guest input.
        if let Err(e) = jail::enter_thread(ThreadKind::Vmm) {
            exit.request(ExitReason::Internal(e.to_string()));
        }

        while !exit.is_requested() {
            if let Err(e) = em.run() {
                exit.request(ExitReason::Internal(format!("event loop: {e:?}")));
            }
        }

        control.set_state(RunState::Stopping);
        threads.kick_all();
        threads.join_all();
        serial.locked().flush();
        // The socket files go first (the listeners still open are harmless): the devices'
        // own clean-up then finds nothing left to remove.
        drop(_sockets);
        drop(em);
        drop(ctx);
        drop(_vm);
        drop(_mem);
        exit.reason()
            .unwrap_or(ExitReason::Internal("stopped without a reason".into()))
    }
}
