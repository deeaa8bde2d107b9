//! The virtio-fs device: a host directory shared with the guest, served in-process by
//! fuse-backend-rs's passthrough file system (no external virtiofsd).
//!
//! - `config.rs`: the share as the user describes it ([`FsConfig`], [`CachePolicy`], `--fs`).
//! - `device.rs`: [`Fs`], the virtio side (config space, features, activation, reset).
//! - `event_handler.rs`: the device's side of the VMM's event loop (only the activate eventfd:
//!   activation is signalled from a vCPU thread, the worker threads are started from the event
//!   loop thread).
//! - `worker.rs`: the request path. Each queue has a worker thread that waits on the queue's
//!   eventfd itself, so a slow host file system never stalls the event loop (console, vsock).
//! - `guard.rs`: the policy layer between the FUSE server and the passthrough file system:
//!   read-only shares, no device nodes, bounded reply buffers.
//!
//! Confinement (the guest never reaches a host file outside the shared directory) rests on
//! fuse-backend-rs's passthrough design, checked in `tests.rs`: every inode is an `O_PATH` fd
//! obtained by `openat(parent_fd, name, O_NOFOLLOW)` with `name` a single component (`/` is
//! refused, `..` at the root is mapped to `.`); inode numbers only come from lookups; symlinks
//! are never followed on the host (the guest kernel resolves them itself from READLINK);
//! only regular files and directories are ever opened (through `/proc/self/fd`, which does
//! not follow a symlink further); and open-by-handle is off (`inode_file_handles: false`).

mod config;
mod device;
mod event_handler;
mod guard;
mod worker;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use config::{CachePolicy, FsConfig};
pub use device::{Fs, FsWorkers};
pub use worker::FsServer;

/// Virtio device ID of a file system device.
pub const FS_DEVICE_ID: u32 = 26;
/// Size of the tag field of the config space.
pub const TAG_LEN: usize = hull_vmm_api::fs::FS_TAG_LEN;
/// Request queues (the Linux driver uses one).
pub const NUM_REQUEST_QUEUES: usize = 1;
/// The high-priority queue (FORGET, INTERRUPT) plus the request queues.
pub const NUM_QUEUES: usize = 1 + NUM_REQUEST_QUEUES;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 1024;
/// Index of the high-priority queue.
pub const HIPRIO_QUEUE: usize = 0;
/// Config space: tag[36] + num_request_queues (le32).
pub const CONFIG_SPACE_SIZE: usize = TAG_LEN + 4;

/// Why a share could not be configured or created.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error(transparent)]
    Spec(#[from] hull_vmm_api::FsSpecError),
    #[error("shared directory {}: {source}", path.display())]
    SharedDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("shared directory {}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("shared directory {}: the path is not valid UTF-8", .0.display())]
    NonUtf8Path(PathBuf),
    #[error("virtio-fs setup ({0}): {1}")]
    Setup(&'static str, #[source] std::io::Error),
}
