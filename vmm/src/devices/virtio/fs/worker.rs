//! The request path: descriptor chains in, FUSE replies out, on worker threads.
//!
//! Each queue gets its own thread (started once, parked between activations) that waits on the
//! queue's eventfd (and a kill eventfd) with its own epoll, so the VMM's event loop never runs a file system call: a slow or stuck host
//! file system can stall the share, never the console or vsock. The high-priority queue
//! (FORGET, BATCH_FORGET) has its own thread too, so forgets are not stuck behind requests.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{self, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::ByteValued;
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::guard::GuardedFs;
use super::{CachePolicy, FsConfig, FsError};
use crate::devices::virtio::{notify_used, rearm_or_yield, GuestMemory, VirtioInterrupt};

/// The FUSE server of one share: fuse-backend-rs's `Server` over the guarded passthrough file
/// system. It is the whole request path without the threads, which is what the unit tests and
/// the fuzz target drive.
pub struct FsServer {
    server: Server<GuardedFs>,
}

impl FsServer {
    /// A fresh server (no inodes, no open files) for `cfg`, whose `shared_dir` must be an
    /// absolute path to a directory (as [`super::Fs::new`] makes it).
    pub fn new(cfg: &FsConfig) -> Result<FsServer, FsError> {
        let root_dir = cfg
            .shared_dir
            .to_str()
            .ok_or_else(|| FsError::NonUtf8Path(cfg.shared_dir.clone()))?;
        FsServer::with_root(cfg, root_dir)
    }

    /// [`FsServer::new`] with the root opened through `root_dir` instead of `cfg.shared_dir`
    /// (the device passes `/proc/self/fd/<fd>/.`, a descriptor it opened at start: see
    /// [`super::Fs`]).
    pub fn with_root(cfg: &FsConfig, root_dir: &str) -> Result<FsServer, FsError> {
        let root_dir = root_dir.to_string();
        // Timeouts as virtiofsd picks them: nothing cached under `never`, a second under
        // `auto`, a day under `always` (only the guest changes the directory then).
        let timeout = match cfg.cache {
            CachePolicy::Never => Duration::ZERO,
            CachePolicy::Metadata => Duration::from_secs(5),
            CachePolicy::Auto => Duration::from_secs(1),
            CachePolicy::Always => Duration::from_secs(86400),
        };
        let pcfg = passthrough::Config {
            root_dir,
            cache_policy: super::config::backend_cache_policy(cfg.cache),
            writeback: cfg.writeback && !cfg.read_only,
            xattr: cfg.xattr,
            attr_timeout: timeout,
            entry_timeout: timeout,
            // The root inode is opened at FUSE_INIT (and again after FUSE_DESTROY).
            do_import: true,
            // Never reference inodes by file handle: open_by_handle_at could reach any file on
            // the host file system, not just the share. Inodes are O_PATH fds (one per inode).
            inode_file_handles: false,
            no_open: false,
            no_opendir: false,
            // Needs CAP_FSETID juggling per request; the guest kernel drops suid bits itself.
            killpriv_v2: false,
            no_readdir: false,
            seal_size: false,
            enable_mntid: false,
            dax_file_size: None,
            use_host_ino: false,
            allow_direct_io: true,
            dir_entry_timeout: None,
            dir_attr_timeout: None,
        };
        let fs = PassthroughFs::<()>::new(pcfg)
            .map_err(|e| FsError::Setup("passthrough file system", e))?;
        Ok(FsServer {
            server: Server::new(GuardedFs::new(fs, cfg.read_only)),
        })
    }

    /// Serves every request the driver made available on `queue`, returning each chain to the
    /// used ring with the length of its reply, then rearms the queue's notifications (see
    /// [`crate::devices::virtio::rearm`]) and serves what arrived meanwhile. Returns how many chains were used.
    /// Interrupts the guest after each reply if it asks for it (requests can be slow; the guest
    /// should not wait for a batch). It drains again at most
    /// [`crate::devices::virtio::MAX_REARMS`] times; past that
    /// (a guest moving its index without requests to show for it) it signals `again`, the
    /// queue's eventfd, so the worker comes back after a look at its kill eventfd.
    pub fn process_queue(
        &self,
        mem: &GuestMemory,
        queue: &mut Queue,
        interrupt: &dyn VirtioInterrupt,
        again: Option<&EventFd>,
    ) -> usize {
        let mut used = 0;
        let mut rearms = 0usize;
        loop {
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                if rearm_or_yield(queue, mem, None, &mut rearms, again) {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let len = self.handle_chain(mem, chain);
            if let Err(e) = queue.add_used(mem, head, len) {
                tracing::warn!(error = %e, "virtio-fs: cannot return a descriptor chain");
                break;
            }
            used += 1;
            notify_used(queue, mem, interrupt);
        }
        used
    }

    /// Serves one request; returns the number of bytes written to the chain's writable part.
    fn handle_chain(&self, mem: &GuestMemory, chain: DescriptorChain<&GuestMemory>) -> u32 {
        let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "virtio-fs: unusable request descriptors");
                return 0;
            }
        };
        let writer = match VirtioFsWriter::new(mem, chain) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!(error = %e, "virtio-fs: unusable reply descriptors");
                return 0;
            }
        };
        let header: Option<InHeader> = reader.clone().read_obj().ok();
        let reply = writer.clone();
        let res = catch_unwind(AssertUnwindSafe(|| {
            self.server
                .handle_message(reader, Writer::VirtioFs(writer), None, None)
        }));
        let errno = match res {
            Ok(Ok(n)) => return u32::try_from(n).unwrap_or(0),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "virtio-fs: malformed request");
                match e {
                    fuse_backend_rs::Error::FailedToRemapID(_) => libc::EPERM,
                    _ => libc::EINVAL,
                }
            }
            Err(_) => {
                tracing::error!("virtio-fs: the FUSE server panicked on a request");
                libc::EIO
            }
        };
        // The server gave up without a reply (or with a partial one): the guest still gets an
        // error for its request, unless the request expects no reply at all.
        match header {
            Some(h)
                if h.opcode != Opcode::Forget as u32 && h.opcode != Opcode::BatchForget as u32 =>
            {
                write_error(reply, h.unique, errno)
            }
            _ => 0,
        }
    }
}

fn write_error(mut w: VirtioFsWriter<'_, ()>, unique: u64, errno: i32) -> u32 {
    use std::io::Write;
    let out = OutHeader {
        len: std::mem::size_of::<OutHeader>() as u32,
        error: -errno,
        unique,
    };
    match w.write_all(out.as_slice()) {
        Ok(()) => out.len,
        Err(_) => 0,
    }
}

/// The FUSE server of one activation, made by the first worker that needs it (opening
/// `/proc/self/fd` and `/proc/self/mountinfo` is file system work: the event loop's allowlist
/// has no `openat`).
pub(super) struct ServerSlot {
    cfg: FsConfig,
    root: Arc<std::os::fd::OwnedFd>,
    server: std::sync::OnceLock<Option<FsServer>>,
}

impl ServerSlot {
    pub(super) fn new(cfg: FsConfig, root: Arc<std::os::fd::OwnedFd>) -> ServerSlot {
        ServerSlot {
            cfg,
            root,
            server: std::sync::OnceLock::new(),
        }
    }

    fn get(&self) -> Option<&FsServer> {
        use std::os::fd::AsRawFd;
        // The root as the device opened it at start: in the host's mount namespace (not a copy
        // in the jail's, which would make the host's unmounts under the share fail as busy),
        // and never the path again (a directory swapped meanwhile is not followed).
        let root = format!("/proc/self/fd/{}/.", self.root.as_raw_fd());
        self.server
            .get_or_init(|| match FsServer::with_root(&self.cfg, &root) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, tag = %self.cfg.tag, "virtio-fs: cannot start the FUSE server");
                    None
                }
            })
            .as_ref()
    }
}

/// What a worker serves from an activation to the next reset.
pub(super) struct Job {
    pub server: Arc<ServerSlot>,
    pub mem: GuestMemory,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queue: Queue,
    pub queue_evt: EventFd,
}

/// A queue worker thread. It is started once, inside the jail and before the event loop
/// confines itself (so that its seccomp filter is its own: see `crate::jail`), and then
/// serves one [`Job`] per activation until it is stopped, and waits for the next.
pub(super) struct Worker {
    jobs: Option<mpsc::Sender<Job>>,
    stopped: mpsc::Receiver<()>,
    kill: EventFd,
    busy: bool,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts a parked worker thread called `name`.
    pub(super) fn spawn(name: String) -> std::io::Result<Worker> {
        let kill = EventFd::new(EFD_NONBLOCK)?;
        let kill2 = kill.try_clone()?;
        let (jobs, jobs_rx) = mpsc::channel::<Job>();
        let (stopped_tx, stopped) = mpsc::channel();
        let handle = std::thread::Builder::new().name(name).spawn(move || {
            if let Err(e) = crate::jail::enter_thread(crate::jail::ThreadKind::Fs) {
                // Dropping the receiver makes every `start` fail, which the device logs.
                tracing::error!(error = %e, "virtio-fs: a worker cannot confine itself");
                return;
            }
            while let Ok(job) = jobs_rx.recv() {
                let Job {
                    server,
                    mem,
                    interrupt,
                    queue,
                    queue_evt,
                } = job;
                match server.get() {
                    Some(server) => {
                        run(server, &mem, interrupt.as_ref(), queue, &queue_evt, &kill2)
                    }
                    // The guest's requests stay unanswered, as with a share that died; the
                    // error is logged once.
                    None => wait_for_stop(&kill2),
                }
                if stopped_tx.send(()).is_err() {
                    return;
                }
            }
        })?;
        Ok(Worker {
            jobs: Some(jobs),
            stopped,
            kill,
            busy: false,
            handle: Some(handle),
        })
    }

    /// Hands the worker its queue; fails if its thread is gone.
    pub(super) fn start(&mut self, job: Job) -> Result<(), &'static str> {
        self.stop();
        let jobs = self.jobs.as_ref().ok_or("the worker is gone")?;
        jobs.send(job).map_err(|_| "the worker thread is gone")?;
        self.busy = true;
        Ok(())
    }

    /// Whether it serves a queue.
    pub(super) fn is_busy(&self) -> bool {
        self.busy
    }

    /// Stops serving (after the request it is serving, if any) and waits until it has.
    pub(super) fn stop(&mut self) {
        if !self.busy {
            return;
        }
        self.busy = false;
        if let Err(e) = self.kill.write(1) {
            tracing::error!(error = %e, "virtio-fs: cannot stop a worker");
            return;
        }
        if self.stopped.recv().is_err() {
            tracing::error!("virtio-fs: a worker thread ended while serving");
        }
        // Idle again: the stop it may not have read is cleared for the next job.
        let _ = self.kill.read();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
        // Closing the job channel ends the thread.
        self.jobs = None;
        if let Some(handle) = self.handle.take() {
            if handle.join().is_err() {
                tracing::error!("virtio-fs: a worker thread panicked");
            }
        }
    }
}

/// Waits until the worker is told to stop.
fn wait_for_stop(kill: &EventFd) {
    use std::os::fd::AsRawFd;
    let mut fds = [libc::pollfd {
        fd: kill.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    loop {
        // SAFETY: poll(2) on one pollfd that lives for the call.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) };
        if n > 0
            || (n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted)
        {
            return;
        }
    }
}

const EV_QUEUE: u64 = 0;
const EV_KILL: u64 = 1;

fn run(
    server: &FsServer,
    mem: &GuestMemory,
    interrupt: &dyn VirtioInterrupt,
    mut queue: Queue,
    queue_evt: &EventFd,
    kill: &EventFd,
) {
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(error = %e, "virtio-fs: worker cannot create an epoll fd");
            return;
        }
    };
    for (fd, data) in [(queue_evt, EV_QUEUE), (kill, EV_KILL)] {
        use std::os::fd::AsRawFd;
        if let Err(e) = epoll.ctl(
            ControlOperation::Add,
            fd.as_raw_fd(),
            EpollEvent::new(EventSet::IN, data),
        ) {
            tracing::error!(error = %e, "virtio-fs: worker cannot watch its eventfds");
            return;
        }
    }
    // Requests made available before the thread started (the driver may notify at once).
    server.process_queue(mem, &mut queue, interrupt, Some(queue_evt));
    let mut events = [EpollEvent::default(); 2];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "virtio-fs: worker epoll failed");
                return;
            }
        };
        for ev in &events[..n] {
            match ev.data() {
                EV_KILL => return,
                _ => {
                    let _ = queue_evt.read();
                    server.process_queue(mem, &mut queue, interrupt, Some(queue_evt));
                }
            }
        }
    }
}
