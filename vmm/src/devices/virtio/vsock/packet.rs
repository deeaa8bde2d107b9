//! Vsock packets as the device sees them: a `virtio_vsock::packet::VsockPacket` over a descriptor
//! chain, parsed once (the header is copied out of guest memory, so the guest cannot change it
//! after it was checked) plus the protocol constants of the virtio-vsock stream protocol.
//!
//! The crate's parser enforces: the chain's direction (TX readable, RX writable), a header that
//! fits the head descriptor, a payload `len` no larger than [`MAX_PKT_BUF_SIZE`] that fits its
//! descriptor, and every buffer inside guest memory (`get_slice` fails otherwise). The chain
//! iterator of virtio-queue bounds the number of descriptors it follows by the queue size, so a
//! descriptor loop ends the chain instead of spinning.

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::VsockPacket;

use super::MAX_PKT_BUF_SIZE;
use crate::devices::virtio::GuestMemory;

pub use virtio_vsock::packet::PKT_HEADER_SIZE;

/// A packet backed by guest memory (the VMM's memory has no dirty-page bitmap).
pub type Packet<'a> = VsockPacket<'a, ()>;

/// Why a descriptor chain could not be used as a packet.
pub type PacketError = virtio_vsock::packet::Error;

/// Stream sockets: the only type the device supports.
pub const VSOCK_TYPE_STREAM: u16 = 1;

pub const VSOCK_OP_REQUEST: u16 = 1;
pub const VSOCK_OP_RESPONSE: u16 = 2;
pub const VSOCK_OP_RST: u16 = 3;
pub const VSOCK_OP_SHUTDOWN: u16 = 4;
pub const VSOCK_OP_RW: u16 = 5;
pub const VSOCK_OP_CREDIT_UPDATE: u16 = 6;
pub const VSOCK_OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flag: the sender will receive no more data.
pub const VSOCK_FLAGS_SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const VSOCK_FLAGS_SHUTDOWN_SEND: u32 = 2;

/// Parses a TX chain (guest to host): header plus, when `len` is not zero, the payload.
pub fn parse_tx<'a>(
    mem: &'a GuestMemory,
    chain: &mut DescriptorChain<&GuestMemory>,
) -> Result<Packet<'a>, PacketError> {
    VsockPacket::from_tx_virtq_chain(mem, chain, MAX_PKT_BUF_SIZE)
}

/// Parses an RX chain (host to guest): a writable header and a writable payload buffer.
pub fn parse_rx<'a>(
    mem: &'a GuestMemory,
    chain: &mut DescriptorChain<&GuestMemory>,
) -> Result<Packet<'a>, PacketError> {
    VsockPacket::from_rx_virtq_chain(mem, chain, MAX_PKT_BUF_SIZE)
}

/// The header fields of a packet the device builds (everything but the payload).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

/// Writes `hdr` into an RX packet's header (type STREAM; every other byte zeroed first).
pub fn write_header(pkt: &mut Packet<'_>, hdr: &Header) {
    // Zeroing through the crate's API keeps its cached header in step with guest memory. The
    // header slice is exactly PKT_HEADER_SIZE long, so this cannot fail.
    let _ = pkt.set_header_from_raw(&[0u8; PKT_HEADER_SIZE]);
    pkt.set_src_cid(hdr.src_cid)
        .set_dst_cid(hdr.dst_cid)
        .set_src_port(hdr.src_port)
        .set_dst_port(hdr.dst_port)
        .set_len(hdr.len)
        .set_type(VSOCK_TYPE_STREAM)
        .set_op(hdr.op)
        .set_flags(hdr.flags)
        .set_buf_alloc(hdr.buf_alloc)
        .set_fwd_cnt(hdr.fwd_cnt);
}
