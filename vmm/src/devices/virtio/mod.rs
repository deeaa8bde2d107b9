//! Virtio devices and the contract between a device and its virtio-mmio transport.
//!
//! The transport (`mmio`) owns the register file the guest driver talks to and the device's
//! interrupt line; the device owns its queues once activated. A device that implements
//! [`VirtioDevice`] also implements `event_manager::MutEventSubscriber`: the VMM registers it with
//! the event loop before the guest starts, and the device adds its queue eventfds to its own
//! interest set when it is activated (activation happens on a vCPU thread, so the device signals
//! an eventfd of its own that its `process` sees, as Firecracker's devices do).

pub mod fs;
pub mod mmio;
pub mod net;
#[cfg(test)]
pub(crate) mod test_utils;
pub mod vsock;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as devices see it. A VM's memory never changes after boot, so a clone is cheap
/// and stays valid for the VM's lifetime.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;

/// A device's interrupt line to the guest, implemented by the transport.
pub trait VirtioInterrupt: Send + Sync {
    /// Tell the driver that a queue has new used buffers (interrupt status bit 0).
    fn signal_used_queue(&self) -> std::io::Result<()>;
    /// Tell the driver that the device configuration changed (interrupt status bit 1).
    fn signal_config_change(&self) -> std::io::Result<()>;
    /// For a device whose queues the host kernel serves (vhost-net): an eventfd that, written,
    /// interrupts the guest for its used queues, to give the kernel as every queue's call fd.
    /// The kernel cannot set the transport's interrupt status, so from this call until the
    /// device is reset the status the driver reads always has the used-queue bit (Linux's
    /// virtio-mmio driver then looks at its queues on every interrupt of the device, which
    /// costs it a read of each used index).
    fn used_queue_irqfd(&self) -> std::io::Result<EventFd> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "this interrupt cannot be raised from outside the device",
        ))
    }
}

/// How often one call of a device's queue handler drains again after [`rearm`] said buffers
/// arrived: a bound, since the driver's index is the guest's to move (a device past it yields
/// and comes back through an eventfd of its own).
pub const MAX_REARMS: usize = 16;

/// Notifications both ways, with or without `VIRTIO_RING_F_EVENT_IDX` (the transport sets the
/// queue's event index mode from the acknowledged features). Every device drains a queue, then
/// calls [`rearm`] (or [`rearm_after`] if it gave buffers back unused) and drains again while
/// it says buffers arrived meanwhile; it interrupts the guest through [`notify_used`], once per
/// batch of used buffers. Under EVENT_IDX the driver kicks only when it adds a buffer past the
/// index the device last wrote (`avail_event`) and wants an interrupt only once the used index
/// passes its `used_event`, which saves a VM exit per frame or request both ways; a device that
/// did not rearm would never be kicked again.
///
/// Errors reading or writing the rings (addresses the guest made bad) count as "nothing more",
/// and so does an avail index more than the queue's size past what the device saw (no chain can
/// be popped then, whatever the device does): the device stops rather than loops, as it stops
/// on such a ring without EVENT_IDX.
pub fn rearm(queue: &mut Queue, mem: &GuestMemory) -> bool {
    use virtio_queue::QueueT;
    let next = queue.next_avail();
    let more = queue.enable_notification(mem).unwrap_or(false);
    more && avail_within_reach(queue, mem, next)
}

/// What every device does when a drain found nothing more: rearms ([`rearm`], or
/// [`rearm_after`] with the index `seen` if it gave buffers back) and says whether to drain
/// again because buffers came meanwhile. Past [`MAX_REARMS`] (`rearms` counts them) it signals
/// `again`, an eventfd of the device's own, instead: the device comes back on the next round of
/// its loop, and the guest, which may not kick, is not waited for.
pub fn rearm_or_yield(
    queue: &mut Queue,
    mem: &GuestMemory,
    seen: Option<u16>,
    rearms: &mut usize,
    again: Option<&EventFd>,
) -> bool {
    let more = match seen {
        Some(seen) => rearm_after(queue, mem, seen),
        None => rearm(queue, mem),
    };
    if !more {
        return false;
    }
    if *rearms < MAX_REARMS {
        *rearms += 1;
        return true;
    }
    if let Some(evt) = again {
        let _ = evt.write(1);
    }
    false
}

/// Whether the driver's avail index is at most the queue's size past `from`.
fn avail_within_reach(queue: &Queue, mem: &GuestMemory, from: u16) -> bool {
    use virtio_queue::QueueT;
    match queue.avail_idx(mem, std::sync::atomic::Ordering::Acquire) {
        Ok(avail) if avail.0.wrapping_sub(from) <= queue.size() => true,
        Ok(avail) => {
            tracing::debug!(
                avail = avail.0,
                from,
                "virtio: the driver's avail index is past the ring; the queue stops"
            );
            false
        }
        Err(_) => false,
    }
}

/// [`rearm`] for a device that looked at the buffers up to avail index `seen` and gave some
/// back (rewound `next_avail`) because they were not enough: the driver is asked to kick on a
/// buffer past `seen`, not past `next_avail` (which it has already passed, so it would never
/// kick); returns whether it added any since.
pub fn rearm_after(queue: &mut Queue, mem: &GuestMemory, seen: u16) -> bool {
    use virtio_queue::QueueT;
    let next = queue.next_avail();
    queue.set_next_avail(seen);
    let more = queue.enable_notification(mem).unwrap_or(false);
    queue.set_next_avail(next);
    more && avail_within_reach(queue, mem, seen)
}

/// Interrupts the guest for the used buffers of `queue` if its driver wants it now (always
/// without EVENT_IDX; with it, once the used index passed `used_event`). Call once per batch:
/// the check remembers what it signalled.
pub fn notify_used(queue: &mut Queue, mem: &GuestMemory, interrupt: &dyn VirtioInterrupt) {
    use virtio_queue::QueueT;
    if queue.needs_notification(mem).unwrap_or(true) {
        if let Err(e) = interrupt.signal_used_queue() {
            tracing::warn!(error = %e, "virtio: cannot interrupt the guest");
        }
    }
}

/// [`notify_used`] for a batch that moved the used index from `old` by more than the number
/// of `add_used` calls (virtio-net returns a frame's buffers under one index update, and
/// virtio-queue's own check counts calls): interrupts if the driver's `used_event` lies in
/// `old..next_used` (always without EVENT_IDX, unless the driver asked for no interrupts).
pub fn notify_used_since(
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &dyn VirtioInterrupt,
    old: u16,
) {
    use virtio_queue::QueueT;
    use vm_memory::Bytes;
    if !queue.event_idx_enabled() {
        notify_used(queue, mem, interrupt);
        return;
    }
    // The used index is published (add_used's release store); its used_event is read after it.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    let at = queue
        .avail_ring()
        .checked_add(4 + 2 * u64::from(queue.size()));
    let used_event = at.and_then(|a| mem.read_obj::<u16>(vm_memory::GuestAddress(a)).ok());
    let new = queue.next_used();
    let wanted = match used_event {
        // vring_need_event: new - used_event - 1 < new - old.
        Some(ue) => new.wrapping_sub(ue).wrapping_sub(1) < new.wrapping_sub(old),
        None => true,
    };
    if wanted {
        if let Err(e) = interrupt.signal_used_queue() {
            tracing::warn!(error = %e, "virtio: cannot interrupt the guest");
        }
    }
}

/// Why a device refused to activate.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("wrong number of queues: expected {expected}, got {got}")]
    QueueCount { expected: usize, got: usize },
    #[error("the driver did not acknowledge a required feature: {0}")]
    MissingFeature(&'static str),
    #[error("cannot signal the event loop: {0}")]
    EventFd(#[source] std::io::Error),
    #[error("{0}")]
    Device(String),
}

/// Copies the bytes of a device's configuration space at `offset` into `data` (the common body of
/// [`VirtioDevice::read_config`]). A read that does not lie entirely inside `config` leaves
/// `data` as it is: the offset and length come from the guest.
pub fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = start
        .checked_add(data.len())
        .and_then(|end| config.get(start..end))
    {
        data.copy_from_slice(src);
    }
}

/// The body of [`VirtioDevice::write_config`] for a device whose configuration space is
/// read-only (vsock, virtio-fs): the write is logged and ignored.
pub fn ignore_config_write(device: &str, offset: u64, data: &[u8]) {
    tracing::debug!(
        device,
        offset,
        len = data.len(),
        "ignoring a write to a read-only config space"
    );
}

/// What every device checks when it is activated: one eventfd per queue, `expected` queues, and
/// that the driver acknowledged VIRTIO_F_VERSION_1 (hull's devices are modern-only).
pub fn check_activation(
    expected: usize,
    queues: &[Queue],
    queue_evts: &[EventFd],
    acked_features: u64,
) -> Result<(), ActivateError> {
    if queues.len() != expected || queue_evts.len() != expected {
        return Err(ActivateError::QueueCount {
            expected,
            got: queues.len().min(queue_evts.len()),
        });
    }
    if acked_features & (1u64 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1) == 0 {
        return Err(ActivateError::MissingFeature("VIRTIO_F_VERSION_1"));
    }
    Ok(())
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (e.g. 1 for net, 19 for vsock, 26 for fs).
    fn device_type(&self) -> u32;
    /// Maximum size of each of the device's queues; its length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers (including VIRTIO_F_VERSION_1).
    fn avail_features(&self) -> u64;
    /// The feature bits the driver acknowledged (a subset of `avail_features`, checked by the
    /// transport).
    fn set_acked_features(&mut self, features: u64);
    /// Read from the device-specific configuration space. Out-of-range reads leave `data` as is.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Write to the device-specific configuration space. Out-of-range writes are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// The driver set DRIVER_OK. `queues[i]` is ready and validated by the transport;
    /// `queue_evts[i]` is signalled whenever the driver notifies queue `i`.
    fn activate(
        &mut self,
        mem: GuestMemory,
        interrupt: Arc<dyn VirtioInterrupt>,
        queues: Vec<Queue>,
        queue_evts: Vec<EventFd>,
    ) -> Result<(), ActivateError>;
    /// The driver reset the device: drop the queues and return to the pre-activation state.
    /// Returns false when the device cannot be reset (the transport then sets NEEDS_RESET).
    fn reset(&mut self) -> bool;
    /// For a snapshot: the activated queues as the device stands now, positions included
    /// (`Ok(None)` before activation). The vCPUs are paused and the event loop is the caller;
    /// a device that cannot be saved in its present state says why.
    fn queue_states(&self) -> Result<Option<Vec<QueueState>>, String> {
        Err("this device cannot be snapshotted".into())
    }
    /// Called once a restore has activated the device with its saved queues, before any guest
    /// instruction runs: the device tells the guest what it lost (vsock: every connection).
    fn restored(&mut self) {}
    /// Called once, on the main thread, after hull-vmm has confined itself and before any
    /// guest instruction runs or the event loop installs its seccomp filter: what must be done
    /// inside the jail but needs more than the vCPUs' and the event loop's allowlists (vhost-net:
    /// becoming the owner, whose worker the kernel then makes with the jail's root and
    /// credentials). An error stops the VM before it starts.
    fn after_jail(&mut self) -> Result<(), String> {
        Ok(())
    }
}

/// A queue as a snapshot keeps it (virtio-queue's `QueueState`, which has no serde).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        QueueSnapshot {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl QueueSnapshot {
    pub fn of(q: &Queue) -> QueueSnapshot {
        q.state().into()
    }

    /// The queue again; virtio-queue checks the size and the ring addresses' alignment (the
    /// file is checksummed, but it is still input: an error, never a panic).
    pub fn to_queue(&self) -> Result<Queue, String> {
        Queue::try_from(QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx_enabled,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        })
        .map_err(|e| format!("queue state: {e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;

    #[test]
    fn config_reads_stay_inside_the_config_space() {
        let config = [1u8, 2, 3, 4];
        let mut d = [0u8; 2];
        read_config_space(&config, 1, &mut d);
        assert_eq!(d, [2, 3]);
        for (offset, len) in [(3u64, 2usize), (4, 1), (u64::MAX, 1), (u64::MAX - 1, 4)] {
            let mut d = vec![0xaa; len];
            read_config_space(&config, offset, &mut d);
            assert!(
                d.iter().all(|&b| b == 0xaa),
                "read at {offset}+{len} changed data"
            );
        }
    }

    #[test]
    fn activation_needs_every_queue_and_version_1() {
        let v1 = 1u64 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
        let q = || Queue::new(16).unwrap();
        let e = || EventFd::new(0).unwrap();
        assert!(check_activation(2, &[q(), q()], &[e(), e()], v1).is_ok());
        assert!(matches!(
            check_activation(2, &[q()], &[e(), e()], v1),
            Err(ActivateError::QueueCount {
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(
            check_activation(2, &[q(), q()], &[e()], v1),
            Err(ActivateError::QueueCount {
                expected: 2,
                got: 1
            })
        ));
        assert!(matches!(
            check_activation(2, &[q(), q()], &[e(), e()], 0),
            Err(ActivateError::MissingFeature("VIRTIO_F_VERSION_1"))
        ));
    }
}
