//! The virtio-fs device: config space, features, activation and reset.

use std::path::PathBuf;
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::{FsServer, Worker};
use super::{
    FsConfig, FsError, CONFIG_SPACE_SIZE, FS_DEVICE_ID, NUM_QUEUES, NUM_REQUEST_QUEUES, QUEUE_SIZE,
    TAG_LEN,
};
use crate::devices::virtio::{
    check_activation, ignore_config_write, read_config_space, ActivateError, GuestMemory,
    VirtioDevice, VirtioInterrupt,
};

/// What `activate` (vCPU thread) hands to `process` (event loop thread), which starts the
/// workers.
pub(super) struct Activation {
    pub mem: GuestMemory,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queues: Vec<Queue>,
    pub queue_evts: Vec<EventFd>,
    pub server: Arc<FsServer>,
}

/// A virtio-fs device serving one shared directory.
pub struct Fs {
    cfg: FsConfig,
    config_space: [u8; CONFIG_SPACE_SIZE],
    queue_sizes: [u16; NUM_QUEUES],
    acked_features: u64,
    /// Signalled by `activate` for `process`.
    pub(super) activate_evt: EventFd,
    pub(super) pending: Option<Activation>,
    pub(super) workers: Vec<Worker>,
}

impl Fs {
    /// Creates the device for `cfg`. Fails, naming the path, if the shared directory does not
    /// exist or is not a directory. Raises RLIMIT_NOFILE (see `raise_nofile_limit`): the
    /// passthrough file system keeps one fd per inode the guest knows.
    pub fn new(cfg: FsConfig) -> Result<Fs, FsError> {
        cfg.validate()?;
        let shared_dir = canonical_dir(&cfg.shared_dir)?;
        if shared_dir.to_str().is_none() {
            return Err(FsError::NonUtf8Path(shared_dir));
        }
        raise_nofile_limit();
        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        config_space[..cfg.tag.len()].copy_from_slice(cfg.tag.as_bytes());
        config_space[TAG_LEN..].copy_from_slice(&(NUM_REQUEST_QUEUES as u32).to_le_bytes());
        let activate_evt = EventFd::new(EFD_NONBLOCK).map_err(|e| FsError::Setup("eventfd", e))?;
        Ok(Fs {
            cfg: FsConfig { shared_dir, ..cfg },
            config_space,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            acked_features: 0,
            activate_evt,
            pending: None,
            workers: Vec::new(),
        })
    }

    /// The share's configuration (with `shared_dir` made absolute and free of symlinks).
    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// Whether the worker threads are running (the driver activated the device and the event
    /// loop has seen it).
    pub fn is_activated(&self) -> bool {
        !self.workers.is_empty()
    }

    /// Starts the worker threads of a pending activation (event loop thread).
    pub(super) fn start_workers(&mut self) {
        let Some(act) = self.pending.take() else {
            return;
        };
        self.stop_workers();
        let names = (0..act.queues.len()).map(|i| {
            if i == 0 {
                format!("fs-{}-hiprio", self.cfg.tag)
            } else {
                format!("fs-{}-req{}", self.cfg.tag, i - 1)
            }
        });
        for ((queue, evt), name) in act.queues.into_iter().zip(act.queue_evts).zip(names) {
            match Worker::spawn(
                name,
                act.server.clone(),
                act.mem.clone(),
                act.interrupt.clone(),
                queue,
                evt,
            ) {
                Ok(w) => self.workers.push(w),
                Err(e) => {
                    tracing::error!(error = %e, tag = %self.cfg.tag, "virtio-fs: cannot start a worker thread");
                }
            }
        }
    }

    fn stop_workers(&mut self) {
        for w in self.workers.drain(..) {
            w.stop();
        }
    }
}

/// The shared directory as an absolute path without symlinks, checked to be a directory.
fn canonical_dir(path: &std::path::Path) -> Result<PathBuf, FsError> {
    let dir = std::fs::canonicalize(path).map_err(|source| FsError::SharedDir {
        path: path.to_path_buf(),
        source,
    })?;
    let meta = std::fs::metadata(&dir).map_err(|source| FsError::SharedDir {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(FsError::NotADirectory(path.to_path_buf()));
    }
    Ok(dir)
}

/// Raises the limit on open files as far as allowed (best effort: when it is reached, the guest
/// gets EMFILE replies and the VMM keeps running). The passthrough file system keeps one fd per
/// inode the guest knows, and a guest keeps every inode it has looked up until memory pressure
/// makes it forget them: like virtiofsd, both limits go to `fs.nr_open` when the VMM may raise
/// its hard limit (CAP_SYS_RESOURCE), else the soft limit goes to the hard one.
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "virtio-fs: getrlimit(RLIMIT_NOFILE)");
        return;
    }
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<libc::rlim_t>().ok())
        .unwrap_or(lim.rlim_max);
    let set = |n: libc::rlim_t| {
        let new = libc::rlimit {
            rlim_cur: n,
            rlim_max: n,
        };
        // SAFETY: setrlimit only reads the struct we pass, which lives for the call.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) == 0 }
    };
    if nr_open > lim.rlim_max && set(nr_open) {
        return;
    }
    if lim.rlim_cur < lim.rlim_max && !set(lim.rlim_max) {
        tracing::warn!(error = %std::io::Error::last_os_error(), "virtio-fs: setrlimit(RLIMIT_NOFILE)");
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        self.stop_workers();
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        FS_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        ignore_config_write("virtio-fs", offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        check_activation(NUM_QUEUES, &queues, &queue_evts, self.acked_features)?;
        // A fresh server per activation: a reset forgets every inode and open file.
        let server = FsServer::new(&self.cfg)
            .map_err(|e| ActivateError::Device(format!("virtio-fs `{}`: {e}", self.cfg.tag)))?;
        self.pending = Some(Activation {
            mem,
            interrupt,
            queues,
            queue_evts,
            server: Arc::new(server),
        });
        self.activate_evt.write(1).map_err(ActivateError::EventFd)?;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.pending = None;
        self.stop_workers();
        self.acked_features = 0;
        true
    }
}
