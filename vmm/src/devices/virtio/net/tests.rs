//! Device tests with no VM: virtio-queue's `MockSplitQueue` (through `TestQueue`) plays the
//! guest driver, an in-memory fake plays the tap.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::*;
use crate::devices::virtio::test_utils::{test_mem, Desc, TestIrq, TestQueue, MEM_SIZE};
use crate::devices::virtio::{GuestMemory, VirtioDevice};

const N: u16 = VRING_DESC_F_NEXT as u16;
const W: u16 = VRING_DESC_F_WRITE as u16;
const QSIZE: u16 = 256;
const BUF_BASE: u64 = 0x10_0000;
const MRG: u64 = 1 << VIRTIO_NET_F_MRG_RXBUF;
const EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// What the fake tap saw and holds.
#[derive(Default)]
struct TapState {
    /// Frames waiting to be read by the device.
    to_guest: VecDeque<Vec<u8>>,
    /// Frames the device wrote.
    written: Vec<Vec<u8>>,
    /// Every TUNSETOFFLOAD argument, in order.
    offloads: Vec<u32>,
    fail_writes: bool,
}

struct FakeTap {
    state: Arc<Mutex<TapState>>,
    evt: EventFd,
}

impl TapIo for FakeTap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(f) = self.state.lock().unwrap().to_guest.pop_front() else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = f.len().min(buf.len());
        buf[..n].copy_from_slice(&f[..n]);
        Ok(n)
    }
    fn write_frame(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut s = self.state.lock().unwrap();
        if s.fail_writes {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        s.written.push(buf.to_vec());
        Ok(buf.len())
    }
    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.state.lock().unwrap().offloads.push(flags);
        Ok(())
    }
    fn raw_fd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }
}

/// A frame of `len` bytes: a vnet header (with junk where `num_buffers` goes, as a tap leaves
/// it) and a patterned payload.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect();
    f[..VNET_HDR_LEN].copy_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xaa, 0xbb]);
    f
}

struct Harness {
    mem: GuestMemory,
    rxq: TestQueue,
    txq: TestQueue,
    dev: Net,
    tap: Arc<Mutex<TapState>>,
    tap_evt: EventFd,
    irq: Arc<TestIrq>,
    kicks: Vec<EventFd>,
    rx_seen: u16,
    tx_seen: u16,
}

impl Harness {
    fn config() -> NetConfig {
        NetConfig {
            tap: "tap-test".into(),
            mac: Some(MacAddr([2, 0, 0, 0, 0, 7])),
            mtu: Some(1500),
            ..NetConfig::new("")
        }
    }

    /// Every feature but EVENT_IDX: a driver that kicks and wants an interrupt every time.
    fn new() -> Harness {
        Harness::with_features(|f| f & !EVENT_IDX)
    }

    /// A device activated with the features `ack(offered)` (VERSION_1 kept); the queues in
    /// event index mode if EVENT_IDX is among them, as the transport hands them over.
    fn with_features(ack: impl Fn(u64) -> u64) -> Harness {
        let mem = test_mem();
        let tap = Arc::new(Mutex::new(TapState::default()));
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let tap_evt = evt.try_clone().unwrap();
        let fake = FakeTap {
            state: tap.clone(),
            evt,
        };
        let dev = Net::with_tap(&Harness::config(), Box::new(fake)).unwrap();
        let mut h = Harness {
            rxq: TestQueue::create(&mem, GuestAddress(0), QSIZE),
            txq: TestQueue::create(&mem, GuestAddress(0x4000), QSIZE),
            mem,
            dev,
            tap,
            tap_evt,
            irq: Arc::new(TestIrq::default()),
            kicks: Vec::new(),
            rx_seen: 0,
            tx_seen: 0,
        };
        let f = ack(h.dev.avail_features()) | (1 << 32);
        h.dev.set_acked_features(f);
        let evts: Vec<EventFd> = (0..2)
            .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
            .collect();
        h.kicks = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        let mut queues: Vec<Queue> = vec![h.rxq.queue(), h.txq.queue()];
        for q in &mut queues {
            q.set_event_idx(f & EVENT_IDX != 0);
        }
        h.dev
            .activate(h.mem.clone(), h.irq.clone(), queues, evts)
            .unwrap();
        h
    }

    /// Posts one RX chain at descriptor `base` made of writable buffers `(addr, len)`.
    fn post_rx(&self, base: u16, bufs: &[(u64, u32)]) {
        let descs: Vec<Desc> = bufs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len))| {
                let last = i + 1 == bufs.len();
                let next = base + i as u16 + 1;
                (
                    addr,
                    len,
                    if last { W } else { W | N },
                    if last { 0 } else { next },
                )
            })
            .collect();
        self.rxq.add_chain(base, &descs);
    }

    /// Queues a TX chain at descriptor `base` from `(addr, len, flags)` (NEXT is added).
    fn post_tx(&self, base: u16, parts: &[(u64, u32, u16)]) {
        let descs: Vec<Desc> = parts
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let last = i + 1 == parts.len();
                let next = base.wrapping_add(i as u16 + 1) % QSIZE;
                (
                    addr,
                    len,
                    if last { flags } else { flags | N },
                    if last { 0 } else { next },
                )
            })
            .collect();
        self.txq.add_chain(base, &descs);
    }

    /// Queues `f` as a TX chain split into pieces of the given lengths.
    fn send_split(&self, base: u16, f: &[u8], pieces: &[usize]) {
        let mut parts = Vec::new();
        let mut off = 0;
        for (i, &n) in pieces.iter().enumerate() {
            let addr = BUF_BASE + 0x2_0000 * u64::from(base) + 0x1000 * i as u64 + 3;
            self.mem
                .write_slice(&f[off..off + n], GuestAddress(addr))
                .unwrap();
            parts.push((addr, n as u32, 0));
            off += n;
        }
        assert_eq!(off, f.len());
        self.post_tx(base, &parts);
    }

    fn push_frame(&self, f: Vec<u8>) {
        self.tap.lock().unwrap().to_guest.push_back(f);
        self.tap_evt.write(1).unwrap();
    }

    fn rx_used(&mut self) -> Vec<(u32, u32)> {
        self.rxq.take_used(&mut self.rx_seen)
    }

    fn tx_used(&mut self) -> Vec<(u32, u32)> {
        self.txq.take_used(&mut self.tx_seen)
    }

    fn written(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.tap.lock().unwrap().written)
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }
}

/// `f` as the guest must see it: `num_buffers` set.
fn with_num_buffers(f: &[u8], n: u16) -> Vec<u8> {
    let mut v = f.to_vec();
    v[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2].copy_from_slice(&n.to_le_bytes());
    v
}

#[test]
fn features_and_config_space() {
    let h = Harness::new();
    let d = &h.dev;
    assert_eq!(d.device_type(), 1);
    assert_eq!(d.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    let f = d.avail_features();
    for bit in [
        32,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_MTU,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_STATUS,
        29, // VIRTIO_RING_F_EVENT_IDX
    ] {
        assert_ne!(f & (1 << bit), 0, "feature {bit} must be offered");
    }
    // No indirect descriptors, control queue, multiqueue or UFO.
    for bit in [
        28,
        VIRTIO_NET_F_CTRL_VQ,
        VIRTIO_NET_F_MQ,
        VIRTIO_NET_F_GUEST_UFO,
    ] {
        assert_eq!(f & (1 << bit), 0, "feature {bit} must not be offered");
    }
    let mut cfg = [0u8; CONFIG_SPACE_SIZE];
    d.read_config(0, &mut cfg);
    assert_eq!(cfg, [2, 0, 0, 0, 0, 7, 1, 0, 1, 0, 0xdc, 0x05]);
    let mut mtu = [0u8; 2];
    d.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 1500);
    let mut out = [0xaau8; 4];
    d.read_config(10, &mut out);
    assert_eq!(
        out, [0xaa; 4],
        "an out-of-range read must leave the buffer alone"
    );
    d.read_config(u64::MAX, &mut out);
    assert_eq!(out, [0xaa; 4]);

    // Without a MAC or an MTU, neither feature is offered.
    let tap = FakeTap {
        state: Arc::default(),
        evt: EventFd::new(0).unwrap(),
    };
    let mut d = Net::with_tap(&NetConfig::new("t"), Box::new(tap)).unwrap();
    let f = d.avail_features();
    assert_eq!(f & (1 << VIRTIO_NET_F_MAC), 0);
    assert_eq!(f & (1 << VIRTIO_NET_F_MTU), 0);
    let mut cfg = [0xffu8; CONFIG_SPACE_SIZE];
    d.read_config(0, &mut cfg);
    assert_eq!(cfg, [0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0]);
    // Writes are ignored.
    d.write_config(0, &[9; 6]);
    d.read_config(0, &mut cfg);
    assert_eq!(cfg[..6], [0; 6]);
    // Activation needs VERSION_1.
    d.set_acked_features(0);
    let q = || Queue::new(16).unwrap();
    let e = || EventFd::new(0).unwrap();
    assert!(d
        .activate(
            test_mem(),
            Arc::new(TestIrq::default()),
            vec![q(), q()],
            vec![e(), e()]
        )
        .is_err());
}

#[test]
fn offloads_follow_the_negotiated_features() {
    let cases: [(u64, u32); 4] = [
        (!0, libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6),
        (
            !(1 << VIRTIO_NET_F_GUEST_TSO6),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4,
        ),
        (!(1 << VIRTIO_NET_F_GUEST_CSUM), 0),
        (1 << 32, 0),
    ];
    for (mask, want) in cases {
        let mut h = Harness::with_features(|f| f & mask);
        assert_eq!(h.tap.lock().unwrap().offloads, vec![want], "mask {mask:#x}");
        assert!(h.dev.reset());
        let offloads = h.tap.lock().unwrap().offloads.clone();
        if want != 0 {
            assert_eq!(offloads, vec![want, 0], "reset turns the offloads off");
        }
        assert!(!h.dev.is_activated());
    }
    assert_eq!(
        offload_flags(1 << VIRTIO_NET_F_GUEST_TSO4),
        0,
        "TSO needs CSUM"
    );
}

#[test]
fn tx_frame_split_over_descriptors_reaches_the_tap_whole() {
    let mut h = Harness::new();
    let f = frame(1514 + VNET_HDR_LEN, 1);
    // Header alone, then the frame in three uneven pieces.
    h.send_split(0, &f, &[VNET_HDR_LEN, 100, 1, 1514 - 101]);
    assert!(h.dev.process_tx());
    assert_eq!(h.written(), vec![f.clone()], "header and frame, untouched");
    assert_eq!(h.tx_used(), vec![(0, 0)]);
    assert_eq!(h.irq.count(), 1);
    // Header and frame in one descriptor; a GSO-sized frame.
    let big = frame(FRAME_BUF_SIZE, 2);
    h.send_split(4, &big, &[FRAME_BUF_SIZE]);
    assert!(h.dev.process_tx());
    assert_eq!(h.written(), vec![big]);
    let c = h.dev.counters();
    assert_eq!((c.tx_frames, c.tx_malformed), (2, 0));
    assert_eq!(c.tx_bytes, (f.len() + FRAME_BUF_SIZE) as u64);
    assert!(!h.dev.process_tx(), "nothing more to do");
}

#[test]
fn malformed_tx_chains_are_returned_unused_and_the_device_goes_on() {
    let mut h = Harness::new();
    let ok = BUF_BASE;
    h.mem.write_slice(&frame(64, 3), GuestAddress(ok)).unwrap();
    let half = (FRAME_BUF_SIZE / 2 + 1) as u32;
    let chains: Vec<Vec<(u64, u32, u16)>> = vec![
        // A write-only descriptor.
        vec![(ok, 12, 0), (ok + 12, 52, W)],
        // Longer than the frame buffer.
        vec![(ok, half, 0), (ok, half, 0)],
        vec![(ok, u32::MAX, 0)],
        // More descriptors than allowed.
        (0..=MAX_TX_DESCS).map(|_| (ok, 1, 0)).collect(),
        // Outside guest memory, and across its end.
        vec![(MEM_SIZE as u64 + 0x1000, 64, 0)],
        vec![(MEM_SIZE as u64 - 10, 64, 0)],
        vec![(u64::MAX - 5, 64, 0)],
        // Zero-length, and shorter than a vnet and an Ethernet header.
        vec![(ok, 0, 0)],
        vec![(ok, 12, 0), (ok + 12, 13, 0)],
    ];
    let mut base = 0u16;
    let mut heads = Vec::new();
    for c in &chains {
        h.post_tx(base, c);
        heads.push((u32::from(base), 0));
        base += c.len() as u16;
    }
    assert!(h.dev.process_tx());
    assert_eq!(h.tx_used(), heads, "every chain comes back, with length 0");
    assert!(h.written().is_empty());
    assert_eq!(h.dev.counters().tx_malformed, chains.len() as u64);
    // A good frame still goes through.
    let f = frame(64, 3);
    h.send_split(base, &f, &[64]);
    assert!(h.dev.process_tx());
    assert_eq!(h.written(), vec![f]);
    assert_eq!(h.dev.counters().tx_frames, 1);
}

/// An avail entry naming a descriptor past the table's end (what `make fuzz` found on
/// `virtio_net_tx`): there is no chain to return, so it is skipped and counted, and the chains
/// around it go through in the same pass rather than at the guest's next kick.
#[test]
fn an_avail_entry_past_the_descriptor_table_is_skipped_and_the_rest_served() {
    let mut h = Harness::new();
    let a = frame(64, 5);
    let b = frame(80, 6);
    h.send_split(0, &a, &[64]);
    h.txq.push_avail(65532);
    h.txq.push_avail(QSIZE);
    h.send_split(4, &b, &[80]);
    assert!(h.dev.process_tx());
    assert_eq!(h.written(), vec![a, b], "both frames, in one pass");
    assert_eq!(
        h.tx_used(),
        vec![(0, 0), (4, 0)],
        "only real chains come back"
    );
    let c = h.dev.counters();
    assert_eq!((c.tx_frames, c.tx_malformed, c.tx_bad_heads), (2, 0, 2));
    assert!(!h.dev.process_tx(), "nothing more to do");
}

#[test]
fn a_failed_tap_write_drops_the_frame_and_completes_the_chain() {
    let mut h = Harness::new();
    h.tap.lock().unwrap().fail_writes = true;
    h.send_split(0, &frame(100, 4), &[100]);
    assert!(h.dev.process_tx());
    assert_eq!(h.tx_used(), vec![(0, 0)]);
    assert_eq!(h.dev.counters().tx_write_errors, 1);
    h.tap.lock().unwrap().fail_writes = false;
    h.send_split(1, &frame(100, 5), &[100]);
    assert!(h.dev.process_tx());
    assert_eq!(h.written(), vec![frame(100, 5)]);
}

#[test]
fn rx_frame_into_one_big_buffer() {
    // Without MRG_RXBUF (big-packet mode): one chain per frame, header split from the data.
    let mut h = Harness::with_features(|f| f & !MRG);
    let f = frame(3000, 6);
    h.push_frame(f.clone());
    h.post_rx(0, &[(BUF_BASE, 12), (BUF_BASE + 0x100, 65550)]);
    assert!(h.dev.process_rx());
    assert_eq!(h.rx_used(), vec![(0, 3000)]);
    let mut got = h.read(BUF_BASE, 12);
    got.extend(h.read(BUF_BASE + 0x100, 3000 - 12));
    assert_eq!(got, with_num_buffers(&f, 1));
    assert_eq!(h.irq.count(), 1);
    let c = h.dev.counters();
    assert_eq!((c.rx_frames, c.rx_bytes, c.rx_dropped), (1, 3000, 0));
    assert!(!h.dev.rx_frame_waiting());
    // The tap is empty: EAGAIN ends the round quietly.
    assert!(!h.dev.process_rx());
}

#[test]
fn rx_with_mergeable_buffers_spreads_a_frame_and_publishes_it_at_once() {
    let mut h = Harness::new();
    let f = frame(3500, 7);
    h.push_frame(f.clone());
    // Two 1000-byte chains: not enough for 3500 bytes. Nothing may reach the used ring.
    for i in 0..2u16 {
        h.post_rx(i, &[(BUF_BASE + 0x1000 * u64::from(i), 1000)]);
    }
    assert!(!h.dev.process_rx());
    assert_eq!(h.rxq.used_idx(), 0, "no part of a frame is published early");
    assert!(h.dev.rx_frame_waiting());
    // Two more (the second split in two descriptors): the frame takes four chains.
    h.post_rx(2, &[(BUF_BASE + 0x2000, 1000)]);
    h.post_rx(3, &[(BUF_BASE + 0x3000, 300), (BUF_BASE + 0x3400, 700)]);
    h.post_rx(5, &[(BUF_BASE + 0x5000, 1000)]);
    assert!(h.dev.process_rx());
    assert_eq!(h.rxq.used_idx(), 4);
    assert_eq!(h.rx_used(), vec![(0, 1000), (1, 1000), (2, 1000), (3, 500)]);
    let mut got = Vec::new();
    for i in 0..3 {
        got.extend(h.read(BUF_BASE + 0x1000 * i, 1000));
    }
    got.extend(h.read(BUF_BASE + 0x3000, 300));
    got.extend(h.read(BUF_BASE + 0x3400, 200));
    assert_eq!(got, with_num_buffers(&f, 4));
    assert_eq!(h.irq.count(), 1);
    let c = h.dev.counters();
    assert_eq!((c.rx_frames, c.rx_deferred, c.rx_dropped), (1, 1, 0));
    // The fifth chain takes the next frame.
    h.push_frame(frame(200, 8));
    assert!(h.dev.process_rx());
    assert_eq!(h.rx_used(), vec![(5, 200)]);
    assert_eq!(
        h.read(BUF_BASE + 0x5000, 200),
        with_num_buffers(&frame(200, 8), 1)
    );
}

#[test]
fn num_buffers_lands_right_when_the_header_is_split() {
    let mut h = Harness::new();
    let f = frame(40, 9);
    h.push_frame(f.clone());
    // The header's num_buffers straddles two descriptors, and the frame two chains.
    h.post_rx(0, &[(BUF_BASE, 11), (BUF_BASE + 0x100, 9)]);
    h.post_rx(2, &[(BUF_BASE + 0x200, 100)]);
    assert!(h.dev.process_rx());
    assert_eq!(h.rx_used(), vec![(0, 20), (2, 20)]);
    let mut got = h.read(BUF_BASE, 11);
    got.extend(h.read(BUF_BASE + 0x100, 9));
    got.extend(h.read(BUF_BASE + 0x200, 20));
    assert_eq!(got, with_num_buffers(&f, 2));
}

#[test]
fn rx_without_buffers_defers_the_frame_and_stops_reading_the_tap() {
    let mut h = Harness::new();
    let dev = Arc::new(Mutex::new(std::mem::replace(
        &mut h.dev,
        Net::with_tap(
            &NetConfig::new("x"),
            Box::new(FakeTap {
                state: Arc::default(),
                evt: EventFd::new(0).unwrap(),
            }),
        )
        .unwrap(),
    )));
    let mut em = EventManager::<Arc<Mutex<Net>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    em.run_with_timeout(10).unwrap();
    assert!(dev.lock().unwrap().is_activated());

    h.push_frame(frame(500, 10));
    h.push_frame(frame(600, 11));
    em.run_with_timeout(10).unwrap();
    assert!(dev.lock().unwrap().rx_frame_waiting());
    assert_eq!(
        h.tap.lock().unwrap().to_guest.len(),
        1,
        "the tap is not read while a frame waits"
    );
    assert_eq!(h.rxq.used_idx(), 0);
    // More tap events change nothing.
    h.tap_evt.write(1).unwrap();
    em.run_with_timeout(10).unwrap();
    assert_eq!(h.tap.lock().unwrap().to_guest.len(), 1);

    // The guest adds buffers and kicks: both frames arrive, in order, none dropped.
    h.post_rx(0, &[(BUF_BASE, 2048)]);
    h.post_rx(1, &[(BUF_BASE + 0x1000, 2048)]);
    h.kicks[RXQ_INDEX].write(1).unwrap();
    em.run_with_timeout(10).unwrap();
    assert_eq!(h.rx_used(), vec![(0, 500), (1, 600)]);
    assert_eq!(h.read(BUF_BASE, 500), with_num_buffers(&frame(500, 10), 1));
    assert_eq!(
        h.read(BUF_BASE + 0x1000, 600),
        with_num_buffers(&frame(600, 11), 1)
    );
    let c = dev.lock().unwrap().counters();
    assert_eq!((c.rx_frames, c.rx_deferred, c.rx_dropped), (2, 1, 0));
    assert!(!dev.lock().unwrap().rx_frame_waiting());

    // TX through the loop too.
    h.send_split(10, &frame(80, 12), &[12, 68]);
    h.kicks[TXQ_INDEX].write(1).unwrap();
    em.run_with_timeout(10).unwrap();
    assert_eq!(h.written(), vec![frame(80, 12)]);

    // A reset forgets the waiting frame.
    h.push_frame(frame(500, 13));
    em.run_with_timeout(10).unwrap();
    assert!(dev.lock().unwrap().rx_frame_waiting());
    assert!(dev.lock().unwrap().reset());
    em.run_with_timeout(10).unwrap();
    assert!(!dev.lock().unwrap().rx_frame_waiting());
}

#[test]
fn rx_buffer_too_small_without_mergeable_buffers_drops_the_frame() {
    let mut h = Harness::with_features(|f| f & !MRG);
    h.post_rx(0, &[(BUF_BASE, 100)]);
    h.push_frame(frame(500, 14));
    assert!(!h.dev.process_rx());
    assert_eq!(h.rxq.used_idx(), 0);
    assert!(
        !h.dev.rx_frame_waiting(),
        "a frame that can never fit is dropped"
    );
    assert_eq!(h.dev.counters().rx_dropped, 1);
    // The buffer stays the guest's and takes the next frame that fits.
    h.push_frame(frame(90, 15));
    assert!(h.dev.process_rx());
    assert_eq!(h.rx_used(), vec![(0, 90)]);
    assert_eq!(h.read(BUF_BASE, 90), with_num_buffers(&frame(90, 15), 1));
}

#[test]
fn a_frame_needing_more_chains_than_the_queue_holds_is_dropped() {
    let mut h = Harness::new();
    // 256 chains of 16 bytes hold 4096 bytes: a 5000-byte frame can never fit.
    for i in 0..QSIZE {
        h.post_rx(i, &[(BUF_BASE + 16 * u64::from(i), 16)]);
    }
    h.push_frame(frame(5000, 16));
    h.push_frame(frame(100, 17));
    assert!(h.dev.process_rx());
    assert_eq!(h.dev.counters().rx_dropped, 1);
    let used = h.rx_used();
    assert_eq!(used.len(), 7, "the next frame takes 7 chains: {used:?}");
    assert_eq!(used[0], (0, 16));
}

#[test]
fn unusable_rx_chains_are_returned_unused() {
    let mut h = Harness::new();
    // A readable descriptor, a buffer outside memory, a zero-length buffer, then good ones.
    h.rxq.add_chain(0, &[(BUF_BASE, 100, 0, 0)]);
    h.post_rx(1, &[(MEM_SIZE as u64, 100)]);
    h.post_rx(2, &[(BUF_BASE, 0)]);
    h.post_rx(3, &[(BUF_BASE + 0x1000, 60)]);
    // Bad chains between the frame's chains: returned before the frame's, as 0-length.
    h.post_rx(4, &[(BUF_BASE + 0x2000, 30), (u64::MAX - 8, 30)]);
    h.post_rx(6, &[(BUF_BASE + 0x3000, 60)]);
    h.push_frame(frame(100, 18));
    assert!(h.dev.process_rx());
    assert_eq!(
        h.rx_used(),
        vec![(0, 0), (1, 0), (2, 0), (4, 0), (3, 60), (6, 40)]
    );
    let mut got = h.read(BUF_BASE + 0x1000, 60);
    got.extend(h.read(BUF_BASE + 0x3000, 40));
    assert_eq!(got, with_num_buffers(&frame(100, 18), 2));
    assert_eq!(h.dev.counters().rx_bad_chains, 4);
}

#[test]
fn short_frames_are_dropped_and_the_rx_budget_yields() {
    let mut h = Harness::new();
    for _ in 0..RX_BUDGET + 10 {
        h.push_frame(vec![0; VNET_HDR_LEN + 13]);
    }
    assert!(!h.dev.process_rx());
    assert_eq!(h.dev.counters().rx_dropped, RX_BUDGET as u64);
    assert_eq!(h.tap.lock().unwrap().to_guest.len(), 10);
    assert_eq!(
        h.dev.rx_continue_evt.read().unwrap(),
        1,
        "the device asks to go on"
    );
    assert!(!h.dev.process_rx());
    assert!(h.tap.lock().unwrap().to_guest.is_empty());
}

#[test]
fn nothing_moves_before_activation_or_after_reset() {
    let mut h = Harness::new();
    assert!(h.dev.reset());
    h.push_frame(frame(100, 19));
    h.post_rx(0, &[(BUF_BASE, 1000)]);
    h.send_split(1, &frame(100, 20), &[100]);
    assert!(!h.dev.process_rx());
    assert!(!h.dev.process_tx());
    assert_eq!(h.tap.lock().unwrap().to_guest.len(), 1);
    assert!(h.written().is_empty());
}

/// EVENT_IDX, TX: after each pass the device asks for a kick on the next frame (avail_event is
/// the avail index it reached) and interrupts only when the driver's used_event says so.
#[test]
fn tx_with_event_idx_rearms_and_interrupts_only_when_asked() {
    let mut h = Harness::with_features(|f| f);
    assert!(
        h.dev.avail_features() & EVENT_IDX != 0,
        "EVENT_IDX is offered"
    );
    h.send_split(0, &frame(60, 1), &[60]);
    h.send_split(1, &frame(61, 2), &[61]);
    assert!(h.dev.process_tx());
    assert_eq!(h.written(), vec![frame(60, 1), frame(61, 2)]);
    assert_eq!(h.txq.avail_event(), 2, "kick me on the next frame");
    assert_eq!(h.irq.count(), 1, "one interrupt for the batch");
    // The driver wants an interrupt only once the used index passes 4.
    h.txq.set_used_event(4);
    h.send_split(2, &frame(62, 3), &[62]);
    h.send_split(3, &frame(63, 4), &[63]);
    assert!(h.dev.process_tx());
    assert_eq!(h.txq.used_idx(), 4);
    assert_eq!(h.irq.count(), 1, "used index 4 has not passed used_event 4");
    h.send_split(4, &frame(64, 5), &[64]);
    assert!(h.dev.process_tx());
    assert_eq!(h.irq.count(), 2, "used index 5 passed used_event 4");
    assert_eq!(h.txq.avail_event(), 5);
    assert_eq!(h.tx_used().len(), 5);
}

/// TX budget: a pass serves at most TX_BUDGET chains, then yields through its own kick
/// eventfd; the next pass serves the rest and rearms.
#[test]
fn tx_yields_after_its_budget_and_comes_back_through_its_eventfd() {
    assert!(TX_BUDGET <= usize::from(QSIZE));
    let mut h = Harness::with_features(|f| f);
    let _ = h.kicks[TXQ_INDEX].read();
    for i in 0..QSIZE {
        let addr = BUF_BASE + 0x100 * u64::from(i);
        h.mem
            .write_slice(&frame(60, i as u8), GuestAddress(addr))
            .unwrap();
        h.post_tx(i, &[(addr, 60, 0)]);
    }
    assert!(h.dev.process_tx());
    assert_eq!(h.written().len(), TX_BUDGET);
    assert_eq!(
        h.kicks[TXQ_INDEX].read().unwrap(),
        1,
        "the device comes back on its own"
    );
    h.dev.process_tx();
    assert_eq!(h.written().len(), usize::from(QSIZE) - TX_BUDGET);
    assert_eq!(h.txq.avail_event(), QSIZE);
    assert_eq!(h.tx_used().len(), usize::from(QSIZE));
}

/// EVENT_IDX, RX: too few buffers for a frame (mergeable, two needed, one posted): the buffer
/// goes back to the ring and the driver is asked to kick on a buffer past the one the device
/// saw, not past the rewound position (which it has passed already: it would never kick).
#[test]
fn rx_with_event_idx_waiting_for_buffers_asks_for_a_kick_past_what_it_saw() {
    let mut h = Harness::with_features(|f| f);
    h.post_rx(0, &[(BUF_BASE, 1000)]);
    h.push_frame(frame(1500, 6));
    assert!(!h.dev.process_rx());
    assert!(h.dev.rx_frame_waiting());
    assert_eq!(h.rxq.used_idx(), 0);
    assert_eq!(h.rxq.avail_event(), 1, "kick me past the buffer I saw");
    h.post_rx(1, &[(BUF_BASE + 0x1000, 1000)]);
    assert!(h.dev.process_rx());
    assert_eq!(h.rx_used(), vec![(0, 1000), (1, 500)]);
    // RX asks for kicks only while it lacks buffers (the tap's events drive it otherwise).
    assert_eq!(h.rxq.avail_event(), 1);
}

/// EVENT_IDX, RX: a frame spread over two buffers moves the used index by two under one
/// update; the driver waiting at used_event 0 is interrupted (a check that counted updates
/// instead of entries would see only 1..2 and stay silent, and the guest's RX would stall).
#[test]
fn rx_with_event_idx_interrupts_for_a_frame_over_several_buffers() {
    let mut h = Harness::with_features(|f| f);
    h.rxq.set_used_event(0);
    h.post_rx(0, &[(BUF_BASE, 1000)]);
    h.post_rx(1, &[(BUF_BASE + 0x1000, 1000)]);
    h.push_frame(frame(1500, 7));
    assert!(h.dev.process_rx());
    assert_eq!(h.rx_used(), vec![(0, 1000), (1, 500)]);
    assert_eq!(
        h.irq.count(),
        1,
        "the driver waiting at used_event 0 is interrupted"
    );
    // Waiting at 5 now: the next two-buffer frame (used index 2..4) does not interrupt.
    h.rxq.set_used_event(5);
    h.post_rx(2, &[(BUF_BASE + 0x2000, 1000)]);
    h.post_rx(3, &[(BUF_BASE + 0x3000, 1000)]);
    h.push_frame(frame(1500, 8));
    assert!(h.dev.process_rx());
    assert_eq!(h.irq.count(), 1);
}

/// EVENT_IDX with an avail index the guest moved past the ring: nothing can be popped, and the
/// device stops instead of draining again forever (no self-kick either).
#[test]
fn an_avail_index_past_the_ring_stops_the_queue_instead_of_spinning() {
    let mut h = Harness::with_features(|f| f);
    let _ = h.kicks[TXQ_INDEX].read();
    h.txq.set_avail_idx(1000);
    assert!(!h.dev.process_tx());
    assert!(
        h.kicks[TXQ_INDEX].read().is_err(),
        "no self-kick: the queue stops"
    );
    assert!(h.written().is_empty());
}
