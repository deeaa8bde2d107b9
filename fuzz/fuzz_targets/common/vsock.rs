//! A vsock device with a fresh socket, activated on guest memory the target lays out, in a real
//! event loop (as in the VMM).

#![allow(dead_code)] // each target uses part of it

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use hull_vmm::devices::virtio::vsock::Vsock;
use hull_vmm::devices::virtio::{GuestMemory, VirtioDevice, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const MEM_SIZE: usize = 0x1_0000;
pub const QSIZE: u16 = 16;
pub const GUEST_CID: u64 = 3;
pub const HDR_LEN: u64 = 44;

pub struct NoIrq;
impl VirtioInterrupt for NoIrq {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

/// VIRTIO_RING_F_EVENT_IDX.
pub const EVENT_IDX: u64 = 1 << 29;

pub fn queue(desc: u64, avail: u64, used: u64) -> Queue {
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    q
}

pub fn write_desc(
    mem: &GuestMemory,
    table: u64,
    i: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let a = GuestAddress(table + 16 * u64::from(i));
    mem.write_obj(addr, a).unwrap();
    mem.write_obj(len, GuestAddress(a.0 + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(a.0 + 12)).unwrap();
    mem.write_obj(next, GuestAddress(a.0 + 14)).unwrap();
}

/// Makes `n` well-formed RX buffers (header + 1 KiB) available on the queue at `table`
/// (avail ring at table + 0x100), buffers at `bufs`.
pub fn sane_rx(mem: &GuestMemory, table: u64, bufs: u64, n: u16) {
    for i in 0..n {
        let hdr = bufs + u64::from(i) * 0x500;
        write_desc(mem, table, 2 * i, hdr, HDR_LEN as u32, 1 | 2, 2 * i + 1);
        write_desc(mem, table, 2 * i + 1, hdr + 0x100, 1024, 2, 0);
        mem.write_obj(2 * i, GuestAddress(table + 0x104 + 2 * u64::from(i)))
            .unwrap();
    }
    mem.write_obj(n, GuestAddress(table + 0x102)).unwrap();
}

/// A guest packet header (type STREAM).
pub fn header(op: u16, src_port: u32, dst_port: u32, len: u32, flags: u32) -> [u8; 44] {
    let mut h = [0u8; 44];
    h[0..8].copy_from_slice(&GUEST_CID.to_le_bytes());
    h[8..16].copy_from_slice(&2u64.to_le_bytes());
    h[16..20].copy_from_slice(&src_port.to_le_bytes());
    h[20..24].copy_from_slice(&dst_port.to_le_bytes());
    h[24..28].copy_from_slice(&len.to_le_bytes());
    h[28..30].copy_from_slice(&1u16.to_le_bytes());
    h[30..32].copy_from_slice(&op.to_le_bytes());
    h[32..36].copy_from_slice(&flags.to_le_bytes());
    h[36..40].copy_from_slice(&65536u32.to_le_bytes());
    h
}

pub struct Device {
    pub dev: Arc<Mutex<Vsock>>,
    pub em: EventManager<Arc<Mutex<Vsock>>>,
    pub mem: GuestMemory,
    pub uds: PathBuf,
    /// Kicks for the RX, TX and event queues.
    pub kicks: Vec<EventFd>,
}

impl Device {
    /// A fresh device on a fresh socket in `dir`.
    pub fn new(dir: &std::path::Path) -> Device {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let uds = dir.join(format!("v{n}.sock"));
        let dev = Arc::new(Mutex::new(Vsock::new(GUEST_CID, uds.clone()).unwrap()));
        let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        Device {
            dev,
            em,
            mem,
            uds,
            kicks: Vec::new(),
        }
    }

    /// Activates the device with these RX, TX and event queues.
    /// Activates the device with `queues`, in event index mode (EVENT_IDX acknowledged) if
    /// `event_idx`: the targets take it from the input's length, so the fuzzer runs both.
    pub fn activate(&mut self, event_idx: bool, queues: Vec<Queue>) {
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        self.kicks = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        let queues = queues
            .into_iter()
            .map(|mut q| {
                q.set_event_idx(event_idx);
                q
            })
            .collect();
        let mut dev = self.dev.lock().unwrap();
        let mut f = dev.avail_features();
        if !event_idx {
            f &= !EVENT_IDX;
        }
        dev.set_acked_features(f);
        dev.activate(self.mem.clone(), Arc::new(NoIrq), queues, evts)
            .unwrap();
    }

    pub fn run(&mut self, rounds: usize) {
        for _ in 0..rounds {
            let _ = self.em.run_with_timeout(0);
        }
    }

    /// The guest driver resets the device: every connection must be gone.
    pub fn reset(&mut self) {
        assert!(self.dev.lock().unwrap().reset());
        self.run(1);
        assert_eq!(self.dev.lock().unwrap().connection_count(), 0);
    }
}
