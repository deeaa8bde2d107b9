//! Fuzzes the virtio-net device's TX path: the guest's TX descriptor table, avail ring and
//! buffers are the fuzzer's bytes; the device gathers the chains into its frame buffer and
//! writes the frames to a fake tap. Bytes past the guest image, if any, are one frame the tap
//! hands to the device, delivered into a well-formed RX queue (mergeable buffers), so both
//! paths run with every feature acknowledged (EVENT_IDX on odd-length inputs only, so both
//! notification modes run). The device runs in a real event loop, as in the VMM.
//!
//! Guest memory layout (64 KiB):
//!   0x0000..0x8000  fuzzer bytes: TX desc table (16 x 16 bytes) at 0x0, avail ring at 0x100,
//!                   used ring at 0x200 (the device writes it), buffers anywhere
//!   0x8000..        RX queue (desc 0x8000, avail 0x8100, used 0x8200), 8 RX buffers of 2 KiB
//!                   at 0x9000
//! Descriptors may point anywhere, including outside guest memory.
//!
//! Oracle beyond "no panic, no hang": every TX chain comes back exactly once (the used index
//! moves by the number of chains the device counted), and every frame the tap got is between
//! a vnet plus Ethernet header and the frame buffer in size.

#![no_main]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use hull_vmm::devices::virtio::net::{Net, NetConfig, TapIo, FRAME_BUF_SIZE};
use hull_vmm::devices::virtio::{VirtioDevice, VirtioInterrupt};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 0x1_0000;
const QSIZE: u16 = 16;
const IMAGE: usize = 0x8000;

struct NoIrq;
impl VirtioInterrupt for NoIrq {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

#[derive(Default)]
struct TapState {
    to_guest: VecDeque<Vec<u8>>,
    written: Vec<usize>,
}

struct FakeTap {
    state: Arc<Mutex<TapState>>,
    evt: EventFd,
}

impl TapIo for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let Some(f) = self.state.lock().unwrap().to_guest.pop_front() else {
            return Err(std::io::ErrorKind::WouldBlock.into());
        };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }
    fn write_frame(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.state.lock().unwrap().written.push(buf.len());
        Ok(buf.len())
    }
    fn set_offload(&mut self, _: u32) -> std::io::Result<()> {
        Ok(())
    }
    fn raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

fn queue(desc: u64, avail: u64, used: u64) -> Queue {
    let mut q = Queue::new(QSIZE).unwrap();
    q.set_size(QSIZE);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    q
}

/// `n` writable 2 KiB RX buffers on the queue at `table` (avail ring at table + 0x100).
fn sane_rx(mem: &GuestMemoryMmap<()>, table: u64, bufs: u64, n: u16) {
    for i in 0..n {
        let d = GuestAddress(table + 16 * u64::from(i));
        mem.write_obj(bufs + 0x800 * u64::from(i), d).unwrap();
        mem.write_obj(0x800u32, GuestAddress(d.0 + 8)).unwrap();
        mem.write_obj(2u16, GuestAddress(d.0 + 12)).unwrap();
        mem.write_obj(0u16, GuestAddress(d.0 + 14)).unwrap();
        mem.write_obj(i, GuestAddress(table + 0x104 + 2 * u64::from(i)))
            .unwrap();
    }
    mem.write_obj(n, GuestAddress(table + 0x102)).unwrap();
}

struct Harness {
    dev: Arc<Mutex<Net>>,
    em: EventManager<Arc<Mutex<Net>>>,
    tap: Arc<Mutex<TapState>>,
    tap_evt: EventFd,
}

impl Harness {
    fn new() -> Harness {
        let tap = Arc::new(Mutex::new(TapState::default()));
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let tap_evt = evt.try_clone().unwrap();
        let fake = FakeTap {
            state: tap.clone(),
            evt,
        };
        let dev = Net::with_tap(&NetConfig::new("fuzz0"), Box::new(fake)).unwrap();
        let dev = Arc::new(Mutex::new(dev));
        let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        Harness {
            dev,
            em,
            tap,
            tap_evt,
        }
    }
}

thread_local! {
    static HARNESS: RefCell<Harness> = RefCell::new(Harness::new());
}

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let n = data.len().min(IMAGE);
    mem.write_slice(&data[..n], GuestAddress(0)).unwrap();
    // The driver zeroes the used ring's index before it hands the queue over.
    mem.write_obj(0u16, GuestAddress(0x202)).unwrap();
    sane_rx(&mem, 0x8000, 0x9000, 8);

    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        if data.len() > IMAGE {
            h.tap
                .lock()
                .unwrap()
                .to_guest
                .push_back(data[IMAGE..].to_vec());
            h.tap_evt.write(1).unwrap();
        }
        // Event index mode on odd-length inputs: the fuzzer runs both (used_event, in the
        // avail ring, is the fuzzer's too).
        let event_idx = data.len() % 2 == 1;
        let queues: Vec<Queue> = vec![queue(0x8000, 0x8100, 0x8200), queue(0x0, 0x100, 0x200)]
            .into_iter()
            .map(|mut q| {
                q.set_event_idx(event_idx);
                q
            })
            .collect();
        let evts: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        let kicks: Vec<EventFd> = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        let before = {
            let mut dev = h.dev.lock().unwrap();
            let mut f = dev.avail_features();
            if !event_idx {
                f &= !(1u64 << 29);
            }
            dev.set_acked_features(f);
            dev.activate(mem.clone(), Arc::new(NoIrq), queues, evts)
                .unwrap();
            dev.counters()
        };
        // Activation handles whatever the queues hold; then a kick of each and a few rounds.
        let _ = h.em.run_with_timeout(0);
        kicks[1].write(1).unwrap();
        kicks[0].write(1).unwrap();
        for _ in 0..3 {
            let _ = h.em.run_with_timeout(0);
        }
        let after = h.dev.lock().unwrap().counters();
        let chains = (after.tx_frames - before.tx_frames)
            + (after.tx_malformed - before.tx_malformed)
            + (after.tx_write_errors - before.tx_write_errors);
        let used_idx: u16 = mem.read_obj(GuestAddress(0x202)).unwrap();
        assert_eq!(
            u64::from(used_idx),
            chains,
            "every TX chain comes back once"
        );
        for len in std::mem::take(&mut h.tap.lock().unwrap().written) {
            assert!((26..=FRAME_BUF_SIZE).contains(&len), "frame of {len} bytes");
        }
        // The guest driver goes away: everything is torn down for the next input.
        assert!(h.dev.lock().unwrap().reset());
        let _ = h.em.run_with_timeout(0);
        assert!(!h.dev.lock().unwrap().rx_frame_waiting());
        h.tap.lock().unwrap().to_guest.clear();
    });
});
