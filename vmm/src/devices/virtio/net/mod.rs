//! The virtio-net device, backed by a host tap interface.
//!
//! - `tap.rs`: the tap ([`Tap`]: `/dev/net/tun`, IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, a 12-byte
//!   vnet header, non-blocking) and [`TapIo`], what the device needs from it (tests and fuzz
//!   targets use a fake).
//! - `device.rs`: [`Net`], the virtio side: features, config space, activation, and the two
//!   data paths. One RX and one TX queue, no control queue.
//! - `vhost.rs`: [`VhostNet`], the same device with its queues served by the host kernel's
//!   vhost-net (the default where `/dev/vhost-net` exists: `NetBackend::Auto`).
//! - `event_handler.rs`: the device's side of the VMM's event loop (RX and TX queue events, the
//!   tap's fd, edge-triggered).
//!
//! Frames cross between the guest's buffers and the tap with their `virtio_net_hdr_v1` (12
//! bytes) in front, untranslated. Neither path allocates: a frame goes through one preallocated
//! buffer per direction ([`FRAME_BUF_SIZE`] bytes: the largest frame plus the header).
//!
//! Everything the guest writes into the queues is hostile. A TX chain that is not a frame (a
//! write-only descriptor, more than [`MAX_TX_DESCS`] descriptors, more than the buffer, shorter
//! than the header, memory outside the guest's) is returned unused (length 0) and counted. An
//! RX chain that cannot take data is returned unused too. With VIRTIO_NET_F_MRG_RXBUF a frame
//! spreads over as many RX chains as it needs, and all of them reach the used ring under one
//! update of the used index; when the guest has too few RX buffers the frame waits in the
//! device (and the tap is not read) until the guest adds some: frames are never dropped for
//! want of buffers, only when they could never fit.

mod device;
mod event_handler;
mod tap;
mod vhost;

#[cfg(test)]
mod tests;

pub use device::{Net, NetCounters};
pub use hull_vmm_api::net::{MacAddr, NetBackend, NetConfig};
pub use tap::{offload_flags, Tap, TapError, TapIo};
pub use vhost::VhostNet;

/// Virtio device ID of a network card.
pub const NET_DEVICE_ID: u32 = 1;
/// Queue indices.
pub const RXQ_INDEX: usize = 0;
pub const TXQ_INDEX: usize = 1;
pub const NUM_QUEUES: usize = 2;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
/// `struct virtio_net_hdr_v1` (with `num_buffers`): what precedes every frame, both ways.
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// The largest frame (64 KiB of GSO payload plus headers, as Firecracker sizes it) plus the
/// vnet header: the size of each direction's frame buffer.
pub const FRAME_BUF_SIZE: usize = 65562;
/// Most descriptors of one TX chain (Linux uses at most MAX_SKB_FRAGS + 2 = 19).
pub const MAX_TX_DESCS: usize = 64;
/// Most frames moved from the tap to the guest per event before the device yields the event
/// loop to the other devices (it resumes on its own eventfd).
pub const RX_BUDGET: usize = 256;
/// Most TX chains served per event before the device yields the event loop to the other
/// devices (it resumes through its TX queue's own eventfd, which it signals itself).
pub const TX_BUDGET: usize = 256;
/// Config space: mac[6], status (le16), max_virtqueue_pairs (le16), mtu (le16).
pub const CONFIG_SPACE_SIZE: usize = 12;

/// Why a network device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Spec(#[from] hull_vmm_api::NetSpecError),
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("virtio-net setup ({0}): {1}")]
    Setup(&'static str, #[source] std::io::Error),
    /// The host's vhost-net cannot serve the device (what failed, and why).
    #[error("vhost-net ({0}): {1}")]
    Vhost(&'static str, String),
}
