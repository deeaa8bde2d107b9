//! The virtio test harness the device tests share (as Firecracker's
//! `devices/virtio/test_utils.rs`): guest memory, an interrupt line that counts its signals,
//! temporary directories, and [`TestQueue`], a split virtqueue laid out by virtio-queue's
//! `MockSplitQueue` that a test drives as the guest's driver does (descriptors, avail ring, used
//! ring). What a device's driver puts in its buffers stays with that device's tests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::{GuestMemory, VirtioInterrupt};

/// The size of [`test_mem`].
pub(crate) const MEM_SIZE: usize = 16 << 20;

/// 16 MiB of guest memory at guest address 0.
pub(crate) fn test_mem() -> GuestMemory {
    GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// An interrupt line that counts the used-queue signals.
#[derive(Default)]
pub(crate) struct TestIrq(AtomicUsize);

impl TestIrq {
    /// How many times the device signalled a used queue.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl VirtioInterrupt for TestIrq {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A fresh directory, removed on drop. Its path is short (`sun_path` holds 108 bytes, and
/// tests bind Unix sockets in it).
pub(crate) struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("hv-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A descriptor as the driver writes it: (addr, len, flags, next).
pub(crate) type Desc = (u64, u32, u16, u16);

/// One split virtqueue in guest memory, driven by the test as the guest's driver.
///
/// `MockSplitQueue` lays out the descriptor table and the avail ring at `start` and zeroes the
/// rings' indices. It sizes the avail ring in entries, not bytes (virtio-queue 0.17), so its own
/// used ring overlaps the avail ring's upper half; the used ring here follows the avail ring at
/// the size the specification gives it.
#[derive(Clone)]
pub(crate) struct TestQueue {
    pub mem: GuestMemory,
    pub desc: GuestAddress,
    pub avail: GuestAddress,
    pub used: GuestAddress,
    pub size: u16,
}

impl TestQueue {
    pub fn create(mem: &GuestMemory, start: GuestAddress, size: u16) -> TestQueue {
        let mock = MockSplitQueue::create(mem, start, size);
        let avail = mock.avail_addr();
        // flags, idx, ring[size], used_event; the used ring is 4-aligned.
        let used = GuestAddress((avail.0 + 6 + 2 * u64::from(size) + 3) & !3);
        let q = TestQueue {
            mem: mem.clone(),
            desc: mock.desc_table_addr(),
            avail,
            used,
            size,
        };
        q.write(0u16, q.used);
        q.write(0u16, q.used.unchecked_add(2));
        q
    }

    /// The queue as the transport hands it to the device: ready, with this layout.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.set_ready(true);
        let split = |a: GuestAddress| (Some(a.0 as u32), Some((a.0 >> 32) as u32));
        let (lo, hi) = split(self.desc);
        q.set_desc_table_address(lo, hi);
        let (lo, hi) = split(self.avail);
        q.set_avail_ring_address(lo, hi);
        let (lo, hi) = split(self.used);
        q.set_used_ring_address(lo, hi);
        q
    }

    fn write<T: vm_memory::ByteValued>(&self, v: T, at: GuestAddress) {
        self.mem.write_obj(v, at).unwrap();
    }

    fn read<T: vm_memory::ByteValued>(&self, at: GuestAddress) -> T {
        self.mem.read_obj(at).unwrap()
    }

    /// Writes descriptors `(addr, len, flags, next)` at table indices `base..`.
    pub fn set_descs(&self, base: u16, descs: &[Desc]) {
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let d = RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next));
            let index = u64::from(base.wrapping_add(i as u16));
            self.write(d, self.desc.unchecked_add(16 * index));
        }
    }

    /// Writes the chain `descs` at table indices `base..` and makes it available.
    pub fn add_chain(&self, base: u16, descs: &[Desc]) {
        self.set_descs(base, descs);
        self.push_avail(base);
    }

    /// The avail ring's index.
    pub fn avail_idx(&self) -> u16 {
        self.read(self.avail.unchecked_add(2))
    }

    pub fn set_avail_idx(&self, idx: u16) {
        self.write(idx, self.avail.unchecked_add(2));
    }

    /// Makes the chain at descriptor `head` available (whatever `head` is).
    pub fn push_avail(&self, head: u16) {
        let idx = self.avail_idx();
        let slot = u64::from(idx % self.size);
        self.write(head, self.avail.unchecked_add(4 + 2 * slot));
        self.set_avail_idx(idx.wrapping_add(1));
    }

    /// `avail_event` (VIRTIO_RING_F_EVENT_IDX): the avail index past which the device wants a
    /// kick, written by the device at the end of the used ring.
    pub fn avail_event(&self) -> u16 {
        self.read(self.used.unchecked_add(4 + 8 * u64::from(self.size)))
    }

    /// Sets `used_event` (VIRTIO_RING_F_EVENT_IDX): the driver wants an interrupt once the
    /// used index passes it; it lives at the end of the avail ring.
    pub fn set_used_event(&self, idx: u16) {
        self.write(idx, self.avail.unchecked_add(4 + 2 * u64::from(self.size)));
    }

    /// The used ring's index.
    pub fn used_idx(&self) -> u16 {
        self.read(self.used.unchecked_add(2))
    }

    /// Used ring entry `i` (mod the queue size): (id, len).
    pub fn used_elem(&self, i: u16) -> (u32, u32) {
        let at = self.used.unchecked_add(4 + 8 * u64::from(i % self.size));
        (self.read(at), self.read(at.unchecked_add(4)))
    }

    /// The used entries from `*seen` up to the used index; `*seen` moves past them.
    pub fn take_used(&self, seen: &mut u16) -> Vec<(u32, u32)> {
        let idx = self.used_idx();
        let mut out = Vec::new();
        while *seen != idx {
            out.push(self.used_elem(*seen));
            *seen = seen.wrapping_add(1);
        }
        out
    }
}

#[test]
fn the_used_ring_lies_past_the_avail_ring() {
    let mem = test_mem();
    let q = TestQueue::create(&mem, GuestAddress(0x1000), 256);
    assert!(q.queue().is_valid(&mem));
    assert!(q.used.0 >= q.avail.0 + 6 + 2 * 256);
    for _ in 0..256 {
        q.push_avail(0xffff);
    }
    assert_eq!(q.avail_idx(), 256);
    assert_eq!((q.used_idx(), q.used_elem(255)), (0, (0, 0)));
    assert!(q.take_used(&mut 0).is_empty());
}

/// A device that does nothing, with the given queue sizes and offered features: what transport
/// and device-manager tests put behind a transport.
pub(crate) struct NullDevice {
    pub queues: Vec<u16>,
    pub features: u64,
}

impl NullDevice {
    /// Queues of `sizes`, offering VIRTIO_F_VERSION_1 only.
    pub(crate) fn new(sizes: &[u16]) -> NullDevice {
        NullDevice {
            queues: sizes.to_vec(),
            features: 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1,
        }
    }
}

impl super::VirtioDevice for NullDevice {
    fn device_type(&self) -> u32 {
        42
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.queues
    }
    fn avail_features(&self) -> u64 {
        self.features
    }
    fn set_acked_features(&mut self, _: u64) {}
    fn read_config(&self, _: u64, _: &mut [u8]) {}
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(
        &mut self,
        _: GuestMemory,
        _: std::sync::Arc<dyn VirtioInterrupt>,
        _: Vec<Queue>,
        _: Vec<vmm_sys_util::eventfd::EventFd>,
    ) -> Result<(), super::ActivateError> {
        Ok(())
    }
    fn reset(&mut self) -> bool {
        true
    }
}

impl event_manager::MutEventSubscriber for NullDevice {
    fn process(&mut self, _: event_manager::Events, _: &mut event_manager::EventOps) {}
    fn init(&mut self, _: &mut event_manager::EventOps) {}
}
