//! virtio-net whose frames the host kernel's vhost-net moves (`/dev/vhost-net`, through the
//! rust-vmm `vhost` crate's ioctl wrappers).
//!
//! The guest sees the same device as [`super::Net`]: the same features, config space and
//! queues (a snapshot taken on one restores on the other). What differs is who serves the
//! queues. hull-vmm opens `/dev/vhost-net` and the tap before it confines itself and checks
//! what the kernel supports. Only once it is confined ([`VirtioDevice::after_jail`], on the
//! main thread before any guest instruction and before the event loop's seccomp filter, after
//! that thread gave up its capabilities) does it make itself the owner and give the kernel the
//! guest's memory map. The owner's worker is made then: before Linux 6.4 a kernel thread,
//! with kthreadd's credentials as every kernel thread has, attached to hull-vmm's cgroups;
//! since 6.4 a thread of hull-vmm itself, with the jail's root, namespaces and credentials
//! (no capability). It never runs user code. On activation (on the vCPU thread that wrote DRIVER_OK; for a restore, the
//! activation made on the main thread before the jail waits for `after_jail`, which also comes
//! after the interrupt controllers have their state) it hands the kernel each queue's rings
//! and position, the queue's ioeventfd as the kick and the device's irqfd as the call, and the
//! tap as the backend. From then on a guest's kick wakes the kernel's worker directly and its
//! interrupt goes straight to KVM: no frame passes through hull-vmm's event loop, which has
//! nothing of this device to watch.
//!
//! The kernel cannot set the virtio-mmio interrupt status register, so while the device is
//! active the transport reports the used-queue bit on every read
//! ([`VirtioInterrupt::used_queue_irqfd`]).
//!
//! What the guest controls and how it is bounded: the ring addresses are checked to lie each
//! inside one region of guest memory (the kernel is given host addresses for them, and checks
//! only that they are user addresses; a ring that ran past its region would reach hull-vmm's
//! own memory). Descriptors are translated by the kernel through the memory table, which holds
//! only guest memory. The frames' vnet header is the tap's (12 bytes, as for `Net`), so the
//! kernel copies frames without interpreting more of them than it does for any tap user.
//!
//! A device on vhost-net cannot be snapshotted while active: its queues' positions are in the
//! kernel (templates are made on hull-vmm's own device and restored onto this one).

use std::sync::Arc;

use vhost::net::VhostNet as _;
use vhost::vhost_kern::net::Net as KernNet;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData, VHOST_MAX_MEMORY_REGIONS};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::{VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_MRG_RXBUF};
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, GuestAddress, GuestMemory as _, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::device::features_and_config;
use super::tap::{offload_flags, Tap, TapIo};
use super::{NetConfig, NetError, CONFIG_SPACE_SIZE, NET_DEVICE_ID, NUM_QUEUES, QUEUE_SIZE};
use crate::devices::virtio::{
    check_activation, ignore_config_write, read_config_space, ActivateError, GuestMemory,
    VirtioDevice, VirtioInterrupt,
};

/// The ring features the device offers that the kernel's vhost-net must support (the others
/// it offers are between the guest and the tap: checksum and segmentation offloads).
const RING_FEATURES: [u32; 3] = [
    VIRTIO_F_VERSION_1,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_RING_F_EVENT_IDX,
];

/// An activation waiting for [`VirtioDevice::after_jail`] (a restore's, made before the jail).
struct Pending {
    mem: GuestMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_evts: Vec<EventFd>,
}

/// A virtio-net device served by the host kernel's vhost-net.
pub struct VhostNet {
    tap: Tap,
    kern: KernNet<Arc<GuestMemory>>,
    /// What the kernel's vhost-net supports (`VHOST_GET_FEATURES`).
    kern_features: u64,
    /// The guest's memory as the kernel is to see it (`VHOST_SET_MEM_TABLE`, after the jail).
    regions: Vec<VhostUserMemoryRegionInfo>,
    /// Whether this process is the owner yet (after the jail).
    owned: bool,
    pending: Option<Pending>,
    avail_features: u64,
    acked_features: u64,
    config_space: [u8; CONFIG_SPACE_SIZE],
    queue_sizes: [u16; NUM_QUEUES],
    /// Between activation and reset: the queue eventfds the kernel was given as kicks (kept
    /// so they live as long as the kernel may use them).
    active: Option<Vec<EventFd>>,
}

fn vhost_err(what: &'static str) -> impl FnOnce(vhost::Error) -> NetError {
    move |e| NetError::Vhost(what, e.to_string())
}

impl VhostNet {
    /// Opens `/dev/vhost-net`, checks it supports what the device offers, and opens the tap
    /// (the owner and the memory table wait for [`VirtioDevice::after_jail`]). A failure before
    /// the tap is a [`NetError::Vhost`] (the host has no usable vhost-net); the tap's is a
    /// [`NetError::Tap`].
    pub fn new(cfg: &NetConfig, mem: &GuestMemory) -> Result<VhostNet, NetError> {
        cfg.validate()?;
        let kern = KernNet::new(Arc::new(mem.clone())).map_err(vhost_err("open /dev/vhost-net"))?;
        let kern_features = kern
            .get_features()
            .map_err(vhost_err("VHOST_GET_FEATURES"))?;
        let missing: Vec<&str> = RING_FEATURES
            .iter()
            .filter(|&&bit| kern_features & (1u64 << bit) == 0)
            .map(|&bit| feature_name(bit))
            .collect();
        if !missing.is_empty() {
            return Err(NetError::Vhost(
                "VHOST_GET_FEATURES",
                format!("the kernel's vhost-net lacks {}", missing.join(", ")),
            ));
        }
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo {
                guest_phys_addr: r.start_addr().raw_value(),
                memory_size: r.len(),
                userspace_addr: r.as_ptr() as u64,
                mmap_offset: 0,
                mmap_handle: -1,
            })
            .collect();
        if regions.is_empty() || regions.len() > VHOST_MAX_MEMORY_REGIONS {
            return Err(NetError::Vhost(
                "VHOST_SET_MEM_TABLE",
                format!("{} regions of guest memory", regions.len()),
            ));
        }
        let tap = Tap::open(&cfg.tap)?;
        let (avail_features, config_space) = features_and_config(cfg);
        Ok(VhostNet {
            tap,
            kern,
            kern_features,
            regions,
            owned: false,
            pending: None,
            avail_features,
            acked_features: 0,
            config_space,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            active: None,
        })
    }

    /// The tap's name.
    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// Hands the kernel queue `i`: its size, rings, position, kick and call, then the tap.
    fn start_queue(
        &self,
        mem: &GuestMemory,
        i: usize,
        q: &Queue,
        kick: &EventFd,
        call: &EventFd,
    ) -> Result<(), String> {
        let size = q.size();
        for (what, addr, len) in [
            ("descriptor table", q.desc_table(), 16 * u64::from(size)),
            ("avail ring", q.avail_ring(), 6 + 2 * u64::from(size)),
            ("used ring", q.used_ring(), 6 + 8 * u64::from(size)),
        ] {
            if !within_one_region(mem, addr, len) {
                return Err(format!(
                    "queue {i}: the {what} at {addr:#x} ({len} bytes) is not inside one region \
                     of guest memory"
                ));
            }
        }
        let ring = VringConfigData {
            queue_max_size: q.max_size(),
            queue_size: size,
            flags: 0,
            desc_table_addr: q.desc_table(),
            used_ring_addr: q.used_ring(),
            avail_ring_addr: q.avail_ring(),
            log_addr: None,
        };
        let step = |what: &'static str| move |e: vhost::Error| format!("queue {i}: {what}: {e}");
        self.kern
            .set_vring_num(i, size)
            .map_err(step("VHOST_SET_VRING_NUM"))?;
        self.kern
            .set_vring_addr(i, &ring)
            .map_err(step("VHOST_SET_VRING_ADDR"))?;
        self.kern
            .set_vring_base(i, q.next_avail())
            .map_err(step("VHOST_SET_VRING_BASE"))?;
        self.kern
            .set_vring_call(i, call)
            .map_err(step("VHOST_SET_VRING_CALL"))?;
        self.kern
            .set_vring_kick(i, kick)
            .map_err(step("VHOST_SET_VRING_KICK"))?;
        self.kern
            .set_backend(i, Some(self.tap.file()))
            .map_err(step("VHOST_NET_SET_BACKEND"))?;
        Ok(())
    }

    /// Detaches the tap from every queue (what a reset or a failed activation leaves): the
    /// kernel flushes its worker before VHOST_NET_SET_BACKEND returns, and touches the rings no
    /// more without a backend.
    fn stop(&mut self) {
        if self.active.is_some() {
            for i in 0..NUM_QUEUES {
                if let Err(e) = self.kern.set_backend(i, None) {
                    tracing::warn!(tap = %self.tap.name(), queue = i, error = %e, "vhost-net: cannot detach the tap");
                }
            }
        }
        self.active = None;
        self.pending = None;
    }

    /// Hands the kernel the activated queues (see the module documentation).
    fn start(&mut self, p: Pending) -> Result<(), ActivateError> {
        let name = self.tap.name().to_string();
        let fail = |e: String| ActivateError::Device(format!("vhost-net on tap `{name}`: {e}"));
        let offloads = offload_flags(self.acked_features);
        self.tap
            .set_offload(offloads)
            .map_err(|e| fail(format!("TUNSETOFFLOAD {offloads:#x}: {e}")))?;
        // Ring features only: the offloads are the tap's. No VHOST_NET_F_VIRTIO_NET_HDR: the
        // tap reads and writes the 12-byte header itself.
        self.kern
            .set_features(self.acked_features & self.kern_features)
            .map_err(|e| fail(format!("VHOST_SET_FEATURES: {e}")))?;
        let call = p
            .interrupt
            .used_queue_irqfd()
            .map_err(|e| fail(format!("the device's irqfd: {e}")))?;
        // From the first queue handed over, `stop` detaches what was.
        self.active = Some(Vec::new());
        for (i, (q, kick)) in p.queues.iter().zip(&p.queue_evts).enumerate() {
            if let Err(e) = self.start_queue(&p.mem, i, q, kick, &call) {
                self.stop();
                return Err(fail(e));
            }
        }
        self.active = Some(p.queue_evts);
        Ok(())
    }
}

/// Whether `[addr, addr + len)` lies inside one region of `mem`.
fn within_one_region(mem: &GuestMemory, addr: u64, len: u64) -> bool {
    let Some(region) = mem.find_region(GuestAddress(addr)) else {
        return false;
    };
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let region_end = region.start_addr().raw_value().saturating_add(region.len());
    end <= region_end
}

fn feature_name(bit: u32) -> &'static str {
    match bit {
        VIRTIO_F_VERSION_1 => "VIRTIO_F_VERSION_1",
        VIRTIO_NET_F_MRG_RXBUF => "VIRTIO_NET_F_MRG_RXBUF",
        VIRTIO_RING_F_EVENT_IDX => "VIRTIO_RING_F_EVENT_IDX",
        _ => "a feature",
    }
}

impl VirtioDevice for VhostNet {
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
        self.stop();
        let p = Pending {
            mem,
            interrupt,
            queues,
            queue_evts,
        };
        if !self.owned {
            // A restore, before the jail: the kernel gets the queues in `after_jail`.
            self.pending = Some(p);
            return Ok(());
        }
        self.start(p)
    }

    fn after_jail(&mut self) -> Result<(), String> {
        let name = self.tap.name().to_string();
        self.kern
            .set_owner()
            .map_err(|e| format!("vhost-net on tap `{name}`: VHOST_SET_OWNER: {e}"))?;
        self.kern
            .set_mem_table(&self.regions)
            .map_err(|e| format!("vhost-net on tap `{name}`: VHOST_SET_MEM_TABLE: {e}"))?;
        self.owned = true;
        if let Some(p) = self.pending.take() {
            let irq = p.interrupt.clone();
            self.start(p).map_err(|e| e.to_string())?;
            // The restored guest may wait for an interrupt the template's device owed it, or
            // one the kernel raised while the queues were handed over: one more (the driver
            // finds nothing new if there is nothing; the used-queue bit stays set).
            if let Err(e) = irq.signal_used_queue() {
                tracing::warn!(tap = %name, error = %e, "vhost-net: cannot interrupt the restored guest");
            }
        }
        Ok(())
    }

    fn reset(&mut self) -> bool {
        self.stop();
        if self.acked_features & (1u64 << VIRTIO_NET_F_GUEST_CSUM) != 0 {
            if let Err(e) = self.tap.set_offload(0) {
                tracing::warn!(tap = %self.tap.name(), error = %e, "vhost-net: cannot turn the tap's offloads off");
            }
        }
        self.acked_features = 0;
        true
    }

    fn queue_states(&self) -> Result<Option<Vec<virtio_queue::QueueState>>, String> {
        if self.active.is_some() || self.pending.is_some() {
            return Err(format!(
                "virtio-net on tap `{}` is served by vhost-net, whose queue positions are in the \
                 host kernel: a VM to snapshot uses backend `userspace`",
                self.tap.name()
            ));
        }
        Ok(None)
    }
}

/// vhost-net has nothing for hull-vmm's event loop: kicks, frames and interrupts all stay in
/// the kernel.
impl event_manager::MutEventSubscriber for VhostNet {
    fn init(&mut self, _ops: &mut event_manager::EventOps) {}
    fn process(&mut self, _events: event_manager::Events, _ops: &mut event_manager::EventOps) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ring_must_lie_inside_one_region() {
        let mem = GuestMemory::from_ranges(&[
            (GuestAddress(0), 0x10000),
            (GuestAddress(0x10000), 0x10000),
        ])
        .unwrap();
        assert!(within_one_region(&mem, 0, 0x10000));
        assert!(within_one_region(&mem, 0xf000, 0x1000));
        // Contiguous in the guest, but two mappings in hull-vmm: refused.
        assert!(!within_one_region(&mem, 0xf000, 0x1001));
        assert!(within_one_region(&mem, 0x10000, 0x10000));
        assert!(!within_one_region(&mem, 0x10000, 0x10001));
        assert!(!within_one_region(&mem, 0x20000, 1));
        assert!(!within_one_region(&mem, u64::MAX - 1, 16));
    }
}
