//! The virtio-vsock device: config space, activation, and moving packets between the guest's
//! queues and the muxer.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::packet::{parse_rx, parse_tx, PKT_HEADER_SIZE};
use super::unix::muxer::VsockMuxer;
use super::{VsockError, EVQ_INDEX, NUM_QUEUES, QUEUE_SIZE, RXQ_INDEX, TXQ_INDEX, VSOCK_DEVICE_ID};
use crate::devices::virtio::{
    check_activation, ignore_config_write, notify_used, read_config_space, rearm_after,
    rearm_or_yield, ActivateError, GuestMemory, VirtioDevice, VirtioInterrupt,
};

/// `struct virtio_vsock_event`: one little-endian u32, the event's id.
const VSOCK_EVENT_SIZE: u32 = 4;
/// VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.
const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;

/// What the device holds between activation and reset.
pub(super) struct Active {
    pub mem: GuestMemory,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub queues: Vec<Queue>,
    pub queue_evts: Vec<EventFd>,
    /// Whether `queue_evts` are in the event loop yet (done by `process`, on the event thread).
    pub registered: bool,
}

/// A virtio-vsock device whose host side is a Firecracker-compatible hybrid Unix socket.
pub struct Vsock {
    guest_cid: u64,
    queue_sizes: [u16; NUM_QUEUES],
    acked_features: u64,
    /// Signalled by `activate` and `reset` (vCPU thread) for `process` (event thread).
    pub(super) activate_evt: EventFd,
    pub(super) active: Option<Active>,
    /// Queue eventfds of a previous activation, to be removed from the event loop.
    pub(super) stale_evts: Vec<EventFd>,
    pub(super) muxer: VsockMuxer,
    /// The TX queue was left unread because the muxer could not take more packets.
    pub(super) tx_stalled: bool,
    /// A transport reset was sent and the guest has not yet taken it: the event queue's avail
    /// index when it was sent. The guest posts the buffer again once it has handled the event
    /// (and kicks the queue); until then nothing is delivered to it, as a host connection set
    /// up before the guest handles the reset would be reset with the template's.
    pub(super) reset_unacked: Option<u16>,
}

impl Vsock {
    /// Creates the device and binds its Unix socket at `uds_path` (removed again on drop).
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<Vsock, VsockError> {
        if guest_cid <= 2 || guest_cid >= u64::from(u32::MAX) {
            return Err(VsockError::InvalidCid(guest_cid));
        }
        let activate_evt =
            EventFd::new(EFD_NONBLOCK).map_err(|e| VsockError::Setup("eventfd", e))?;
        let muxer = VsockMuxer::new(guest_cid, uds_path)?;
        Ok(Vsock {
            guest_cid,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            acked_features: 0,
            activate_evt,
            active: None,
            stale_evts: Vec::new(),
            muxer,
            tx_stalled: false,
            reset_unacked: None,
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Number of live connections.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Fills the guest's RX buffers with pending packets. Returns whether any buffer was used
    /// (the guest was then interrupted).
    pub fn process_rx(&mut self) -> bool {
        if self.reset_unacked.is_some() {
            return false;
        }
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[RXQ_INDEX];
        let mut used = false;
        let mut rearms = 0usize;
        while self.muxer.has_pending_rx() {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                // No buffer for what is pending: the guest kicks when it posts one (the
                // muxer's own events bring the device back too).
                let again = active.queue_evts.get(RXQ_INDEX);
                if rearm_or_yield(queue, mem, None, &mut rearms, again) {
                    continue;
                }
                break;
            };
            let head = chain.head_index();
            let len = match parse_rx(mem, &mut chain) {
                Ok(mut pkt) => {
                    if !self.muxer.recv_pkt(&mut pkt) {
                        queue.go_to_previous_position();
                        break;
                    }
                    PKT_HEADER_SIZE as u32 + pkt.len()
                }
                Err(e) => {
                    tracing::debug!(error = %e, "vsock: unusable RX descriptor chain; dropping it");
                    0
                }
            };
            if let Err(e) = queue.add_used(mem, head, len) {
                tracing::warn!(error = %e, "vsock: cannot return an RX buffer");
                break;
            }
            used = true;
        }
        if used {
            notify_used(queue, mem, active.interrupt.as_ref());
        }
        // Packets the muxer could not take before may fit now.
        used
    }

    /// Handles the packets the guest queued for transmission. Returns whether any buffer was
    /// used (the guest was then interrupted).
    pub fn process_tx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[TXQ_INDEX];
        let mut used = false;
        let mut rearms = 0usize;
        self.tx_stalled = false;
        loop {
            let Some(mut chain) = queue.pop_descriptor_chain(mem) else {
                let again = active.queue_evts.get(TXQ_INDEX);
                if rearm_or_yield(queue, mem, None, &mut rearms, again) {
                    continue;
                }
                break;
            };
            if !self.muxer.can_accept_tx() {
                queue.go_to_previous_position();
                self.tx_stalled = true;
                break;
            }
            let head = chain.head_index();
            match parse_tx(mem, &mut chain) {
                Ok(pkt) => self.muxer.send_pkt(&pkt),
                Err(e) => {
                    tracing::debug!(error = %e, "vsock: malformed TX descriptor chain; dropping it")
                }
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                tracing::warn!(error = %e, "vsock: cannot return a TX buffer");
                break;
            }
            used = true;
        }
        if used {
            notify_used(queue, mem, active.interrupt.as_ref());
        }
        used
    }

    /// Runs the queues until neither makes progress: RX drains the muxer, which may unblock TX,
    /// whose packets may queue more RX.
    pub(super) fn process_queues(&mut self, tx_first: bool) {
        if tx_first {
            self.process_tx();
        }
        loop {
            self.process_rx();
            if !(self.tx_stalled && self.muxer.can_accept_tx() && self.process_tx()) {
                break;
            }
        }
    }

    /// Tells the guest that every connection it had is gone (VIRTIO_VSOCK_EVENT_TRANSPORT_RESET
    /// on the event queue): after a restore, the host side of each belongs to another VMM.
    /// The guest resets its connected sockets, keeps its listeners and reads the CID again.
    /// Returns whether the event was delivered (the guest had an event buffer posted).
    pub fn send_transport_reset(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        let queue = &mut active.queues[EVQ_INDEX];
        let Some(chain) = queue.pop_descriptor_chain(mem) else {
            tracing::warn!("vsock: no event buffer for the transport reset");
            return false;
        };
        let head = chain.head_index();
        let mut len = 0;
        for d in chain {
            if d.is_write_only() && d.len() >= VSOCK_EVENT_SIZE {
                if let Err(e) = mem.write_obj(VIRTIO_VSOCK_EVENT_TRANSPORT_RESET, d.addr()) {
                    tracing::warn!(error = %e, "vsock: cannot write the transport reset event");
                } else {
                    len = VSOCK_EVENT_SIZE;
                }
                break;
            }
        }
        if let Err(e) = queue.add_used(mem, head, len) {
            tracing::warn!(error = %e, "vsock: cannot return an event buffer");
            return false;
        }
        notify_used(queue, mem, active.interrupt.as_ref());
        let avail = queue
            .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
            .ok()
            .map(|i| i.0);
        // The guest posts an event buffer again once it took the reset, and must kick for it
        // (`check_reset_taken`): with EVENT_IDX only if asked to, past every buffer it had
        // posted (Linux posts eight), not past the one taken.
        if let Some(seen) = avail {
            rearm_after(queue, mem, seen);
        }
        if len != 0 {
            self.reset_unacked = avail;
        }
        len != 0
    }

    /// Whether the guest has taken the transport reset (it posted an event buffer again);
    /// queued packets then go.
    pub(super) fn check_reset_taken(&mut self) {
        let (Some(sent), Some(active)) = (self.reset_unacked, self.active.as_ref()) else {
            return;
        };
        let now = active.queues[EVQ_INDEX]
            .avail_idx(&active.mem, std::sync::atomic::Ordering::Acquire)
            .map(|i| i.0);
        if now.is_ok_and(|n| n != sent) {
            tracing::debug!("vsock: the guest took the transport reset");
            self.reset_unacked = None;
            self.process_queues(true);
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VSOCK_DEVICE_ID
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        (1u64 << VIRTIO_F_VERSION_1) | (1u64 << VIRTIO_RING_F_EVENT_IDX)
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_space(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        ignore_config_write("vsock", offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
    ) -> Result<(), ActivateError> {
        check_activation(NUM_QUEUES, &queues, &queue_evts, self.acked_features)?;
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
        self.muxer.reset();
        self.acked_features = 0;
        self.tx_stalled = false;
        self.reset_unacked = None;
        true
    }

    fn queue_states(&self) -> Result<Option<Vec<virtio_queue::QueueState>>, String> {
        // The muxer's connections are not kept: the restored device starts without any and
        // tells the guest so (`restored`).
        Ok(self
            .active
            .as_ref()
            .map(|a| a.queues.iter().map(Queue::state).collect()))
    }

    fn restored(&mut self) {
        self.send_transport_reset();
    }
}
