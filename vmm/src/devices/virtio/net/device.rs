//! The virtio-net device: features, config space, activation, and the two data paths between
//! the guest's queues and the tap.

use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tap::{offload_flags, Tap, TapIo};
use super::{
    NetConfig, NetError, CONFIG_SPACE_SIZE, FRAME_BUF_SIZE, MAX_TX_DESCS, NET_DEVICE_ID,
    NUM_BUFFERS_OFFSET, NUM_QUEUES, QUEUE_SIZE, RXQ_INDEX, RX_BUDGET, TXQ_INDEX, TX_BUDGET,
    VNET_HDR_LEN,
};
use crate::devices::virtio::{
    check_activation, ignore_config_write, notify_used, notify_used_since, read_config_space,
    rearm_or_yield, ActivateError, GuestMemory, VirtioDevice, VirtioInterrupt,
};

/// An Ethernet header: the least a frame carries after its vnet header.
const ETH_HLEN: usize = 14;
/// The shortest frame either path accepts (vnet header plus Ethernet header).
const MIN_FRAME_LEN: usize = VNET_HDR_LEN + ETH_HLEN;

/// What the device counts (never reset: they describe the device's whole life).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames written to the tap, and their bytes (vnet header included).
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// TX chains that were not a frame (returned unused).
    pub tx_malformed: u64,
    /// Frames the tap refused (dropped; their chains completed).
    pub tx_write_errors: u64,
    /// Avail ring entries naming a descriptor past the end of the table: there is no chain to
    /// return, so they are skipped (the guest's driver broke its own ring).
    pub tx_bad_heads: u64,
    /// Frames delivered to the guest, and their bytes (vnet header included).
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames from the tap that could never fit the guest's buffers, or were too short.
    pub rx_dropped: u64,
    /// Frames that had to wait for the guest's RX buffers.
    pub rx_deferred: u64,
    /// RX chains that could not take data (returned unused).
    pub rx_bad_chains: u64,
    /// Failed tap reads (other than "no frame waiting").
    pub rx_read_errors: u64,
}

/// What the device holds between activation and reset.
pub(super) struct Active {
    pub mem: GuestMemory,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queues: Vec<Queue>,
    pub queue_evts: Vec<EventFd>,
    /// Whether `queue_evts` are in the event loop yet (done by `process`, on the event thread).
    pub registered: bool,
}

/// The RX side's preallocated state.
struct Rx {
    /// The frame being delivered (vnet header first).
    buf: Box<[u8]>,
    /// Length of the frame in `buf` that waits for RX buffers, if any. While one waits, the
    /// tap is not read.
    pending: Option<usize>,
    /// The chains that hold the frame being delivered: (head, bytes written).
    used: Vec<(u16, u32)>,
    /// Chains that could take no data, met while delivering a frame: returned with length 0.
    bad: Vec<u16>,
}

/// How delivering one frame went.
#[derive(Debug, PartialEq, Eq)]
enum RxOutcome {
    Delivered,
    /// The frame could never fit (a buffer too small without MRG_RXBUF, or more chains than
    /// the queue holds): dropped, the chains left to the next frame.
    Dropped,
    /// Not enough RX buffers yet: the frame stays, the chains are left in the queue.
    /// Too few buffers; the avail index up to which the device looked.
    Deferred(u16),
}

/// A virtio-net device whose host side is a tap interface.
pub struct Net {
    tap_name: String,
    pub(super) tap: Box<dyn TapIo>,
    avail_features: u64,
    acked_features: u64,
    config_space: [u8; CONFIG_SPACE_SIZE],
    queue_sizes: [u16; NUM_QUEUES],
    /// Signalled by `activate` and `reset` (vCPU thread) for `process` (event thread).
    pub(super) activate_evt: EventFd,
    /// Signalled by the RX path when it stops for fairness with frames possibly left in the tap.
    pub(super) rx_continue_evt: EventFd,
    pub(super) active: Option<Active>,
    /// Queue eventfds of a previous activation, to be removed from the event loop.
    pub(super) stale_evts: Vec<EventFd>,
    rx: Rx,
    tx_buf: Box<[u8]>,
    counters: NetCounters,
}

/// The features a virtio-net device offers and its config space, for `cfg`: the same whichever
/// backend carries the frames (a snapshot made on one is restored on the other).
pub(super) fn features_and_config(cfg: &NetConfig) -> (u64, [u8; CONFIG_SPACE_SIZE]) {
    let mut avail_features = [
        VIRTIO_F_VERSION_1,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_STATUS,
        VIRTIO_RING_F_EVENT_IDX,
    ]
    .iter()
    .fold(0u64, |f, &bit| f | (1u64 << bit));
    let mut config_space = [0u8; CONFIG_SPACE_SIZE];
    if let Some(mac) = cfg.mac {
        avail_features |= 1u64 << VIRTIO_NET_F_MAC;
        config_space[0..6].copy_from_slice(&mac.0);
    }
    config_space[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
    config_space[8..10].copy_from_slice(&1u16.to_le_bytes());
    if let Some(mtu) = cfg.mtu {
        avail_features |= 1u64 << VIRTIO_NET_F_MTU;
        config_space[10..12].copy_from_slice(&mtu.to_le_bytes());
    }
    (avail_features, config_space)
}

impl Net {
    /// Creates the device for `cfg`, attached to its tap. Fails, naming the tap, if the tap
    /// cannot be opened.
    pub fn new(cfg: &NetConfig) -> Result<Net, NetError> {
        cfg.validate()?;
        let tap = Tap::open(&cfg.tap)?;
        Net::with_tap(cfg, Box::new(tap))
    }

    /// Creates the device for `cfg` on an already open host side (`cfg.tap` only names it).
    pub fn with_tap(cfg: &NetConfig, tap: Box<dyn TapIo>) -> Result<Net, NetError> {
        let (avail_features, config_space) = features_and_config(cfg);
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(|e| NetError::Setup("eventfd", e));
        Ok(Net {
            tap_name: cfg.tap.clone(),
            tap,
            avail_features,
            acked_features: 0,
            config_space,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            activate_evt: evt()?,
            rx_continue_evt: evt()?,
            active: None,
            stale_evts: Vec::new(),
            rx: Rx {
                buf: vec![0u8; FRAME_BUF_SIZE].into_boxed_slice(),
                pending: None,
                used: Vec::with_capacity(usize::from(QUEUE_SIZE)),
                bad: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            },
            tx_buf: vec![0u8; FRAME_BUF_SIZE].into_boxed_slice(),
            counters: NetCounters::default(),
        })
    }

    /// The tap's name.
    pub fn tap_name(&self) -> &str {
        &self.tap_name
    }

    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    pub fn counters(&self) -> NetCounters {
        self.counters
    }

    /// Whether a frame read from the tap waits for the guest's RX buffers.
    pub fn rx_frame_waiting(&self) -> bool {
        self.rx.pending.is_some()
    }

    fn acked(&self, bit: u32) -> bool {
        self.acked_features & (1u64 << bit) != 0
    }

    /// Sends the frames the guest queued to the tap, at most [`TX_BUDGET`] per call (then the
    /// TX queue's eventfd brings the device back). Returns whether any chain was used (the
    /// guest was then interrupted if it asked for it).
    pub fn process_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        let Some(queue) = active.queues.get_mut(TXQ_INDEX) else {
            return false;
        };
        let mut used = false;
        let mut served = 0usize;
        let mut rearms = 0usize;
        let size = queue.size();
        loop {
            if served >= TX_BUDGET {
                // Not rearmed: the guest need not kick, the eventfd brings the device back.
                if let Some(evt) = active.queue_evts.get(TXQ_INDEX) {
                    let _ = evt.write(1);
                }
                break;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                let again = active.queue_evts.get(TXQ_INDEX);
                if rearm_or_yield(queue, mem, None, &mut rearms, again) {
                    continue;
                }
                break;
            };
            served += 1;
            let head = chain.head_index();
            if head >= size {
                // Nothing to gather and nothing the used ring can take back: skipped, and the
                // chains after it are served now, not at the guest's next kick.
                self.counters.tx_bad_heads = self.counters.tx_bad_heads.saturating_add(1);
                tracing::debug!(tap = %self.tap_name, head, "virtio-net: TX avail entry past the descriptor table; skipped");
                continue;
            }
            match gather_tx(mem, chain, &mut self.tx_buf) {
                Ok(len) => match self.tx_buf.get(..len).map(|f| self.tap.write_frame(f)) {
                    Some(Ok(_)) => {
                        self.counters.tx_frames = self.counters.tx_frames.saturating_add(1);
                        self.counters.tx_bytes = self.counters.tx_bytes.saturating_add(len as u64);
                    }
                    Some(Err(e)) => {
                        self.counters.tx_write_errors =
                            self.counters.tx_write_errors.saturating_add(1);
                        tracing::debug!(tap = %self.tap_name, error = %e, "virtio-net: tap write failed; frame dropped");
                    }
                    None => {}
                },
                Err(reason) => {
                    self.counters.tx_malformed = self.counters.tx_malformed.saturating_add(1);
                    tracing::debug!(tap = %self.tap_name, reason, "virtio-net: malformed TX chain; returned unused");
                }
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                tracing::warn!(tap = %self.tap_name, error = %e, "virtio-net: cannot return a TX buffer");
                break;
            }
            used = true;
        }
        if used {
            notify_used(queue, mem, active.interrupt.as_ref());
        }
        used
    }

    /// Moves frames from the tap (or the one waiting) into the guest's RX buffers, until the
    /// tap has none, the guest has too few buffers, or [`RX_BUDGET`] frames (then
    /// `rx_continue_evt` brings the device back). Returns whether any chain was used (the guest
    /// was then interrupted).
    pub fn process_rx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mrg = self.acked_features & (1u64 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let mem = &active.mem;
        let Some(queue) = active.queues.get_mut(RXQ_INDEX) else {
            return false;
        };
        let mut used = false;
        let mut frames = 0usize;
        let mut rearms = 0usize;
        // A frame's buffers go back under one used index update (`publish_used`): whether the
        // driver wants an interrupt is decided over the whole batch's index range.
        let first_used = queue.next_used();
        loop {
            let len = match self.rx.pending {
                Some(len) => len,
                None => {
                    if frames >= RX_BUDGET {
                        let _ = self.rx_continue_evt.write(1);
                        break;
                    }
                    frames = frames.saturating_add(1);
                    match self.tap.read_frame(&mut self.rx.buf) {
                        Ok(n) if (MIN_FRAME_LEN..=self.rx.buf.len()).contains(&n) => n,
                        Ok(n) => {
                            self.counters.rx_dropped = self.counters.rx_dropped.saturating_add(1);
                            tracing::debug!(tap = %self.tap_name, len = n, "virtio-net: short frame from the tap; dropped");
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            self.counters.rx_read_errors =
                                self.counters.rx_read_errors.saturating_add(1);
                            tracing::warn!(tap = %self.tap_name, error = %e, "virtio-net: tap read failed");
                            break;
                        }
                    }
                }
            };
            let outcome = deliver_frame(
                mem,
                queue,
                &mut self.rx,
                len,
                mrg,
                &mut self.counters,
                &mut used,
            );
            match outcome {
                RxOutcome::Delivered => {
                    self.rx.pending = None;
                    self.counters.rx_frames = self.counters.rx_frames.saturating_add(1);
                    self.counters.rx_bytes = self.counters.rx_bytes.saturating_add(len as u64);
                }
                RxOutcome::Dropped => {
                    self.rx.pending = None;
                    self.counters.rx_dropped = self.counters.rx_dropped.saturating_add(1);
                }
                RxOutcome::Deferred(seen) => {
                    if self.rx.pending.is_none() {
                        self.counters.rx_deferred = self.counters.rx_deferred.saturating_add(1);
                        self.rx.pending = Some(len);
                    }
                    // Too few buffers: the guest is asked to kick when it adds one past those
                    // the device saw; if it did meanwhile, the frame is tried again.
                    let again = Some(&self.rx_continue_evt);
                    if rearm_or_yield(queue, mem, Some(seen), &mut rearms, again) {
                        continue;
                    }
                    break;
                }
            }
        }
        if used {
            notify_used_since(queue, mem, active.interrupt.as_ref(), first_used);
        }
        used
    }
}

/// Copies a TX chain (vnet header and frame, readable descriptors only) into `buf`. Returns
/// the frame's length, or why the chain is not a frame.
fn gather_tx(
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    buf: &mut [u8],
) -> Result<usize, &'static str> {
    let mut len = 0usize;
    for (n, desc) in chain.enumerate() {
        if n >= MAX_TX_DESCS {
            return Err("too many descriptors");
        }
        if desc.is_write_only() {
            return Err("a write-only descriptor");
        }
        let end = usize::try_from(desc.len())
            .ok()
            .and_then(|l| len.checked_add(l))
            .ok_or("longer than the frame buffer")?;
        let dst = buf
            .get_mut(len..end)
            .ok_or("longer than the frame buffer")?;
        mem.read_slice(dst, desc.addr())
            .map_err(|_| "a buffer outside guest memory")?;
        len = end;
    }
    if len < MIN_FRAME_LEN {
        return Err("shorter than a vnet header and an Ethernet header");
    }
    Ok(len)
}

/// Writes used-ring entry `idx` without publishing it (the used index is not touched).
fn write_used_elem(mem: &GuestMemory, queue: &Queue, idx: u16, head: u16, len: u32) -> bool {
    let size = queue.size();
    if size == 0 {
        return false;
    }
    let slot = u64::from(idx % size);
    let Some(addr) = GuestAddress(queue.used_ring()).checked_add(4 + 8 * slot) else {
        return false;
    };
    let mut elem = [0u8; 8];
    elem[..4].copy_from_slice(&u32::from(head).to_le_bytes());
    elem[4..].copy_from_slice(&len.to_le_bytes());
    mem.write_slice(&elem, addr).is_ok()
}

/// Returns `entries` to the used ring under one update of the used index: every entry but the
/// last is written first, then `add_used` writes the last and publishes the index (a release
/// store, after the entries and the frame's bytes).
fn publish_used(
    mem: &GuestMemory,
    queue: &mut Queue,
    entries: impl Iterator<Item = (u16, u32)>,
) -> bool {
    let mut last = None;
    let mut idx = queue.next_used();
    for e in entries {
        if let Some((head, len)) = last.replace(e) {
            if !write_used_elem(mem, queue, idx, head, len) {
                tracing::warn!("virtio-net: cannot write the RX used ring");
            }
            idx = idx.wrapping_add(1);
        }
    }
    let Some((head, len)) = last else {
        return false;
    };
    queue.set_next_used(idx);
    if let Err(e) = queue.add_used(mem, head, len) {
        tracing::warn!(error = %e, "virtio-net: cannot return RX buffers");
        return false;
    }
    true
}

fn rewind(queue: &mut Queue, popped: usize) {
    for _ in 0..popped {
        queue.go_to_previous_position();
    }
}

/// Delivers the frame `rx.buf[..len]` into the guest's RX chains. Without MRG_RXBUF it must
/// fit one chain; with it, it spreads over as many as it needs, `num_buffers` tells how many,
/// and they are published together once the whole frame is in guest memory. `used` is set when
/// anything reached the used ring.
fn deliver_frame(
    mem: &GuestMemory,
    queue: &mut Queue,
    rx: &mut Rx,
    len: usize,
    mrg: bool,
    counters: &mut NetCounters,
    used: &mut bool,
) -> RxOutcome {
    let Some(frame) = rx.buf.get(..len) else {
        return RxOutcome::Dropped;
    };
    rx.used.clear();
    rx.bad.clear();
    // Chains taken from the avail ring and not yet returned (the frame's and the bad ones met
    // after the frame's first).
    let mut popped = 0usize;
    let mut off = 0usize;
    // Where the two bytes of `num_buffers` landed in guest memory.
    let mut num_buffers_at: [Option<GuestAddress>; 2] = [None, None];
    let max_chains = usize::from(queue.size());
    while off < frame.len() {
        if popped >= max_chains || rx.used.len() >= rx.used.capacity() {
            // More chains than the queue can ever hold at once: the frame can never fit.
            rewind(queue, popped);
            return RxOutcome::Dropped;
        }
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            // Every buffer up to here was looked at (next_avail is the avail index).
            let seen = queue.next_avail();
            rewind(queue, popped);
            return RxOutcome::Deferred(seen);
        };
        let head = chain.head_index();
        let start = off;
        let mut ok = true;
        for desc in chain {
            if !desc.is_write_only() {
                ok = false;
                break;
            }
            let rest = frame.len().saturating_sub(off);
            if rest == 0 {
                break;
            }
            let n = usize::try_from(desc.len()).unwrap_or(usize::MAX).min(rest);
            let Some(src) = off.checked_add(n).and_then(|end| frame.get(off..end)) else {
                ok = false;
                break;
            };
            if n == 0 {
                continue;
            }
            if mem.write_slice(src, desc.addr()).is_err() {
                ok = false;
                break;
            }
            for (k, at) in num_buffers_at.iter_mut().enumerate() {
                let pos = NUM_BUFFERS_OFFSET + k;
                if (off..off + n).contains(&pos) {
                    *at = desc.addr().checked_add((pos - off) as u64);
                }
            }
            off += n;
        }
        if !ok || off == start {
            // Not a buffer the device can write: returned unused, the frame goes on in the
            // next chain.
            off = start;
            counters.rx_bad_chains = counters.rx_bad_chains.saturating_add(1);
            if rx.used.is_empty() {
                // Nothing of this frame is in the used ring's way yet: return it at once.
                if let Err(e) = queue.add_used(mem, head, 0) {
                    tracing::warn!(error = %e, "virtio-net: cannot return an RX buffer");
                } else {
                    *used = true;
                }
            } else {
                rx.bad.push(head);
                popped += 1;
            }
            continue;
        }
        popped += 1;
        rx.used.push((head, (off - start) as u32));
        if !mrg && off < frame.len() {
            // One buffer per frame without MRG_RXBUF, and this one is too small.
            rewind(queue, popped);
            return RxOutcome::Dropped;
        }
    }
    let count = u16::try_from(rx.used.len())
        .unwrap_or(u16::MAX)
        .to_le_bytes();
    for (at, byte) in num_buffers_at.iter().zip(count) {
        if let Some(at) = at {
            let _ = mem.write_obj(byte, *at);
        }
    }
    let entries = rx
        .bad
        .iter()
        .map(|&h| (h, 0))
        .chain(rx.used.iter().copied());
    if publish_used(mem, queue, entries) {
        *used = true;
    }
    RxOutcome::Delivered
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        NET_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        ignore_config_write("virtio-net", offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        check_activation(NUM_QUEUES, &queues, &queue_evts, self.acked_features)?;
        let offloads = offload_flags(self.acked_features);
        self.tap.set_offload(offloads).map_err(|e| {
            ActivateError::Device(format!(
                "virtio-net: tap `{}`: TUNSETOFFLOAD {offloads:#x}: {e}",
                self.tap_name
            ))
        })?;
        if let Some(old) = self.active.take() {
            self.stale_evts.extend(old.queue_evts);
        }
        self.activate_evt.write(1).map_err(ActivateError::EventFd)?;
        self.active = Some(Active {
            mem,
            interrupt,
            queues,
            queue_evts,
            registered: false,
        });
        Ok(())
    }

    fn reset(&mut self) -> bool {
        if let Some(old) = self.active.take() {
            self.stale_evts.extend(old.queue_evts);
            // Let the event thread remove the old queue eventfds from its loop.
            let _ = self.activate_evt.write(1);
        }
        self.rx.pending = None;
        if self.acked(VIRTIO_NET_F_GUEST_CSUM) {
            if let Err(e) = self.tap.set_offload(0) {
                tracing::warn!(tap = %self.tap_name, error = %e, "virtio-net: cannot turn the tap's offloads off");
            }
        }
        self.acked_features = 0;
        true
    }

    fn queue_states(&self) -> Result<Option<Vec<virtio_queue::QueueState>>, String> {
        // A frame read from the tap and not yet delivered is not kept: the restored guest
        // has a new tap, and a lost frame is what a network may do.
        Ok(self
            .active
            .as_ref()
            .map(|a| a.queues.iter().map(Queue::state).collect()))
    }
}
