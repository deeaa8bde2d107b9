//! virtio-vsock with a Firecracker-compatible hybrid Unix-socket host side.
//!
//! The device (`device.rs`, `event_handler.rs`) moves packets between the guest's virtqueues and
//! a backend, the muxer (`unix/muxer.rs`), which owns every host-side socket:
//!
//! - Host-initiated connections: a host process connects to the Unix socket at `uds_path` and
//!   writes `CONNECT <port>\n`; the muxer sends a REQUEST to the guest's port `<port>` and, when
//!   the guest accepts, answers `OK <hostport>\n` on the Unix stream, after which the stream carries
//!   the connection's bytes.
//! - Guest-initiated connections: a guest connection to host CID 2, port `P`, is forwarded to the
//!   Unix socket `<uds_path>_P`.
//!
//! Each connection (`csm/connection.rs`) implements the virtio-vsock stream protocol: credit-based
//! flow control, SHUTDOWN/RST teardown and timeouts. Everything the guest writes into the queues is
//! treated as hostile: malformed chains, unknown connections, wrong CIDs and bad operations are
//! dropped or answered with RST, never trusted.
//!
//! Limits (all explicit, see the constants below): connections, pending RST replies, per-connection
//! TX buffer, packet payload size, and the time a connection may linger half-set-up or half-closed.

mod csm;
mod device;
mod event_handler;
mod packet;
mod unix;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::time::Duration;

pub use device::Vsock;

/// Virtio device ID of vsock.
pub const VSOCK_DEVICE_ID: u32 = 19;
/// The host's well-known CID: the destination of every guest packet the device accepts.
pub const VSOCK_HOST_CID: u64 = 2;

/// Queue indices.
pub(crate) const RXQ_INDEX: usize = 0;
pub(crate) const TXQ_INDEX: usize = 1;
pub(crate) const EVQ_INDEX: usize = 2;
/// Maximum size of each of the three queues.
pub(crate) const QUEUE_SIZE: u16 = 256;
pub(crate) const NUM_QUEUES: usize = 3;

/// Largest payload of one packet, both ways (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE). A TX header
/// announcing more is rejected.
pub(crate) const MAX_PKT_BUF_SIZE: u32 = 64 * 1024;
/// Per-connection buffer for guest-to-host bytes the host socket did not take yet. This is the
/// `buf_alloc` the device advertises, so a guest that respects its credit never overflows it; one
/// that does is reset.
pub(crate) const CONN_TX_BUF_SIZE: u32 = 256 * 1024;
/// Maximum number of connections (both directions, including ones being torn down).
pub(crate) const MAX_CONNECTIONS: usize = 512;
/// Maximum number of host clients that connected to the Unix socket but have not finished their
/// `CONNECT <port>\n` line.
pub(crate) const MAX_PENDING_HOST_CONNECTS: usize = 64;
/// Maximum number of pending RST replies to packets that match no connection. While the queue is
/// full the device stops reading the TX queue (the guest waits), so nothing is lost silently.
pub(crate) const MAX_PENDING_RST: usize = 256;
/// Longest accepted `CONNECT <port>\n` line.
pub(crate) const MAX_CONNECT_LINE: usize = 32;

/// How long a host client may take to send its `CONNECT` line.
pub(crate) const CONNECT_LINE_TIMEOUT: Duration = timeout(10_000);
/// How long the guest may take to answer a host-initiated REQUEST.
pub(crate) const CONN_REQUEST_TIMEOUT: Duration = timeout(10_000);
/// How long a connection may stay half torn down (waiting for the guest's RST after a SHUTDOWN,
/// or for the host socket to take the last buffered bytes) before the device resets it.
pub(crate) const CONN_SHUTDOWN_TIMEOUT: Duration = timeout(5_000);

/// Unit tests exercise the same timeouts, scaled down so they finish quickly.
const fn timeout(ms: u64) -> Duration {
    if cfg!(test) {
        Duration::from_millis(ms / 20)
    } else {
        Duration::from_millis(ms)
    }
}

/// Errors of the vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("vsock Unix socket {}: path already exists (in use, or left over by a VMM that did not clean up)", .0.display())]
    UdsPathExists(PathBuf),
    #[error("cannot bind the vsock Unix socket {}: {source}", path.display())]
    UdsBind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid guest CID {0}: CIDs 0, 1, 2 and 0xffffffff and above are reserved")]
    InvalidCid(u64),
    #[error("vsock setup ({0}): {1}")]
    Setup(&'static str, #[source] std::io::Error),
}
