//! The virtio-mmio transport (virtio 1.x "modern" register layout, version 2), generic over
//! [`VirtioDevice`].
//!
//! The guest driver talks to a 4 KiB register window. The transport validates every access
//! (32-bit, aligned registers; any size for the device configuration space), keeps the feature
//! negotiation and queue configuration, and activates the device when the driver sets
//! DRIVER_OK with every queue ready and inside guest memory. Queue notifications reach the
//! device through eventfds: the VMM registers each as a KVM ioeventfd on QueueNotify with the
//! queue index as datamatch, so notifications normally never leave the kernel; a notification
//! that does reach the transport (no ioeventfd, or an index without one) is forwarded the same
//! way. The interrupt line is an eventfd the VMM registers as a KVM irqfd.

use crate::sync::LockExt;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{GuestMemory, QueueSnapshot, VirtioDevice, VirtioInterrupt};
use crate::devices::bus::BusDevice;

/// "virt" in little-endian.
pub const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// The modern (virtio 1.x) MMIO transport.
pub const MMIO_VERSION: u32 = 2;
/// Vendor id reported to the guest ("HULL").
pub const VENDOR_ID: u32 = 0x4c4c_5548;

// Register offsets.
pub const REG_MAGIC_VALUE: u64 = 0x000;
pub const REG_VERSION: u64 = 0x004;
pub const REG_DEVICE_ID: u64 = 0x008;
pub const REG_VENDOR_ID: u64 = 0x00c;
pub const REG_DEVICE_FEATURES: u64 = 0x010;
pub const REG_DEVICE_FEATURES_SEL: u64 = 0x014;
pub const REG_DRIVER_FEATURES: u64 = 0x020;
pub const REG_DRIVER_FEATURES_SEL: u64 = 0x024;
pub const REG_QUEUE_SEL: u64 = 0x030;
pub const REG_QUEUE_NUM_MAX: u64 = 0x034;
pub const REG_QUEUE_NUM: u64 = 0x038;
pub const REG_QUEUE_READY: u64 = 0x044;
pub const REG_QUEUE_NOTIFY: u64 = 0x050;
pub const REG_INTERRUPT_STATUS: u64 = 0x060;
pub const REG_INTERRUPT_ACK: u64 = 0x064;
pub const REG_STATUS: u64 = 0x070;
pub const REG_QUEUE_DESC_LOW: u64 = 0x080;
pub const REG_QUEUE_DESC_HIGH: u64 = 0x084;
pub const REG_QUEUE_DRIVER_LOW: u64 = 0x090;
pub const REG_QUEUE_DRIVER_HIGH: u64 = 0x094;
pub const REG_QUEUE_DEVICE_LOW: u64 = 0x0a0;
pub const REG_QUEUE_DEVICE_HIGH: u64 = 0x0a4;
pub const REG_CONFIG_GENERATION: u64 = 0x0fc;
pub const REG_CONFIG: u64 = 0x100;
/// Size of the register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

// Device status bits.
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_NEEDS_RESET: u32 = 64;
pub const STATUS_FAILED: u32 = 128;

// Interrupt status bits.
pub const INT_VRING: u32 = 1;
pub const INT_CONFIG: u32 = 2;

/// VIRTIO_F_VERSION_1: the modern interface; the transport requires the driver to accept it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("device has no queues")]
    NoQueues,
    #[error("device queue {index} has an invalid maximum size {size}")]
    QueueSize { index: usize, size: u16 },
    #[error("device does not offer VIRTIO_F_VERSION_1")]
    NotModern,
    #[error("cannot create an eventfd: {0}")]
    EventFd(#[source] std::io::Error),
}

/// The transport's interrupt: an interrupt status register plus the irqfd.
pub struct MmioInterrupt {
    status: AtomicU32,
    evt: EventFd,
    /// Set by [`VirtioInterrupt::used_queue_irqfd`] (the host kernel raises used-queue
    /// interrupts through `evt` without setting `status`), cleared by the transport's reset.
    external_vring: AtomicBool,
}

impl MmioInterrupt {
    fn raise(&self, bit: u32) -> std::io::Result<()> {
        self.status.fetch_or(bit, Ordering::SeqCst);
        self.evt.write(1)
    }

    /// The eventfd to register as the device's irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }

    pub fn status(&self) -> u32 {
        let external = if self.external_vring.load(Ordering::SeqCst) {
            INT_VRING
        } else {
            0
        };
        self.status.load(Ordering::SeqCst) | external
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        self.raise(INT_VRING)
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        self.raise(INT_CONFIG)
    }
    fn used_queue_irqfd(&self) -> std::io::Result<EventFd> {
        let evt = self.evt.try_clone()?;
        self.external_vring.store(true, Ordering::SeqCst);
        Ok(evt)
    }
}

/// A transport and its device as a snapshot keeps them: the registers the driver wrote, the
/// queues' configuration, and (once activated) the device's queues with their positions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_type: u32,
    pub avail_features: u64,
    pub acked_features: u64,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub queue_sel: u32,
    pub status: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    pub queues: Vec<QueueSnapshot>,
    /// The device's own queues (None: not activated).
    pub active_queues: Option<Vec<QueueSnapshot>>,
}

/// One virtio-mmio device window.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    interrupt: Arc<MmioInterrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
    device_type: u32,
    avail_features: u64,
    acked_features: u64,
    device_features_sel: u32,
    driver_features_sel: u32,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
}

/// A fresh `Queue` with `q`'s configuration (virtio-queue's `Queue` is not `Clone`).
fn copy_queue(q: &Queue, event_idx: bool) -> Option<Queue> {
    let mut c = Queue::new(q.max_size()).ok()?;
    c.try_set_size(q.size()).ok()?;
    c.try_set_desc_table_address(vm_memory::GuestAddress(q.desc_table()))
        .ok()?;
    c.try_set_avail_ring_address(vm_memory::GuestAddress(q.avail_ring()))
        .ok()?;
    c.try_set_used_ring_address(vm_memory::GuestAddress(q.used_ring()))
        .ok()?;
    c.set_event_idx(event_idx);
    c.set_ready(q.ready());
    Some(c)
}

fn lock(d: &Arc<Mutex<dyn VirtioDevice>>) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
    d.locked()
}

impl MmioTransport {
    /// Wraps `device`. Its queue sizes must be powers of two in 1..=32768 and it must offer
    /// VIRTIO_F_VERSION_1.
    pub fn new(
        mem: GuestMemory,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<MmioTransport, MmioError> {
        let (device_type, avail_features, sizes) = {
            let d = lock(&device);
            (
                d.device_type(),
                d.avail_features(),
                d.queue_max_sizes().to_vec(),
            )
        };
        if sizes.is_empty() {
            return Err(MmioError::NoQueues);
        }
        if avail_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(MmioError::NotModern);
        }
        let queues = Self::fresh_queues(&sizes)?;
        let queue_evts = sizes
            .iter()
            .map(|_| EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(MmioInterrupt {
                status: AtomicU32::new(0),
                evt: EventFd::new(EFD_NONBLOCK).map_err(MmioError::EventFd)?,
                external_vring: AtomicBool::new(false),
            }),
            queues,
            queue_evts,
            device_type,
            avail_features,
            acked_features: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        })
    }

    fn fresh_queues(sizes: &[u16]) -> Result<Vec<Queue>, MmioError> {
        sizes
            .iter()
            .enumerate()
            .map(|(index, &size)| {
                Queue::new(size).map_err(|_| MmioError::QueueSize { index, size })
            })
            .collect()
    }

    /// The per-queue notification eventfds (for KVM ioeventfds on QueueNotify, datamatch = index).
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The interrupt (its eventfd is the device's irqfd).
    pub fn interrupt(&self) -> &Arc<MmioInterrupt> {
        &self.interrupt
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    pub fn is_activated(&self) -> bool {
        self.activated
    }

    /// The transport's and its device's state, for a snapshot (the vCPUs paused; called on
    /// the event loop, which owns the device).
    pub fn save_state(&self) -> Result<TransportState, String> {
        let active_queues = if self.activated {
            match lock(&self.device).queue_states() {
                Ok(Some(q)) => Some(q.into_iter().map(QueueSnapshot::from).collect()),
                Ok(None) => {
                    return Err(format!(
                        "device type {} is active but holds no queues",
                        self.device_type
                    ))
                }
                Err(e) => return Err(format!("device type {}: {e}", self.device_type)),
            }
        } else {
            None
        };
        Ok(TransportState {
            device_type: self.device_type,
            avail_features: self.avail_features,
            acked_features: self.acked_features,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            queue_sel: self.queue_sel,
            status: self.status,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues: self.queues.iter().map(QueueSnapshot::of).collect(),
            active_queues,
        })
    }

    /// Puts a new transport (and its new device) where `s` was: the same kind of device
    /// offering the same features, the driver's registers, and, if it was active, the device
    /// activated with the saved queues. Once the vCPUs have their state too, `resume` tells
    /// the device.
    pub fn restore_state(&mut self, s: &TransportState) -> Result<(), String> {
        if s.device_type != self.device_type || s.avail_features != self.avail_features {
            return Err(format!(
                "the snapshot has device type {} offering {:#x} here, this VM device type {} \
                 offering {:#x}",
                s.device_type, s.avail_features, self.device_type, self.avail_features
            ));
        }
        if s.queues.len() != self.queues.len()
            || s.queues
                .iter()
                .zip(&self.queues)
                .any(|(a, b)| a.max_size != b.max_size())
        {
            return Err(format!(
                "device type {}: the snapshot's queues differ in number or size",
                self.device_type
            ));
        }
        if s.acked_features & !s.avail_features != 0 {
            return Err(format!(
                "device type {}: acknowledged features {:#x} were never offered",
                self.device_type, s.acked_features
            ));
        }
        self.queues = s
            .queues
            .iter()
            .map(QueueSnapshot::to_queue)
            .collect::<Result<_, _>>()?;
        self.acked_features = s.acked_features;
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.queue_sel = s.queue_sel;
        self.status = s.status;
        self.config_generation = s.config_generation;
        self.interrupt
            .status
            .store(s.interrupt_status, Ordering::SeqCst);
        let Some(active) = &s.active_queues else {
            if s.status & STATUS_FEATURES_OK != 0 {
                lock(&self.device).set_acked_features(s.acked_features);
            }
            return Ok(());
        };
        if active.len() != self.queues.len() {
            return Err(format!(
                "device type {}: {} active queues saved, {} expected",
                self.device_type,
                active.len(),
                self.queues.len()
            ));
        }
        let queues = active
            .iter()
            .map(QueueSnapshot::to_queue)
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(i) = queues.iter().position(|q| !q.is_valid(&self.mem)) {
            return Err(format!(
                "device type {}: saved queue {i} does not lie in guest memory",
                self.device_type
            ));
        }
        let evts = self
            .queue_evts
            .iter()
            .map(|e| e.try_clone())
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| format!("cannot clone queue eventfds: {e}"))?;
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        {
            let mut d = lock(&self.device);
            d.set_acked_features(s.acked_features);
            d.activate(self.mem.clone(), interrupt, queues, evts)
                .map_err(|e| format!("device type {}: {e}", self.device_type))?;
        }
        self.activated = true;
        Ok(())
    }

    /// After the jail (see [`VirtioDevice::after_jail`]).
    pub fn after_jail(&mut self) -> Result<(), String> {
        lock(&self.device)
            .after_jail()
            .map_err(|e| format!("device type {}: {e}", self.device_type))
    }

    /// After a restore, once the vCPUs and interrupt controllers have their state (an
    /// interrupt raised before would be lost with the LAPIC state set over it): the device is
    /// told it was restored, and looks at each queue once (a notification may have been
    /// pending when the snapshot was taken).
    pub fn resume(&mut self) -> Result<(), String> {
        if !self.activated {
            return Ok(());
        }
        lock(&self.device).restored();
        for evt in &self.queue_evts {
            evt.write(1)
                .map_err(|e| format!("cannot notify a restored queue: {e}"))?;
        }
        Ok(())
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK, while the selected
    /// queue is not ready.
    fn queue_config_allowed(&self) -> bool {
        self.status & (STATUS_FEATURES_OK | STATUS_DRIVER_OK | STATUS_FAILED) == STATUS_FEATURES_OK
            && self
                .queues
                .get(self.queue_sel as usize)
                .is_some_and(|q| !q.ready())
    }

    fn update_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        if self.queue_config_allowed() {
            if let Some(q) = self.selected_queue() {
                f(q);
            }
        } else {
            tracing::debug!(
                "virtio-mmio: queue register write ignored in status {:#x}",
                self.status
            );
        }
    }

    fn reset(&mut self) {
        let mut status = 0;
        if self.activated && !lock(&self.device).reset() {
            tracing::warn!(
                "virtio-mmio: device type {} cannot be reset",
                self.device_type
            );
            status = STATUS_NEEDS_RESET;
        }
        self.activated = false;
        let sizes: Vec<u16> = self.queues.iter().map(|q| q.max_size()).collect();
        // The sizes were validated when the transport was created.
        if let Ok(q) = Self::fresh_queues(&sizes) {
            self.queues = q;
        }
        self.acked_features = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.queue_sel = 0;
        self.interrupt.status.store(0, Ordering::SeqCst);
        self.interrupt.external_vring.store(false, Ordering::SeqCst);
        self.status = status;
    }

    fn needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
        if let Err(e) = self.interrupt.signal_config_change() {
            tracing::warn!("virtio-mmio: cannot signal the guest: {e}");
        }
    }

    fn activate(&mut self) -> bool {
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() || !q.is_valid(&self.mem) {
                tracing::warn!(
                    "virtio-mmio: device type {}: queue {i} is not ready or not inside guest \
                     memory at DRIVER_OK",
                    self.device_type
                );
                return false;
            }
        }
        let event_idx = self.acked_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let queues = match self
            .queues
            .iter()
            .map(|q| copy_queue(q, event_idx))
            .collect::<Option<Vec<_>>>()
        {
            Some(q) => q,
            None => return false,
        };
        let evts = match self
            .queue_evts
            .iter()
            .map(|e| e.try_clone())
            .collect::<std::io::Result<Vec<_>>>()
        {
            Ok(e) => e,
            Err(e) => {
                tracing::error!("virtio-mmio: cannot clone queue eventfds: {e}");
                return false;
            }
        };
        let interrupt: Arc<dyn VirtioInterrupt> = self.interrupt.clone();
        match lock(&self.device).activate(self.mem.clone(), interrupt, queues, evts) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    "virtio-mmio: device type {} failed to activate: {e}",
                    self.device_type
                );
                false
            }
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (other than by resetting).
        if self.status & !value & !STATUS_NEEDS_RESET != 0 {
            tracing::debug!(
                "virtio-mmio: status {:#x} -> {value:#x} ignored",
                self.status
            );
            return;
        }
        let added = value & !self.status;
        let mut new = self.status | (added & (STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FAILED));
        if added & STATUS_FEATURES_OK != 0 {
            let ok = new & STATUS_DRIVER != 0
                && self.acked_features & !self.avail_features == 0
                && self.acked_features & VIRTIO_F_VERSION_1 != 0;
            if ok {
                lock(&self.device).set_acked_features(self.acked_features);
                new |= STATUS_FEATURES_OK;
            } else {
                tracing::warn!(
                    "virtio-mmio: device type {}: driver features {:#x} refused (offered {:#x})",
                    self.device_type,
                    self.acked_features,
                    self.avail_features
                );
            }
        }
        self.status = new;
        if added & STATUS_DRIVER_OK != 0 && !self.activated {
            if new & STATUS_FEATURES_OK == 0 {
                return;
            }
            if self.activate() {
                self.activated = true;
                self.status |= STATUS_DRIVER_OK;
            } else {
                self.needs_reset();
            }
        }
    }

    fn read_reg(&mut self, offset: u64) -> u32 {
        match offset {
            REG_MAGIC_VALUE => MMIO_MAGIC_VALUE,
            REG_VERSION => MMIO_VERSION,
            REG_DEVICE_ID => self.device_type,
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.avail_features as u32,
                1 => (self.avail_features >> 32) as u32,
                _ => 0,
            },
            REG_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            REG_QUEUE_READY => self
                .queues
                .get(self.queue_sel as usize)
                .map_or(0, |q| u32::from(q.ready())),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status,
            REG_CONFIG_GENERATION => self.config_generation,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, v: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            REG_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            REG_DRIVER_FEATURES => {
                if self.status & (STATUS_DRIVER | STATUS_FEATURES_OK) != STATUS_DRIVER {
                    tracing::debug!("virtio-mmio: driver features write ignored");
                    return;
                }
                match self.driver_features_sel {
                    0 => self.acked_features = (self.acked_features & !0xffff_ffff) | u64::from(v),
                    1 => {
                        self.acked_features =
                            (self.acked_features & 0xffff_ffff) | (u64::from(v) << 32)
                    }
                    _ => {}
                }
            }
            REG_QUEUE_SEL => self.queue_sel = v,
            REG_QUEUE_NUM => match u16::try_from(v) {
                Ok(size) => self.update_queue(|q| q.set_size(size)),
                Err(_) => tracing::debug!("virtio-mmio: queue size {v} ignored"),
            },
            REG_QUEUE_READY => {
                if v == 1 {
                    self.update_queue(|q| q.set_ready(true));
                } else if v == 0 && self.status & STATUS_DRIVER_OK == 0 {
                    if let Some(q) = self.selected_queue() {
                        q.set_ready(false);
                    }
                }
            }
            REG_QUEUE_NOTIFY => match self.queue_evts.get(v as usize) {
                Some(evt) => {
                    if let Err(e) = evt.write(1) {
                        tracing::warn!("virtio-mmio: cannot notify queue {v}: {e}");
                    }
                }
                None => tracing::debug!("virtio-mmio: notify for queue {v} ignored"),
            },
            REG_INTERRUPT_ACK => {
                self.interrupt.status.fetch_and(!v, Ordering::SeqCst);
            }
            REG_STATUS => self.set_status(v),
            REG_QUEUE_DESC_LOW => self.update_queue(|q| q.set_desc_table_address(Some(v), None)),
            REG_QUEUE_DESC_HIGH => self.update_queue(|q| q.set_desc_table_address(None, Some(v))),
            REG_QUEUE_DRIVER_LOW => self.update_queue(|q| q.set_avail_ring_address(Some(v), None)),
            REG_QUEUE_DRIVER_HIGH => self.update_queue(|q| q.set_avail_ring_address(None, Some(v))),
            REG_QUEUE_DEVICE_LOW => self.update_queue(|q| q.set_used_ring_address(Some(v), None)),
            REG_QUEUE_DEVICE_HIGH => self.update_queue(|q| q.set_used_ring_address(None, Some(v))),
            _ => tracing::debug!("virtio-mmio: write to register {offset:#x} ignored"),
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= REG_CONFIG {
            if offset < MMIO_WINDOW_SIZE {
                lock(&self.device).read_config(offset - REG_CONFIG, data);
            }
            return;
        }
        if data.len() != 4 || !offset.is_multiple_of(4) {
            tracing::debug!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            return;
        }
        let v = self.read_reg(offset);
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            if offset < MMIO_WINDOW_SIZE {
                lock(&self.device).write_config(offset - REG_CONFIG, data);
            }
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            tracing::debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            );
            return;
        };
        if !offset.is_multiple_of(4) {
            return;
        }
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

#[cfg(test)]
mod tests {
    use super::super::ActivateError;
    use super::*;
    use vm_memory::{GuestAddress, GuestMemoryMmap};

    #[derive(Default)]
    struct DummyState {
        invalid_queue_at_activation: bool,
        acked: u64,
        activated: Option<(usize, usize)>,
        resets: usize,
        config: [u8; 8],
        interrupt: Option<Arc<dyn VirtioInterrupt>>,
        evts: Vec<EventFd>,
        fail_activate: bool,
    }

    struct Dummy(Arc<Mutex<DummyState>>);

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 32]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX | 0b101
        }
        fn set_acked_features(&mut self, features: u64) {
            self.0.lock().unwrap().acked = features;
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            let s = self.0.lock().unwrap();
            if let Some(end) = offset.checked_add(data.len() as u64) {
                if end <= 8 {
                    data.copy_from_slice(&s.config[offset as usize..end as usize]);
                }
            }
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            let mut s = self.0.lock().unwrap();
            if let Some(end) = offset.checked_add(data.len() as u64) {
                if end <= 8 {
                    s.config[offset as usize..end as usize].copy_from_slice(data);
                }
            }
        }
        fn activate(
            &mut self,
            mem: GuestMemory,
            interrupt: Arc<dyn VirtioInterrupt>,
            queues: Vec<Queue>,
            queue_evts: Vec<EventFd>,
        ) -> Result<(), ActivateError> {
            let mut s = self.0.lock().unwrap();
            if queues.len() != 2 || !queues.iter().all(|q| q.ready() && q.is_valid(&mem)) {
                s.invalid_queue_at_activation = true;
            }
            if s.fail_activate {
                return Err(ActivateError::Device("nope".into()));
            }
            s.activated = Some((queues.len(), queue_evts.len()));
            s.interrupt = Some(interrupt);
            s.evts = queue_evts;
            Ok(())
        }
        fn reset(&mut self) -> bool {
            let mut s = self.0.lock().unwrap();
            s.resets += 1;
            s.activated = None;
            true
        }
    }

    const MEM: usize = 0x10_0000;

    fn transport() -> (MmioTransport, Arc<Mutex<DummyState>>) {
        let state = Arc::new(Mutex::new(DummyState::default()));
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
        let dev: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(Dummy(state.clone())));
        (MmioTransport::new(mem, dev).unwrap(), state)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    /// Drives the transport like Linux's virtio_mmio driver up to FEATURES_OK.
    fn negotiate(t: &mut MmioTransport) {
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 0);
        w(t, REG_DRIVER_FEATURES, 0b101);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, 1);
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport, sel: u32, base: u64) {
        w(t, REG_QUEUE_SEL, sel);
        w(t, REG_QUEUE_NUM, 8);
        w(t, REG_QUEUE_DESC_LOW, base as u32);
        w(t, REG_QUEUE_DESC_HIGH, 0);
        w(t, REG_QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        w(t, REG_QUEUE_DRIVER_HIGH, 0);
        w(t, REG_QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        w(t, REG_QUEUE_DEVICE_HIGH, 0);
        w(t, REG_QUEUE_READY, 1);
    }

    const ALL_OK: u32 = STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK;

    #[test]
    fn identification_registers() {
        let (mut t, _) = transport();
        assert_eq!(r(&mut t, REG_MAGIC_VALUE), MMIO_MAGIC_VALUE);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 42);
        assert_eq!(r(&mut t, REG_VENDOR_ID), VENDOR_ID);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 0);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), (1 << 29) | 0b101);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 7);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 0);
        w(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 32);
        w(&mut t, REG_QUEUE_SEL, 2);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
    }

    /// A device served by the host kernel (vhost-net) raises used-queue interrupts through
    /// the irqfd alone: the status reads as INT_VRING whatever the driver acks, until reset.
    #[test]
    fn an_external_used_queue_irqfd_keeps_the_vring_bit_until_reset() {
        let (mut t, state) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x2_0000);
        w(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
        let irq = state.lock().unwrap().interrupt.clone().unwrap();
        let call = irq.used_queue_irqfd().unwrap();
        // What the kernel does: writes the eventfd, never the status.
        call.write(1).unwrap();
        assert_eq!(t.interrupt().eventfd().read().unwrap(), 1);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_VRING);
        w(&mut t, REG_INTERRUPT_ACK, INT_VRING);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_VRING);
        // A config interrupt still shows, and its ack clears it.
        irq.signal_config_change().unwrap();
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_VRING | INT_CONFIG);
        w(&mut t, REG_INTERRUPT_ACK, INT_CONFIG);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_VRING);
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn full_negotiation_activates_the_device() {
        let (mut t, state) = transport();
        negotiate(&mut t);
        assert_eq!(
            r(&mut t, REG_STATUS) & STATUS_FEATURES_OK,
            STATUS_FEATURES_OK
        );
        assert_eq!(state.lock().unwrap().acked, VIRTIO_F_VERSION_1 | 0b101);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x2_0000);
        w(&mut t, REG_QUEUE_SEL, 0);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 1);
        w(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(r(&mut t, REG_STATUS), ALL_OK);
        assert!(t.is_activated());
        assert_eq!(state.lock().unwrap().activated, Some((2, 2)));

        // A notification that reaches the transport is forwarded to the queue's eventfd.
        w(&mut t, REG_QUEUE_NOTIFY, 1);
        assert_eq!(state.lock().unwrap().evts[1].read().unwrap(), 1);
        w(&mut t, REG_QUEUE_NOTIFY, 99); // no such queue: ignored

        // The device's interrupt sets the status register; the driver acks it.
        let irq = state.lock().unwrap().interrupt.clone().unwrap();
        irq.signal_used_queue().unwrap();
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_VRING);
        assert_eq!(t.interrupt().eventfd().read().unwrap(), 1);
        w(&mut t, REG_INTERRUPT_ACK, INT_VRING);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), 0);

        // Queue configuration is frozen after DRIVER_OK.
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_READY, 0);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 1);

        // Reset.
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        assert_eq!(state.lock().unwrap().resets, 1);
        assert!(!t.is_activated());
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let (mut t, state) = transport();
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DRIVER_FEATURES, 0b1);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        assert_eq!(state.lock().unwrap().acked, 0);
    }

    #[test]
    fn features_not_offered_are_refused() {
        let (mut t, _) = transport();
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DRIVER_FEATURES, 0b10); // bit 1 is not offered
        w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        w(&mut t, REG_DRIVER_FEATURES, 1);
        w(
            &mut t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn driver_features_ignored_outside_negotiation() {
        let (mut t, state) = transport();
        // Before DRIVER.
        w(&mut t, REG_DRIVER_FEATURES, 0b101);
        negotiate(&mut t);
        // After FEATURES_OK: frozen.
        w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        w(&mut t, REG_DRIVER_FEATURES, 0);
        assert_eq!(state.lock().unwrap().acked, VIRTIO_F_VERSION_1 | 0b101);
    }

    #[test]
    fn queue_config_needs_features_ok() {
        let (mut t, _) = transport();
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        setup_queue(&mut t, 0, 0x1_0000);
        assert_eq!(r(&mut t, REG_QUEUE_READY), 0);
    }

    #[test]
    fn driver_ok_with_queue_outside_memory_needs_reset() {
        let (mut t, state) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, MEM as u64 - 0x1000); // rings run past the end of RAM
        w(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_DRIVER_OK, 0);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        assert_eq!(r(&mut t, REG_INTERRUPT_STATUS), INT_CONFIG);
        assert!(state.lock().unwrap().activated.is_none());
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
    }

    #[test]
    fn driver_ok_with_an_unready_queue_needs_reset() {
        let (mut t, state) = transport();
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x1_0000); // queue 1 never set up
        w(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_DRIVER_OK, 0);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        assert!(state.lock().unwrap().activated.is_none());
    }

    #[test]
    fn failing_activation_needs_reset() {
        let (mut t, state) = transport();
        state.lock().unwrap().fail_activate = true;
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x2_0000);
        w(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_DRIVER_OK, 0);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        assert!(!t.is_activated());
        // The driver resets and tries again; this time the device accepts.
        w(&mut t, REG_STATUS, 0);
        state.lock().unwrap().fail_activate = false;
        negotiate(&mut t);
        setup_queue(&mut t, 0, 0x1_0000);
        setup_queue(&mut t, 1, 0x2_0000);
        w(&mut t, REG_STATUS, ALL_OK);
        assert_eq!(r(&mut t, REG_STATUS), ALL_OK);
    }

    #[test]
    fn invalid_queue_size_is_not_accepted() {
        let (mut t, _) = transport();
        negotiate(&mut t);
        w(&mut t, REG_QUEUE_SEL, 0);
        w(&mut t, REG_QUEUE_NUM, 3); // not a power of two
        w(&mut t, REG_QUEUE_NUM, 64); // above the maximum
        w(&mut t, REG_QUEUE_NUM, 0x1_0000); // not even a u16
        assert_eq!(t.queues[0].size(), 16);
    }

    #[test]
    fn status_bits_cannot_be_cleared_without_reset() {
        let (mut t, _) = transport();
        negotiate(&mut t);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        assert_eq!(
            r(&mut t, REG_STATUS),
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK
        );
    }

    #[test]
    fn config_space_any_size_and_bounds() {
        let (mut t, state) = transport();
        t.write(REG_CONFIG + 2, &[0xaa, 0xbb]);
        assert_eq!(state.lock().unwrap().config[2..4], [0xaa, 0xbb]);
        let mut b = [0u8; 2];
        t.read(REG_CONFIG + 2, &mut b);
        assert_eq!(b, [0xaa, 0xbb]);
        let mut one = [0x55u8];
        t.read(REG_CONFIG + 0xeff, &mut one);
        assert_eq!(one, [0]);
        t.read(MMIO_WINDOW_SIZE + 10, &mut one);
        t.write(u64::MAX, &[1, 2, 3]);
        t.read(u64::MAX, &mut b);
    }

    #[test]
    fn odd_sized_and_unaligned_register_accesses_are_ignored() {
        let (mut t, _) = transport();
        for len in [1usize, 2, 3, 5, 8] {
            let mut b = vec![0xffu8; len];
            t.read(REG_MAGIC_VALUE, &mut b);
            assert!(b.iter().all(|x| *x == 0), "{len}");
            t.write(REG_STATUS, &vec![1u8; len]);
        }
        assert_eq!(r(&mut t, REG_STATUS), 0);
        t.write(REG_STATUS + 1, &1u32.to_le_bytes());
        assert_eq!(r(&mut t, REG_STATUS), 0);
        let mut b = [0u8; 4];
        t.read(REG_MAGIC_VALUE + 1, &mut b);
        assert_eq!(b, [0; 4]);
        // Every offset in the window, every size: no panic.
        for off in (0..MMIO_WINDOW_SIZE).step_by(1) {
            for len in [1usize, 2, 4, 8] {
                let mut b = vec![0u8; len];
                t.read(off, &mut b);
            }
        }
    }

    /// A hostile driver: rounds of partial or complete negotiation with queue addresses that
    /// may run outside guest memory, interleaved with random registers, sizes and values, then
    /// DRIVER_OK. Nothing panics, and the device is only ever activated with every queue ready
    /// and inside guest memory.
    #[test]
    fn random_register_storm() {
        let (mut t, state) = transport();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let regs = [
            REG_STATUS,
            REG_QUEUE_SEL,
            REG_QUEUE_NUM,
            REG_QUEUE_READY,
            REG_QUEUE_DESC_LOW,
            REG_QUEUE_DESC_HIGH,
            REG_QUEUE_DRIVER_LOW,
            REG_QUEUE_DEVICE_LOW,
            REG_DRIVER_FEATURES,
            REG_DRIVER_FEATURES_SEL,
            REG_QUEUE_NOTIFY,
            REG_INTERRUPT_ACK,
        ];
        let (mut activations, mut refusals) = (0, 0);
        for _ in 0..5_000 {
            w(&mut t, REG_STATUS, 0);
            if next() % 4 != 0 {
                negotiate(&mut t);
                for q in 0..2 {
                    let base = match next() % 4 {
                        0 => MEM as u64 - 0x1000 * (next() % 4),
                        1 => next() & 0xffff_f000,
                        _ => 0x1_0000 + 0x1_0000 * q as u64,
                    };
                    if next() % 8 != 0 {
                        setup_queue(&mut t, q, base);
                    }
                }
            }
            for _ in 0..(next() % 8) {
                let r = next();
                let offset = if r & 3 == 0 {
                    (r >> 8) & 0x1fff
                } else {
                    regs[(r >> 8) as usize % regs.len()]
                };
                let len = [1usize, 2, 4, 4, 4, 8][(r >> 32) as usize % 6];
                let value = match (r >> 40) & 3 {
                    0 => (next() & 0xff) as u32,
                    1 => 1,
                    _ => next() as u32,
                };
                let mut bytes = value.to_le_bytes().to_vec();
                bytes.resize(len, 0);
                if (r >> 48) & 1 == 0 {
                    t.write(offset, &bytes);
                } else {
                    t.read(offset, &mut bytes);
                }
            }
            w(&mut t, REG_STATUS, ALL_OK);
            if t.is_activated() {
                activations += 1;
            } else {
                refusals += 1;
            }
        }
        assert!(!state.lock().unwrap().invalid_queue_at_activation);
        // Both outcomes were exercised.
        assert!(
            activations > 100 && refusals > 100,
            "{activations} / {refusals}"
        );
    }

    #[test]
    fn transport_rejects_bad_devices() {
        use crate::devices::virtio::test_utils::NullDevice;
        let mem = || GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let mk = |q: &[u16], features| -> Arc<Mutex<dyn VirtioDevice>> {
            let mut d = NullDevice::new(q);
            d.features = features;
            Arc::new(Mutex::new(d))
        };
        assert!(matches!(
            MmioTransport::new(mem(), mk(&[], VIRTIO_F_VERSION_1)),
            Err(MmioError::NoQueues)
        ));
        assert!(matches!(
            MmioTransport::new(mem(), mk(&[3], VIRTIO_F_VERSION_1)),
            Err(MmioError::QueueSize { .. })
        ));
        assert!(matches!(
            MmioTransport::new(mem(), mk(&[8], 0)),
            Err(MmioError::NotModern)
        ));
    }
}
