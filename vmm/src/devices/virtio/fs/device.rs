//! The virtio-fs device: config space, features, activation and reset.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::worker::{Job, ServerSlot, Worker};
use super::{
    FsConfig, FsError, CONFIG_SPACE_SIZE, FS_DEVICE_ID, HIPRIO_QUEUE, NUM_QUEUES,
    NUM_REQUEST_QUEUES, QUEUE_SIZE, TAG_LEN,
};
use crate::devices::virtio::{
    check_activation, ignore_config_write, read_config_space, ActivateError, GuestMemory,
    VirtioDevice, VirtioInterrupt,
};
use crate::sync::LockExt;

/// What `activate` (vCPU thread) hands to `process` (event loop thread), which makes the FUSE
/// server and hands the queues to the workers.
pub(super) struct Activation {
    pub mem: GuestMemory,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queues: Vec<Queue>,
    pub queue_evts: Vec<EventFd>,
}

/// The device's worker threads (one per queue), shared with the builder, which starts them
/// inside the jail ([`FsWorkers::spawn`]).
#[derive(Clone)]
pub struct FsWorkers {
    tag: String,
    workers: Arc<Mutex<Vec<Worker>>>,
}

impl FsWorkers {
    /// Starts the parked worker threads (once; later calls do nothing).
    pub fn spawn(&self) -> std::io::Result<()> {
        let mut w = self.workers.locked();
        if !w.is_empty() {
            return Ok(());
        }
        for i in 0..NUM_QUEUES {
            let name = if i == HIPRIO_QUEUE {
                format!("fs-{}-hiprio", self.tag)
            } else {
                format!("fs-{}-req{}", self.tag, i - 1)
            };
            w.push(Worker::spawn(name)?);
        }
        Ok(())
    }
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
    workers: FsWorkers,
    /// The queues as the last activation gave them (for a snapshot, see `queue_states`).
    activated_queues: Option<(GuestMemory, Vec<virtio_queue::QueueState>)>,
    /// The shared directory, opened once at start (`O_PATH`): every FUSE server of this
    /// device starts from it (see `ServerSlot`).
    root: Arc<OwnedFd>,
}

impl Fs {
    /// Creates the device for `cfg`. Fails, naming the path, if the shared directory does not
    /// exist or is not a directory. (The passthrough file system keeps one fd per inode the
    /// guest knows: RLIMIT_NOFILE is the jail's `max_open_files`.)
    pub fn new(cfg: FsConfig) -> Result<Fs, FsError> {
        cfg.validate()?;
        let shared_dir = canonical_dir(&cfg.shared_dir)?;
        if shared_dir.to_str().is_none() {
            return Err(FsError::NonUtf8Path(shared_dir));
        }
        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        config_space[..cfg.tag.len()].copy_from_slice(cfg.tag.as_bytes());
        config_space[TAG_LEN..].copy_from_slice(&(NUM_REQUEST_QUEUES as u32).to_le_bytes());
        let activate_evt = EventFd::new(EFD_NONBLOCK).map_err(|e| FsError::Setup("eventfd", e))?;
        let tag = cfg.tag.clone();
        let root = nix::fcntl::open(
            &shared_dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| FsError::SharedDir {
            path: shared_dir.clone(),
            source: e.into(),
        })?;
        // SAFETY: `root` was just returned by open(2) and nothing else owns it.
        let root = Arc::new(unsafe { OwnedFd::from_raw_fd(root) });
        Ok(Fs {
            cfg: FsConfig { shared_dir, ..cfg },
            config_space,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            acked_features: 0,
            activate_evt,
            pending: None,
            workers: FsWorkers {
                tag,
                workers: Arc::new(Mutex::new(Vec::new())),
            },
            activated_queues: None,
            root,
        })
    }

    /// The share's configuration (with `shared_dir` made absolute and free of symlinks).
    pub fn config(&self) -> &FsConfig {
        &self.cfg
    }

    /// Whether the worker threads are serving (the driver activated the device and the event
    /// loop has seen it).
    pub fn is_activated(&self) -> bool {
        self.workers.workers.locked().iter().any(Worker::is_busy)
    }

    /// The worker threads, for the builder to start inside the jail.
    pub fn workers(&self) -> FsWorkers {
        self.workers.clone()
    }

    /// Hands a pending activation's queues to the workers (event loop thread), with a fresh
    /// FUSE server that the first of them makes (a reset forgets every inode and open file).
    pub(super) fn start_workers(&mut self) {
        let Some(act) = self.pending.take() else {
            return;
        };
        self.stop_workers();
        let server = Arc::new(ServerSlot::new(self.cfg.clone(), self.root.clone()));
        // Not started inside the jail (unit tests): started now.
        if let Err(e) = self.workers.spawn() {
            tracing::error!(error = %e, tag = %self.cfg.tag, "virtio-fs: cannot start a worker thread");
            return;
        }
        let mut workers = self.workers.workers.locked();
        for ((queue, queue_evt), w) in act
            .queues
            .into_iter()
            .zip(act.queue_evts)
            .zip(workers.iter_mut())
        {
            let job = Job {
                server: server.clone(),
                mem: act.mem.clone(),
                interrupt: act.interrupt.clone(),
                queue,
                queue_evt,
            };
            if let Err(e) = w.start(job) {
                tracing::error!(error = e, tag = %self.cfg.tag, "virtio-fs: cannot start serving a queue");
            }
        }
    }

    fn stop_workers(&mut self) {
        for w in self.workers.workers.locked().iter_mut() {
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
        (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1u64 << VIRTIO_RING_F_EVENT_IDX)
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
        self.activated_queues = Some((mem.clone(), queues.iter().map(Queue::state).collect()));
        self.pending = Some(Activation {
            mem,
            interrupt,
            queues,
            queue_evts,
        });
        self.activate_evt.write(1).map_err(ActivateError::EventFd)?;
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.pending = None;
        self.activated_queues = None;
        self.stop_workers();
        self.acked_features = 0;
        true
    }

    /// The queues belong to the worker threads once served, so a snapshot is taken only
    /// while the guest has made no request since activation (a template's guest has not
    /// mounted its share yet): each queue's avail and used indexes in guest memory must still
    /// be where activation left them, and the FUSE server holds no state then.
    fn queue_states(&self) -> Result<Option<Vec<virtio_queue::QueueState>>, String> {
        let Some((mem, states)) = &self.activated_queues else {
            return Ok(None);
        };
        for (i, q) in states.iter().enumerate() {
            let idx = |ring: u64| {
                mem.read_obj::<u16>(GuestAddress(ring.wrapping_add(2)))
                    .map(u16::from_le)
                    .map_err(|e| format!("queue {i}: {e}"))
            };
            if idx(q.avail_ring)? != q.next_avail || idx(q.used_ring)? != q.next_used {
                return Err(format!(
                    "virtio-fs `{}`: the guest has used the share (queue {i}); a share is \
                     snapshotted only before its first request",
                    self.cfg.tag
                ));
            }
        }
        Ok(Some(states.clone()))
    }
}
