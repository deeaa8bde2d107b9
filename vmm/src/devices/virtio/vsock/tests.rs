//! Device tests with no VM: virtio-queue's `MockSplitQueue` plays the guest driver, real Unix
//! sockets play the host, and the device runs in a real `event_manager` loop.

use std::path::PathBuf;

use super::*;
use crate::devices::virtio::test_utils::{test_mem, Desc, TempDir, TestIrq, TestQueue, MEM_SIZE};
use crate::devices::virtio::VirtioDevice;
use virtio_queue::QueueT;

#[test]
fn new_binds_and_drop_removes_the_socket() {
    let dir = TempDir::new("api");
    let path = dir.0.join("v.sock");
    let v = Vsock::new(3, path.clone()).unwrap();
    assert!(path.exists());
    assert_eq!(v.device_type(), 19);
    assert_eq!(v.queue_max_sizes().len(), 3);
    assert_ne!(v.avail_features() & (1 << 32), 0);
    let mut cfg = [0u8; 8];
    v.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 3);
    let mut hi = [0xaau8; 4];
    v.read_config(4, &mut hi);
    assert_eq!(hi, [0, 0, 0, 0]);
    let mut out = [0xaau8; 4];
    v.read_config(6, &mut out);
    assert_eq!(
        out, [0xaa; 4],
        "an out-of-range read must leave the buffer alone"
    );
    v.read_config(u64::MAX, &mut out);
    assert_eq!(out, [0xaa; 4]);

    // A second device on the same path fails and names the path; the first keeps its socket.
    let err = Vsock::new(4, path.clone())
        .err()
        .expect("path in use must fail");
    assert!(matches!(err, VsockError::UdsPathExists(_)));
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    assert!(path.exists());

    drop(v);
    assert!(!path.exists(), "the socket must be removed on drop");
}

#[test]
fn new_rejects_reserved_cids_and_bad_paths() {
    let tmp = TempDir::new("cid");
    let dir = &tmp.0;
    for cid in [0, 1, 2, u64::from(u32::MAX), u64::MAX] {
        let err = Vsock::new(cid, dir.join("x.sock")).err().unwrap();
        assert!(matches!(err, VsockError::InvalidCid(c) if c == cid));
    }
    assert!(!dir.join("x.sock").exists());
    let err = Vsock::new(3, dir.join("missing-dir/x.sock")).err().unwrap();
    assert!(err.to_string().contains("missing-dir/x.sock"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// The mock guest driver.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, SubscriberOps};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::packet::*;
use crate::devices::virtio::GuestMemory;

pub(super) const GUEST_CID: u64 = 3;
const QSIZE: u16 = 256;
const RX_SLOTS: u16 = 64;
const TX_SLOTS: u16 = 64;
const RX_BASE: u64 = 0x10_0000;
const RX_SLOT_SIZE: u64 = 0x2000;
const RX_DATA_LEN: u32 = 4096;
const TX_BASE: u64 = 0x40_0000;
const TX_SLOT_SIZE: u64 = 0x1_1000;
/// Descriptor indices above this are free for hand-made (malformed) chains.
const RAW_DESC_BASE: u16 = 2 * TX_SLOTS;
/// The event queue's one buffer, and its descriptor.
const EV_BUF: u64 = 0xf0_0000;
const EV_DESC: u16 = 250;

/// A packet as the guest sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Pkt {
    pub hdr: Header,
    pub type_: u16,
    pub data: Vec<u8>,
}

fn encode_header(h: &Header, type_: u16) -> [u8; PKT_HEADER_SIZE] {
    let mut b = [0u8; PKT_HEADER_SIZE];
    b[0..8].copy_from_slice(&h.src_cid.to_le_bytes());
    b[8..16].copy_from_slice(&h.dst_cid.to_le_bytes());
    b[16..20].copy_from_slice(&h.src_port.to_le_bytes());
    b[20..24].copy_from_slice(&h.dst_port.to_le_bytes());
    b[24..28].copy_from_slice(&h.len.to_le_bytes());
    b[28..30].copy_from_slice(&type_.to_le_bytes());
    b[30..32].copy_from_slice(&h.op.to_le_bytes());
    b[32..36].copy_from_slice(&h.flags.to_le_bytes());
    b[36..40].copy_from_slice(&h.buf_alloc.to_le_bytes());
    b[40..44].copy_from_slice(&h.fwd_cnt.to_le_bytes());
    b
}

fn decode_header(b: &[u8; PKT_HEADER_SIZE]) -> (Header, u16) {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
    (
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        },
        u16_at(28),
    )
}

/// A guest packet header (guest CID to host CID, type STREAM).
pub(super) fn ghdr(op: u16, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: VSOCK_HOST_CID,
        src_port,
        dst_port,
        op,
        buf_alloc: 256 * 1024,
        ..Header::default()
    }
}

pub(super) struct Driver {
    pub mem: GuestMemory,
    rxq: TestQueue,
    txq: TestQueue,
    evq: TestQueue,
    pub dev: Arc<Mutex<Vsock>>,
    em: EventManager<Arc<Mutex<Vsock>>>,
    irq: Arc<TestIrq>,
    kicks: Vec<EventFd>,
    rx_free: Vec<u16>,
    rx_used_seen: u16,
    tx_free: Vec<u16>,
    tx_used_seen: u16,
    /// Used TX buffers seen, by head index, with their used length (for malformed-chain tests).
    pub tx_used: Vec<(u32, u32)>,
    /// RX buffers used with length 0 (dropped as malformed), by head index.
    pub rx_dropped: Vec<u32>,
    pub uds: PathBuf,
    /// Whether the queues are in event index mode (EVENT_IDX acknowledged). The driver kicks
    /// after every post either way (more kicks than the device asks for are allowed) and
    /// reads the used rings without waiting for interrupts.
    event_idx: bool,
    _dir: TempDir,
}

impl Driver {
    pub fn new(tag: &str) -> Driver {
        Driver::with_event_idx(tag, false)
    }

    pub fn with_event_idx(tag: &str, event_idx: bool) -> Driver {
        let dir = TempDir::new(tag);
        let uds = dir.0.join("v.sock");
        let dev = Arc::new(Mutex::new(Vsock::new(GUEST_CID, uds.clone()).unwrap()));
        let mem = test_mem();
        let q = |at| TestQueue::create(&mem, GuestAddress(at), QSIZE);
        let (rxq, txq, evq) = (q(0x0), q(0x4000), q(0x8000));
        let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut d = Driver {
            mem,
            rxq,
            txq,
            evq,
            dev,
            em,
            irq: Arc::new(TestIrq::default()),
            kicks: Vec::new(),
            rx_free: (0..RX_SLOTS).rev().collect(),
            rx_used_seen: 0,
            tx_free: (0..TX_SLOTS).rev().collect(),
            tx_used_seen: 0,
            tx_used: Vec::new(),
            rx_dropped: Vec::new(),
            uds,
            event_idx,
            _dir: dir,
        };
        d.activate();
        d
    }

    fn activate(&mut self) {
        let queues: Vec<Queue> = [&self.rxq, &self.txq, &self.evq]
            .iter()
            .map(|q| {
                let mut q = q.queue();
                q.set_event_idx(self.event_idx);
                q
            })
            .collect();
        let evts: Vec<EventFd> = (0..3)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        self.kicks = evts.iter().map(|e| e.try_clone().unwrap()).collect();
        {
            let mut dev = self.dev.lock().unwrap();
            let mut f = dev.avail_features();
            if !self.event_idx {
                f &= !(1u64 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);
            }
            dev.set_acked_features(f);
            dev.activate(self.mem.clone(), self.irq.clone(), queues, evts)
                .unwrap();
        }
        self.run_once(10);
    }

    /// Resets the device as a driver would, and brings it up again with fresh rings.
    pub fn reset_and_reactivate(&mut self) {
        assert!(self.dev.lock().unwrap().reset());
        self.run_once(10);
        // Fresh rings: zero the ring memory and start over.
        self.mem
            .write_slice(&vec![0u8; 0xc000], GuestAddress(0))
            .unwrap();
        self.rx_free = (0..RX_SLOTS).rev().collect();
        self.tx_free = (0..TX_SLOTS).rev().collect();
        self.rx_used_seen = 0;
        self.tx_used_seen = 0;
        self.activate();
    }

    pub fn irq_count(&self) -> usize {
        self.irq.count()
    }

    pub fn run_once(&mut self, ms: i32) {
        self.em.run_with_timeout(ms).unwrap();
    }

    fn kick(&self, q: usize) {
        self.kicks[q].write(1).unwrap();
    }

    /// Posts an event buffer (poisoned) on the event queue and kicks it, as the driver does at
    /// probe and again after handling an event.
    pub fn post_event(&mut self) {
        self.mem
            .write_obj(0xffff_ffffu32, GuestAddress(EV_BUF))
            .unwrap();
        self.evq
            .add_chain(EV_DESC, &[(EV_BUF, 8, VRING_DESC_F_WRITE as u16, 0)]);
        self.kick(EVQ_INDEX);
    }

    /// Posts every free RX buffer.
    pub fn post_rx(&mut self) {
        self.post_rx_n(usize::MAX);
    }

    pub fn post_rx_n(&mut self, n: usize) {
        let mut posted = 0;
        while posted < n {
            let Some(slot) = self.rx_free.pop() else {
                break;
            };
            let base = RX_BASE + u64::from(slot) * RX_SLOT_SIZE;
            // Poison the buffer so stale bytes cannot pass for received ones.
            self.mem
                .write_slice(&[0xee; PKT_HEADER_SIZE], GuestAddress(base))
                .unwrap();
            let (w, n) = (VRING_DESC_F_WRITE as u16, VRING_DESC_F_NEXT as u16);
            self.rxq.add_chain(
                2 * slot,
                &[
                    (base, PKT_HEADER_SIZE as u32, w | n, 2 * slot + 1),
                    (base + 0x100, RX_DATA_LEN, w, 0),
                ],
            );
            posted += 1;
        }
        if posted > 0 {
            self.kick(RXQ_INDEX);
        }
    }

    /// Posts a hand-made RX chain from raw descriptors at indices `RAW_DESC_BASE..`.
    pub fn post_raw_rx(&mut self, descs: &[RawDesc]) -> u16 {
        self.post_raw(RXQ_INDEX, descs)
    }

    /// Queues a hand-made TX chain from raw descriptors `(addr, len, flags, next)` stored at
    /// indices `RAW_DESC_BASE..` (`next` is relative to RAW_DESC_BASE).
    pub fn send_raw(&mut self, descs: &[RawDesc]) -> u16 {
        self.post_raw(TXQ_INDEX, descs)
    }

    fn post_raw(&mut self, q: usize, descs: &[RawDesc]) -> u16 {
        let descs: Vec<Desc> = descs
            .iter()
            .map(|&(addr, len, flags, next)| (addr, len, flags as u16, RAW_DESC_BASE + next))
            .collect();
        let queue = if q == RXQ_INDEX { &self.rxq } else { &self.txq };
        queue.add_chain(RAW_DESC_BASE, &descs);
        self.kick(q);
        RAW_DESC_BASE
    }

    /// Queues a TX packet; false if no TX buffer is free (the device has not used them yet).
    pub fn try_send(&mut self, hdr: &Header, type_: u16, data: &[u8]) -> bool {
        self.reap_tx();
        let Some(slot) = self.tx_free.pop() else {
            return false;
        };
        assert!(data.len() <= MAX_PKT_BUF_SIZE as usize);
        let base = TX_BASE + u64::from(slot) * TX_SLOT_SIZE;
        let mut h = *hdr;
        h.len = data.len() as u32;
        self.mem
            .write_slice(&encode_header(&h, type_), GuestAddress(base))
            .unwrap();
        if data.is_empty() {
            let hdr = (base, PKT_HEADER_SIZE as u32, 0, 0);
            self.txq.add_chain(2 * slot, &[hdr]);
        } else {
            self.mem
                .write_slice(data, GuestAddress(base + 0x100))
                .unwrap();
            let n = VRING_DESC_F_NEXT as u16;
            self.txq.add_chain(
                2 * slot,
                &[
                    (base, PKT_HEADER_SIZE as u32, n, 2 * slot + 1),
                    (base + 0x100, data.len() as u32, 0, 0),
                ],
            );
        }
        self.kick(TXQ_INDEX);
        true
    }

    /// Queues a TX packet, running the device until a TX buffer is free.
    pub fn send(&mut self, hdr: &Header, data: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.try_send(hdr, VSOCK_TYPE_STREAM, data) {
            assert!(Instant::now() < deadline, "TX queue never drained");
            self.run_once(10);
        }
    }

    fn reap_tx(&mut self) {
        for (eid, elen) in self.txq.take_used(&mut self.tx_used_seen) {
            self.tx_used.push((eid, elen));
            let id = eid as u16;
            if id < RAW_DESC_BASE {
                assert_eq!(id % 2, 0, "used id {id} is not a chain head we posted");
                self.tx_free.push(id / 2);
            }
        }
    }

    /// RX packets the device delivered since the last call (their buffers are free again but not
    /// re-posted).
    pub fn take_rx(&mut self) -> Vec<Pkt> {
        let mut out = Vec::new();
        for (eid, elen) in self.rxq.take_used(&mut self.rx_used_seen) {
            let id = eid as u16;
            if id >= RAW_DESC_BASE {
                assert_eq!(elen, 0, "a malformed RX chain must be returned unused");
                self.rx_dropped.push(eid);
                continue;
            }
            assert_eq!(id % 2, 0);
            let slot = id / 2;
            if elen == 0 {
                self.rx_dropped.push(eid);
                self.rx_free.push(slot);
                continue;
            }
            let base = RX_BASE + u64::from(slot) * RX_SLOT_SIZE;
            let mut hb = [0u8; PKT_HEADER_SIZE];
            self.mem.read_slice(&mut hb, GuestAddress(base)).unwrap();
            let (hdr, type_) = decode_header(&hb);
            assert_eq!(
                elen as usize,
                PKT_HEADER_SIZE + hdr.len as usize,
                "used length must match the header"
            );
            assert!(hdr.len <= RX_DATA_LEN);
            let mut data = vec![0u8; hdr.len as usize];
            self.mem
                .read_slice(&mut data, GuestAddress(base + 0x100))
                .unwrap();
            out.push(Pkt { hdr, type_, data });
            self.rx_free.push(slot);
        }
        out
    }

    /// Runs the device and collects RX packets (re-posting buffers) until `done` holds for the
    /// collected packets, or panics after `limit`.
    pub fn pump_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&[Pkt]) -> bool,
    ) -> Vec<Pkt> {
        let deadline = Instant::now() + limit;
        let mut got = Vec::new();
        loop {
            self.post_rx();
            self.run_once(5);
            got.extend(self.take_rx());
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "timed out; got {got:#?}");
        }
    }

    /// Runs `rounds` device rounds (post RX buffers, one event-loop pass of at most 5 ms,
    /// collect RX packets): a known number of host-side events, not a wall-clock window.
    pub fn pump_rounds(&mut self, rounds: usize) -> Vec<Pkt> {
        let mut got = Vec::new();
        for _ in 0..rounds {
            self.post_rx();
            self.run_once(5);
            got.extend(self.take_rx());
        }
        got
    }

    /// A host client of the device's socket that has sent `line`.
    pub fn dial(&self, line: &[u8]) -> UnixStream {
        let mut s = UnixStream::connect(&self.uds).unwrap();
        s.write_all(line).unwrap();
        s
    }

    pub fn conn_count(&self) -> usize {
        self.dev.lock().unwrap().connection_count()
    }
}

/// Deterministic pseudo-random bytes.
pub(super) fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Host side of a test: a Unix stream with non-blocking pumping of bytes both ways.
struct HostPeer {
    s: UnixStream,
    out: Vec<u8>,
    out_off: usize,
    input: Vec<u8>,
    eof: bool,
    shut_wr_when_sent: bool,
}

impl HostPeer {
    fn new(s: UnixStream) -> HostPeer {
        s.set_nonblocking(true).unwrap();
        HostPeer {
            s,
            out: Vec::new(),
            out_off: 0,
            input: Vec::new(),
            eof: false,
            shut_wr_when_sent: false,
        }
    }

    fn step(&mut self) {
        while self.out_off < self.out.len() {
            match self.s.write(&self.out[self.out_off..]) {
                Ok(n) => self.out_off += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("host write: {e}"),
            }
        }
        if self.shut_wr_when_sent && self.out_off == self.out.len() {
            self.s.shutdown(std::net::Shutdown::Write).unwrap();
            self.shut_wr_when_sent = false;
        }
        let mut buf = [0u8; 65536];
        while !self.eof {
            match self.s.read(&mut buf) {
                Ok(0) => self.eof = true,
                Ok(n) => self.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::ConnectionReset => self.eof = true,
                Err(e) => panic!("host read: {e}"),
            }
        }
    }
}

/// The guest end of one connection, with credit accounting both ways.
#[derive(Debug, Default)]
struct GuestConn {
    /// Host-side port.
    host_port: u32,
    /// Guest-side port.
    port: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
    last_fwd_sent: u32,
    rx: Vec<u8>,
    host_buf_alloc: u32,
    host_fwd_cnt: u32,
    tx: Vec<u8>,
    tx_off: usize,
    shutdown_when_sent: Option<u32>,
    got_shutdown: u32,
    got_rst: bool,
}

impl GuestConn {
    fn new(port: u32, host_port: u32, buf_alloc: u32) -> GuestConn {
        GuestConn {
            port,
            host_port,
            buf_alloc,
            ..GuestConn::default()
        }
    }

    fn hdr(&self, op: u16) -> Header {
        let mut h = ghdr(op, self.port, self.host_port);
        h.buf_alloc = self.buf_alloc;
        h.fwd_cnt = self.fwd_cnt;
        h
    }

    /// Takes one packet the device sent on this connection; the guest consumes data at once.
    fn on_rx(&mut self, p: &Pkt) {
        assert_eq!(p.hdr.src_cid, VSOCK_HOST_CID);
        assert_eq!(p.hdr.dst_cid, GUEST_CID);
        assert_eq!(p.type_, VSOCK_TYPE_STREAM);
        self.host_buf_alloc = p.hdr.buf_alloc;
        self.host_fwd_cnt = p.hdr.fwd_cnt;
        match p.hdr.op {
            VSOCK_OP_RW => {
                let in_flight = (self.rx.len() as u32 + p.data.len() as u32) - self.fwd_cnt;
                assert!(
                    in_flight <= self.buf_alloc,
                    "device exceeded the guest's credit: {in_flight} > {}",
                    self.buf_alloc
                );
                self.rx.extend_from_slice(&p.data);
                self.fwd_cnt = self.rx.len() as u32;
            }
            VSOCK_OP_SHUTDOWN => self.got_shutdown |= p.hdr.flags,
            VSOCK_OP_RST => self.got_rst = true,
            _ => {}
        }
    }

    /// Sends what credit allows (and credit updates) through the driver.
    fn step(&mut self, d: &mut Driver) {
        if self.fwd_cnt.wrapping_sub(self.last_fwd_sent) >= self.buf_alloc / 2 {
            d.send(&self.hdr(VSOCK_OP_CREDIT_UPDATE), &[]);
            self.last_fwd_sent = self.fwd_cnt;
        }
        while self.tx_off < self.tx.len() {
            let in_flight = (self.tx_off as u32).wrapping_sub(self.host_fwd_cnt);
            let credit = self.host_buf_alloc.saturating_sub(in_flight) as usize;
            let n = credit
                .min(self.tx.len() - self.tx_off)
                .min(MAX_PKT_BUF_SIZE as usize);
            if n == 0 {
                break;
            }
            let h = self.hdr(VSOCK_OP_RW);
            let chunk = self.tx[self.tx_off..self.tx_off + n].to_vec();
            if !d.try_send(&h, VSOCK_TYPE_STREAM, &chunk) {
                break;
            }
            self.last_fwd_sent = self.fwd_cnt;
            self.tx_off += n;
        }
        if self.tx_off == self.tx.len() {
            if let Some(flags) = self.shutdown_when_sent.take() {
                d.send(&self.hdr(VSOCK_OP_SHUTDOWN).with_flags(flags), &[]);
            }
        }
    }
}

impl Header {
    fn with_flags(mut self, flags: u32) -> Header {
        self.flags = flags;
        self
    }
}

/// Routes packets to guest connections by (guest port, host port).
fn route(conns: &mut [GuestConn], pkts: &[Pkt]) {
    for p in pkts {
        if let Some(c) = conns
            .iter_mut()
            .find(|c| c.port == p.hdr.dst_port && c.host_port == p.hdr.src_port)
        {
            c.on_rx(p);
        }
    }
}

/// Runs device, guest connections and host peers until `done`.
fn pump_all(
    d: &mut Driver,
    conns: &mut [GuestConn],
    hosts: &mut [HostPeer],
    limit: Duration,
    mut done: impl FnMut(&[GuestConn], &[HostPeer]) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        for h in hosts.iter_mut() {
            h.step();
        }
        for c in conns.iter_mut() {
            c.step(d);
        }
        d.post_rx();
        d.run_once(2);
        let pkts = d.take_rx();
        route(conns, &pkts);
        if done(conns, hosts) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out; guest conns: {:?}",
            conns
                .iter()
                .map(|c| (c.port, c.rx.len(), c.tx_off, c.got_shutdown, c.got_rst))
                .collect::<Vec<_>>()
        );
    }
}

/// [`pump_all`] for one guest connection and its host peer.
fn pump_pair(
    d: &mut Driver,
    g: &mut GuestConn,
    h: &mut HostPeer,
    limit: Duration,
    mut done: impl FnMut(&GuestConn, &HostPeer) -> bool,
) {
    let (g, h) = (std::slice::from_mut(g), std::slice::from_mut(h));
    pump_all(d, g, h, limit, |g, h| done(&g[0], &h[0]));
}

/// [`pump_all`] for one guest connection whose host peer does not take part.
fn pump_guest(
    d: &mut Driver,
    g: &mut GuestConn,
    limit: Duration,
    mut done: impl FnMut(&GuestConn) -> bool,
) {
    pump_all(d, std::slice::from_mut(g), &mut [], limit, |g, _| {
        done(&g[0])
    });
}

/// Host connects through the Unix socket to guest port `port`; the guest accepts. Returns the
/// host peer and the guest end.
fn host_connect(d: &mut Driver, port: u32, guest_buf_alloc: u32) -> (HostPeer, GuestConn) {
    let s = d.dial(format!("CONNECT {port}\n").as_bytes());
    let got = d.pump_until(Duration::from_secs(5), |p| {
        p.iter().any(|p| p.hdr.op == VSOCK_OP_REQUEST)
    });
    let req = got.iter().find(|p| p.hdr.op == VSOCK_OP_REQUEST).unwrap();
    assert_eq!(req.hdr.dst_port, port);
    assert_eq!(req.hdr.dst_cid, GUEST_CID);
    assert_eq!(req.hdr.src_cid, VSOCK_HOST_CID);
    assert_eq!(req.type_, VSOCK_TYPE_STREAM);
    let host_port = req.hdr.src_port;
    let mut g = GuestConn::new(port, host_port, guest_buf_alloc);
    g.on_rx(req);
    d.send(&g.hdr(VSOCK_OP_RESPONSE), &[]);
    let mut h = HostPeer::new(s);
    let want = format!("OK {host_port}\n");
    pump_pair(d, &mut g, &mut h, Duration::from_secs(5), |_, h| {
        h.input.len() >= want.len()
    });
    assert_eq!(String::from_utf8_lossy(&h.input), want);
    h.input.clear();
    (h, g)
}

/// The guest connects to host port `port` (a listener at `<uds>_<port>`).
fn guest_connect(
    d: &mut Driver,
    listener: &UnixListener,
    port: u32,
    guest_port: u32,
    buf_alloc: u32,
) -> (HostPeer, GuestConn) {
    let mut g = GuestConn::new(guest_port, port, buf_alloc);
    d.send(&g.hdr(VSOCK_OP_REQUEST), &[]);
    let got = d.pump_until(Duration::from_secs(5), |p| {
        p.iter().any(|p| p.hdr.dst_port == guest_port)
    });
    let resp = got.iter().find(|p| p.hdr.dst_port == guest_port).unwrap();
    assert_eq!(resp.hdr.op, VSOCK_OP_RESPONSE, "{resp:?}");
    assert_eq!(resp.hdr.src_port, port);
    g.on_rx(resp);
    listener.set_nonblocking(false).unwrap();
    let (s, _) = listener.accept().unwrap();
    (HostPeer::new(s), g)
}

/// A driver whose guest connected from `guest_port` to a host listener on `port`, with
/// `buf_alloc` bytes of guest buffer: the driver, the listener, the host peer, the guest end.
fn guest_connected(
    tag: &str,
    port: u32,
    guest_port: u32,
    buf_alloc: u32,
) -> (Driver, UnixListener, HostPeer, GuestConn) {
    let mut d = Driver::new(tag);
    let l = listen_port(&d, port);
    let (h, g) = guest_connect(&mut d, &l, port, guest_port, buf_alloc);
    (d, l, h, g)
}

fn listen_port(d: &Driver, port: u32) -> UnixListener {
    let mut p = d.uds.as_os_str().to_owned();
    p.push(format!("_{port}"));
    UnixListener::bind(PathBuf::from(p)).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Behaviour.

#[test]
fn host_to_guest_listener_data_both_ways_and_half_close() {
    let mut d = Driver::new("h2g");
    let irqs = d.irq_count();
    let (mut h, mut g) = host_connect(&mut d, 1234, 64 * 1024);
    assert_eq!(d.conn_count(), 1);
    assert!(
        d.irq_count() > irqs,
        "used buffers must interrupt the guest"
    );
    let host_data = pattern(1, 300 * 1024 + 17);
    let guest_data = pattern(2, 500 * 1024 + 3);
    h.out = host_data.clone();
    h.shut_wr_when_sent = true;
    g.tx = guest_data.clone();
    // Host sends everything then half-closes; the guest sees the bytes, then SHUTDOWN(SEND).
    pump_pair(&mut d, &mut g, &mut h, Duration::from_secs(20), |g, h| {
        g.got_shutdown & VSOCK_FLAGS_SHUTDOWN_SEND != 0 && h.input.len() == guest_data.len()
    });
    assert!(g.rx == host_data, "host->guest bytes differ");
    assert_eq!(
        g.got_shutdown, VSOCK_FLAGS_SHUTDOWN_SEND,
        "a half close is not a full close"
    );
    assert!(h.input == guest_data, "guest->host bytes differ");
    assert!(!h.eof);
    // The half-closed host still receives: the guest replies, then closes.
    g.tx.extend_from_slice(b"reply after half close");
    g.shutdown_when_sent = Some(VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND);
    pump_pair(&mut d, &mut g, &mut h, Duration::from_secs(10), |g, h| {
        h.eof && g.got_rst
    });
    assert!(h.input.ends_with(b"reply after half close"));
    assert_eq!(h.input.len(), guest_data.len() + 22);
    assert_eq!(d.conn_count(), 0);
}

#[test]
fn guest_to_host_listener_data_both_ways_and_host_close() {
    let (mut d, _l, mut h, mut g) = guest_connected("g2h", 5000, 40_000, 128 * 1024);
    let host_data = pattern(3, 1 << 20);
    let guest_data = pattern(4, (1 << 20) + 1);
    h.out = host_data.clone();
    g.tx = guest_data.clone();
    pump_pair(&mut d, &mut g, &mut h, Duration::from_secs(30), |g, h| {
        g.rx.len() == host_data.len() && h.input.len() == guest_data.len()
    });
    assert!(g.rx == host_data);
    assert!(h.input == guest_data);
    // The host closes: the guest sees SHUTDOWN with both flags and resets.
    drop(h);
    let got = d.pump_until(Duration::from_secs(5), |p| {
        p.iter().any(|p| p.hdr.op == VSOCK_OP_SHUTDOWN)
    });
    let sd = got.iter().find(|p| p.hdr.op == VSOCK_OP_SHUTDOWN).unwrap();
    assert_eq!(
        sd.hdr.flags,
        VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND
    );
    assert_eq!(d.conn_count(), 1);
    d.send(&g.hdr(VSOCK_OP_RST), &[]);
    let got = d.pump_rounds(20);
    assert!(got.is_empty(), "no reply to the guest's RST: {got:?}");
    assert_eq!(d.conn_count(), 0);
}

#[test]
fn guest_close_flushes_buffered_bytes_then_resets() {
    let (mut d, _l, mut h, mut g) = guest_connected("gclose", 5001, 40_001, 64 * 1024);
    // The host does not read yet: more than the socket buffer is sent, so the device buffers.
    let data = pattern(5, 240 * 1024);
    g.tx = data.clone();
    g.shutdown_when_sent = Some(VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND);
    pump_guest(&mut d, &mut g, Duration::from_secs(10), |g| {
        g.tx_off == data.len() && g.shutdown_when_sent.is_none()
    });
    d.pump_rounds(10);
    // Now the host reads: it gets every byte, then EOF, and the guest its RST.
    pump_pair(&mut d, &mut g, &mut h, Duration::from_secs(10), |g, h| {
        h.eof && g.got_rst
    });
    assert!(h.input == data);
    assert_eq!(d.conn_count(), 0);
}

/// Runs device and host peer while the guest consumes what arrives but sends no credit update,
/// until the device asks for credit or the guest holds `until` bytes (a generous deadline
/// otherwise), then 20 more rounds to show that nothing else comes. True if the device asked.
fn pump_without_credit_updates(
    d: &mut Driver,
    g: &mut GuestConn,
    h: &mut HostPeer,
    until: usize,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got_credit_request = false;
    let mut settle = 20;
    while settle > 0 {
        if got_credit_request || g.rx.len() >= until {
            settle -= 1;
        } else if Instant::now() > deadline {
            break;
        }
        h.step();
        d.post_rx();
        d.run_once(2);
        for p in d.take_rx() {
            got_credit_request |= p.hdr.op == VSOCK_OP_CREDIT_REQUEST;
            g.on_rx(&p);
        }
    }
    got_credit_request
}

#[test]
fn flow_control_host_side_stops_reading_without_guest_credit() {
    let mut d = Driver::new("credit");
    let (mut h, mut g) = host_connect(&mut d, 77, 4096);
    h.out = pattern(6, 64 * 1024);
    // The guest consumes but never tells the device (no credit update).
    let got_credit_request = pump_without_credit_updates(&mut d, &mut g, &mut h, 4096);
    assert_eq!(g.rx.len(), 4096, "exactly the guest's credit may be sent");
    assert!(
        got_credit_request,
        "the device must ask for credit when it has none"
    );
    assert!(g.rx[..] == h.out[..4096]);
    // A credit update lets more through, again exactly up to the credit.
    d.send(&g.hdr(VSOCK_OP_CREDIT_UPDATE), &[]);
    pump_without_credit_updates(&mut d, &mut g, &mut h, 8192);
    assert_eq!(g.rx.len(), 8192);
    // With regular updates, everything arrives.
    let want = h.out.clone();
    pump_pair(&mut d, &mut g, &mut h, Duration::from_secs(10), |g, _| {
        g.rx.len() == want.len()
    });
    assert!(g.rx == want);
}

#[test]
fn credit_request_from_guest_gets_credit_update() {
    let mut d = Driver::new("creq");
    let (_h, g) = host_connect(&mut d, 78, 4096);
    d.send(&g.hdr(VSOCK_OP_CREDIT_REQUEST), &[]);
    let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
    assert_eq!(got[0].hdr.op, VSOCK_OP_CREDIT_UPDATE);
    assert_eq!(got[0].hdr.buf_alloc, CONN_TX_BUF_SIZE);
    assert_eq!(got[0].hdr.fwd_cnt, 0);
}

#[test]
fn guest_overrunning_its_credit_is_reset() {
    let (mut d, _l, h, g) = guest_connected("overrun", 5002, 40_002, 64 * 1024);
    // The host never reads; the guest ignores the credit the device gives it.
    let chunk = pattern(7, MAX_PKT_BUF_SIZE as usize);
    let mut rst = false;
    for _ in 0..64 {
        d.send(&g.hdr(VSOCK_OP_RW), &chunk);
        let got = d.pump_rounds(1);
        if got
            .iter()
            .any(|p| p.hdr.op == VSOCK_OP_RST && p.hdr.dst_port == 40_002)
        {
            rst = true;
            break;
        }
    }
    assert!(rst, "a guest sending 4 MiB past its credit must be reset");
    assert_eq!(d.conn_count(), 0);
    drop(h);
}

#[test]
fn rst_for_unknown_ports_and_connections() {
    let mut d = Driver::new("rst");
    // REQUEST to a host port nobody listens on.
    d.send(&ghdr(VSOCK_OP_REQUEST, 41_000, 9999), &[]);
    let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.hdr.op, VSOCK_OP_RST);
    assert_eq!((r.hdr.src_port, r.hdr.dst_port), (9999, 41_000));
    assert_eq!((r.hdr.src_cid, r.hdr.dst_cid), (VSOCK_HOST_CID, GUEST_CID));
    // Data, SHUTDOWN, credit ops for a connection that does not exist.
    for op in [
        VSOCK_OP_RW,
        VSOCK_OP_SHUTDOWN,
        VSOCK_OP_CREDIT_UPDATE,
        VSOCK_OP_RESPONSE,
        0,
        99,
    ] {
        d.send(&ghdr(op, 41_001, 10), b"x");
        let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
        assert_eq!(got[0].hdr.op, VSOCK_OP_RST, "op {op}");
    }
    // An RST for nothing is not answered.
    d.send(&ghdr(VSOCK_OP_RST, 41_002, 10), &[]);
    assert!(d.pump_rounds(20).is_empty());
    assert_eq!(d.conn_count(), 0);
}

#[test]
fn guest_refusing_a_host_connection_closes_the_host_stream() {
    let mut d = Driver::new("refuse");
    let mut s = d.dial(b"CONNECT 4321\n");
    let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
    assert_eq!(got[0].hdr.op, VSOCK_OP_REQUEST);
    d.send(&ghdr(VSOCK_OP_RST, 4321, got[0].hdr.src_port), &[]);
    // Closed with no OK line.
    pump_until_closed(&mut d, &mut s, Duration::from_secs(5));
    assert_eq!(d.conn_count(), 0);
}

/// Runs the device until it closes `s`: EOF, or a reset (closing a socket with unread input
/// resets it), with nothing written.
fn pump_until_closed(d: &mut Driver, s: &mut UnixStream, limit: Duration) {
    s.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => panic!("unexpected reply {:?}", &buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
        assert!(
            Instant::now() < deadline,
            "the device never closed the stream"
        );
        d.pump_rounds(2);
    }
}

#[test]
fn bad_connect_lines_are_closed() {
    let mut d = Driver::new("line");
    for line in [
        &b"LISTEN 5\n"[..],
        b"CONNECT x\n",
        b"CONNECT 99999999999\n",
        &[b'A'; 64][..],
    ] {
        let mut s = d.dial(line);
        pump_until_closed(&mut d, &mut s, Duration::from_secs(5));
    }
    // A line that arrives in pieces is served: a partial line is not closed at once...
    let mut s = d.dial(b"CONN");
    d.pump_rounds(4);
    s.write_all(b"ECT 4998\n").unwrap();
    let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
    assert_eq!(
        got[0].hdr.op, VSOCK_OP_REQUEST,
        "the finished line reaches the guest"
    );
    assert_eq!(got[0].hdr.dst_port, 4998);
    drop(s);
    d.pump_until(Duration::from_secs(5), |p| {
        p.iter().any(|p| p.hdr.op == VSOCK_OP_RST)
    });
    // ...and a client that never finishes its line is closed by the timeout.
    let mut s = d.dial(b"CONN");
    pump_until_closed(&mut d, &mut s, CONNECT_LINE_TIMEOUT * 10);
    // Nothing reached the guest.
    assert!(d.take_rx().is_empty());
    assert_eq!(d.conn_count(), 0);
}

#[test]
fn guest_that_never_answers_a_request_times_out() {
    let mut d = Driver::new("reqto");
    let mut s = d.dial(b"CONNECT 4322\n");
    let got = d.pump_until(CONN_REQUEST_TIMEOUT * 3, |p| {
        p.iter().any(|p| p.hdr.op == VSOCK_OP_RST)
    });
    assert_eq!(got[0].hdr.op, VSOCK_OP_REQUEST);
    let rst = got.iter().find(|p| p.hdr.op == VSOCK_OP_RST).unwrap();
    assert_eq!(rst.hdr.src_port, got[0].hdr.src_port);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    assert!(buf.is_empty());
    assert_eq!(d.conn_count(), 0);
}

#[test]
fn guest_that_never_finishes_shutdown_is_reset() {
    let mut d = Driver::new("sdto");
    let (h, g) = host_connect(&mut d, 90, 4096);
    drop(h);
    let got = d.pump_until(Duration::from_secs(5), |p| {
        p.iter().any(|p| p.hdr.op == VSOCK_OP_SHUTDOWN)
    });
    assert_eq!(d.conn_count(), 1);
    // The guest ignores the SHUTDOWN: the device waits for it (a few rounds change nothing)...
    let early = d.pump_rounds(4);
    assert!(early.iter().all(|p| p.hdr.op != VSOCK_OP_RST), "{early:#?}");
    assert_eq!(d.conn_count(), 1);
    // ...and resets the connection once the shutdown timeout has passed.
    let got2 = d.pump_until(CONN_SHUTDOWN_TIMEOUT * 5, |p| {
        p.iter().any(|p| p.hdr.op == VSOCK_OP_RST)
    });
    let rst = got2.iter().find(|p| p.hdr.op == VSOCK_OP_RST).unwrap();
    assert_eq!(rst.hdr.dst_port, g.port);
    assert_eq!(d.conn_count(), 0);
    drop(got);
}

#[test]
fn wrong_cids_are_dropped_and_bad_types_reset() {
    let mut d = Driver::new("cids");
    let l = listen_port(&d, 6000);
    l.set_nonblocking(true).unwrap();
    let mut h = ghdr(VSOCK_OP_REQUEST, 42_000, 6000);
    h.src_cid = 99;
    d.send(&h, &[]);
    let mut h = ghdr(VSOCK_OP_REQUEST, 42_001, 6000);
    h.dst_cid = 5;
    d.send(&h, &[]);
    let mut h = ghdr(VSOCK_OP_REQUEST, 42_002, 6000);
    h.src_cid = u64::MAX;
    h.dst_cid = 0;
    d.send(&h, &[]);
    assert!(d.pump_rounds(20).is_empty());
    assert!(
        l.accept().is_err(),
        "a packet with wrong CIDs must not connect"
    );
    // SEQPACKET (type 2) and garbage types are not supported: RST.
    for t in [2u16, 0, 0xffff] {
        assert!(d.try_send(&ghdr(VSOCK_OP_REQUEST, 42_003, 6000), t, &[]));
        let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
        assert_eq!(got[0].hdr.op, VSOCK_OP_RST, "type {t}");
    }
    assert!(l.accept().is_err());
    assert_eq!(d.conn_count(), 0);
}

#[test]
fn bad_op_on_a_live_connection_resets_it() {
    let mut d = Driver::new("badop");
    let (mut h, g) = host_connect(&mut d, 91, 4096);
    d.send(&g.hdr(0x1234), &[]);
    let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
    assert_eq!(got[0].hdr.op, VSOCK_OP_RST);
    h.s.set_nonblocking(false).unwrap();
    h.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    h.s.read_to_end(&mut buf).unwrap();
    assert_eq!(d.conn_count(), 0);
    // A second REQUEST on a live connection's ports ends it too.
    let (_h2, g2) = host_connect(&mut d, 92, 4096);
    d.send(&g2.hdr(VSOCK_OP_REQUEST), &[]);
    let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
    assert_eq!(got[0].hdr.op, VSOCK_OP_RST);
    assert_eq!(d.conn_count(), 0);
}

#[test]
fn many_concurrent_connections_both_directions() {
    let mut d = Driver::new("many");
    let l = listen_port(&d, 7000);
    let mut hosts = Vec::new();
    let mut guests = Vec::new();
    // 24 host-initiated and 24 guest-initiated connections, all open at once.
    for i in 0..24u32 {
        let (h, g) = host_connect(&mut d, 2000 + i, 32 * 1024);
        hosts.push(h);
        guests.push(g);
    }
    for i in 0..24u32 {
        let (h, g) = guest_connect(&mut d, &l, 7000, 50_000 + i, 32 * 1024);
        hosts.push(h);
        guests.push(g);
    }
    assert_eq!(d.conn_count(), 48);
    for (i, (h, g)) in hosts.iter_mut().zip(guests.iter_mut()).enumerate() {
        h.out = pattern(100 + i as u64, 40_000 + i * 1000);
        g.tx = pattern(200 + i as u64, 30_000 + i * 777);
    }
    let want_h: Vec<Vec<u8>> = hosts.iter().map(|h| h.out.clone()).collect();
    let want_g: Vec<Vec<u8>> = guests.iter().map(|g| g.tx.clone()).collect();
    pump_all(
        &mut d,
        &mut guests,
        &mut hosts,
        Duration::from_secs(60),
        |g, h| {
            g.iter().zip(&want_h).all(|(g, w)| g.rx.len() == w.len())
                && h.iter().zip(&want_g).all(|(h, w)| h.input.len() == w.len())
        },
    );
    for i in 0..48 {
        assert!(guests[i].rx == want_h[i], "conn {i}: host->guest differs");
        assert!(hosts[i].input == want_g[i], "conn {i}: guest->host differs");
    }
    // Everyone closes from the guest side.
    for g in guests.iter_mut() {
        g.shutdown_when_sent = Some(VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND);
    }
    pump_all(
        &mut d,
        &mut guests,
        &mut hosts,
        Duration::from_secs(20),
        |g, h| g.iter().all(|g| g.got_rst) && h.iter().all(|h| h.eof),
    );
    assert_eq!(d.conn_count(), 0);
}

#[test]
fn reset_closes_connections_and_the_device_works_again() {
    let mut d = Driver::new("reset");
    let (mut h, _g) = host_connect(&mut d, 93, 4096);
    d.reset_and_reactivate();
    assert_eq!(d.conn_count(), 0);
    h.s.set_nonblocking(false).unwrap();
    h.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    h.s.read_to_end(&mut buf).unwrap();
    // The old queue eventfds are gone from the loop and the new ones work.
    let (mut h, mut g) = host_connect(&mut d, 94, 64 * 1024);
    h.out = b"after reset".to_vec();
    pump_pair(&mut d, &mut g, &mut h, Duration::from_secs(5), |g, _| {
        g.rx.len() == 11
    });
    assert_eq!(g.rx, b"after reset");
}

#[test]
fn host_connects_before_the_driver_is_ready() {
    let dir = TempDir::new("early");
    let uds = dir.0.join("v.sock");
    let dev = Arc::new(Mutex::new(Vsock::new(GUEST_CID, uds.clone()).unwrap()));
    let mut em = EventManager::<Arc<Mutex<Vsock>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    let mut s = UnixStream::connect(&uds).unwrap();
    s.write_all(b"CONNECT 5\n").unwrap();
    for _ in 0..10 {
        em.run_with_timeout(5).unwrap();
    }
    assert_eq!(dev.lock().unwrap().connection_count(), 1);
    assert!(!dev.lock().unwrap().is_activated());
    drop(em);
    drop(dev);
    assert!(!uds.exists());
}

// ---------------------------------------------------------------------------------------------
// Hostile descriptor chains. Each must be returned to the guest unused (TX: used length 0; RX:
// length 0, nothing written), and the device must keep working.

/// Checks that the device still serves a normal connection.
fn assert_still_works(d: &mut Driver) {
    d.send(&ghdr(VSOCK_OP_REQUEST, 43_999, 12_345), &[]);
    let got = d.pump_until(Duration::from_secs(5), |p| {
        p.iter().any(|p| p.hdr.dst_port == 43_999)
    });
    assert!(got
        .iter()
        .any(|p| p.hdr.op == VSOCK_OP_RST && p.hdr.dst_port == 43_999));
}

const MEM_END: u64 = MEM_SIZE as u64;

/// A descriptor as the tests write it: (addr, len, flags, next relative to RAW_DESC_BASE).
type RawDesc = (u64, u32, u32, u16);

#[test]
fn malformed_tx_chains_are_dropped() {
    let mut d = Driver::new("badtx");
    let hdr_addr = 0xf0_0000u64;
    let data_addr = 0xf1_0000u64;
    // A REQUEST header whose effect (an RST) would show if the chain were used.
    let mut h = ghdr(VSOCK_OP_RW, 44_000, 1);
    h.len = 16;
    d.mem
        .write_slice(
            &encode_header(&h, VSOCK_TYPE_STREAM),
            GuestAddress(hdr_addr),
        )
        .unwrap();
    let mut hlong = h;
    hlong.len = MAX_PKT_BUF_SIZE + 1;
    d.mem
        .write_slice(
            &encode_header(&hlong, VSOCK_TYPE_STREAM),
            GuestAddress(hdr_addr + 0x100),
        )
        .unwrap();
    let mut hhuge = h;
    hhuge.len = u32::MAX;
    d.mem
        .write_slice(
            &encode_header(&hhuge, VSOCK_TYPE_STREAM),
            GuestAddress(hdr_addr + 0x200),
        )
        .unwrap();
    let n = VRING_DESC_F_NEXT;
    let w = VRING_DESC_F_WRITE;
    let cases: Vec<(&str, Vec<RawDesc>)> = vec![
        ("header outside memory", vec![(MEM_END + 0x1000, 44, 0, 0)]),
        (
            "header straddling the end of memory",
            vec![(MEM_END - 20, 44, 0, 0)],
        ),
        ("header at u64::MAX", vec![(u64::MAX - 10, 44, 0, 0)]),
        ("zero-length header", vec![(hdr_addr, 0, 0, 0)]),
        ("short header", vec![(hdr_addr, 43, 0, 0)]),
        ("write-only header", vec![(hdr_addr, 44, w, 0)]),
        ("data missing", vec![(hdr_addr, 44, 0, 0)]),
        (
            "data outside memory",
            vec![(hdr_addr, 44, n, 1), (MEM_END, 16, 0, 0)],
        ),
        (
            "data shorter than len",
            vec![(hdr_addr, 44, n, 1), (data_addr, 15, 0, 0)],
        ),
        (
            "zero-length data",
            vec![(hdr_addr, 44, n, 1), (data_addr, 0, 0, 0)],
        ),
        (
            "write-only data",
            vec![(hdr_addr, 44, n, 1), (data_addr, 16, w, 0)],
        ),
        (
            "len above the maximum",
            vec![(hdr_addr + 0x100, 44, n, 1), (data_addr, u32::MAX, 0, 0)],
        ),
        ("len u32::MAX", vec![(hdr_addr + 0x200, u32::MAX, 0, 0)]),
        (
            "descriptor loop",
            vec![(hdr_addr, 44, n, 1), (data_addr, 8, n, 1)],
        ),
        ("self loop on the head", vec![(hdr_addr, 8, n, 0)]),
        ("next out of the table", vec![(hdr_addr, 44, n, 300)]),
        (
            "indirect table outside memory",
            vec![(MEM_END + 0x10, 64, VRING_DESC_F_INDIRECT, 0)],
        ),
        (
            "indirect table with bad size",
            vec![(data_addr, 17, VRING_DESC_F_INDIRECT, 0)],
        ),
    ];
    for (name, descs) in &cases {
        let before = d.tx_used.len();
        let head = d.send_raw(descs);
        let got = d.pump_rounds(4);
        d.reap_tx();
        assert!(
            got.is_empty(),
            "{name}: a malformed chain must have no effect, got {got:?}"
        );
        assert_eq!(
            &d.tx_used[before..],
            &[(u32::from(head), 0)],
            "{name}: the chain must be returned with used length 0"
        );
    }
    // Too many descriptors: a 200-descriptor chain (the packet uses the first two).
    let long: Vec<RawDesc> = (0..100u16)
        .map(|i| {
            if i == 0 {
                (hdr_addr, 44, n, 1)
            } else if i < 99 {
                (data_addr, 16, n, i + 1)
            } else {
                (data_addr, 16, 0, 0)
            }
        })
        .collect();
    d.send_raw(&long);
    let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
    assert_eq!(
        got[0].hdr.op, VSOCK_OP_RST,
        "a long but valid chain is a valid packet"
    );
    assert_still_works(&mut d);
}

#[test]
fn malformed_rx_chains_are_dropped_without_writing() {
    let ro = 0xe0_0000u64;
    let canary = vec![0x5au8; 4096];
    let n = VRING_DESC_F_NEXT;
    let w = VRING_DESC_F_WRITE;
    let cases: Vec<(&str, Vec<RawDesc>)> = vec![
        (
            "read-only header",
            vec![(ro, 44, n, 1), (ro + 0x100, 4096, w, 0)],
        ),
        (
            "read-only data",
            vec![(ro, 44, n | w, 1), (ro + 0x100, 4096, 0, 0)],
        ),
        (
            "header outside memory",
            vec![(MEM_END, 44, n | w, 1), (ro, 4096, w, 0)],
        ),
        (
            "short header",
            vec![(ro, 43, n | w, 1), (ro + 0x100, 4096, w, 0)],
        ),
        ("zero-length header", vec![(ro, 0, w, 0)]),
        ("only a header", vec![(ro, 44, w, 0)]),
        (
            "data outside memory",
            vec![(ro, 44, n | w, 1), (MEM_END - 100, 4096, w, 0)],
        ),
        (
            "oversized data",
            vec![(ro, 44, n | w, 1), (ro + 0x100, MAX_PKT_BUF_SIZE + 1, w, 0)],
        ),
        ("descriptor loop", vec![(ro, 8, n | w, 0)]),
        ("next out of the table", vec![(ro, 44, n | w, 400)]),
    ];
    for (name, descs) in &cases {
        // A fresh device each time, so that the malformed chain is the only RX buffer.
        let mut d = Driver::new("badrx");
        d.mem.write_slice(&canary, GuestAddress(ro)).unwrap();
        // Something to deliver: an RST for an unknown connection.
        d.send(&ghdr(VSOCK_OP_RW, 45_000, 1), b"x");
        let dropped_before = d.rx_dropped.len();
        let head = d.post_raw_rx(descs);
        d.run_once(5);
        d.run_once(5);
        let got = d.take_rx();
        assert!(got.is_empty(), "{name}: {got:?}");
        assert_eq!(
            &d.rx_dropped[dropped_before..],
            &[u32::from(head)],
            "{name}"
        );
        let mut now = vec![0u8; 4096];
        d.mem.read_slice(&mut now, GuestAddress(ro)).unwrap();
        if name.starts_with("read-only") {
            assert!(
                now == canary,
                "{name}: the device wrote to a read-only buffer"
            );
        }
        d.mem.write_slice(&canary, GuestAddress(ro)).unwrap();
        // The packet is still pending and goes into the next good buffer.
        let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
        assert_eq!(got[0].hdr.op, VSOCK_OP_RST, "{name}");
        assert_still_works(&mut d);
    }
    // A single writable descriptor holding header and data (Linux >= 6.2 layout) works.
    let mut d = Driver::new("badrx");
    d.send(&ghdr(VSOCK_OP_RW, 45_001, 1), b"x");
    let head = d.post_raw_rx(&[(ro, 44 + 4096, w, 0)]);
    d.run_once(5);
    d.run_once(5);
    let used = d.rxq.used_idx();
    assert_eq!(d.rxq.used_elem(used.wrapping_sub(1)), (u32::from(head), 44));
    d.rx_used_seen = used;
    let mut hb = [0u8; PKT_HEADER_SIZE];
    d.mem.read_slice(&mut hb, GuestAddress(ro)).unwrap();
    assert_eq!(decode_header(&hb).0.op, VSOCK_OP_RST);
    assert_still_works(&mut d);
}

#[test]
fn broken_avail_ring_does_not_panic() {
    let mut d = Driver::new("badring");
    // avail.idx jumps more than the queue size ahead: the queue refuses to pop.
    let idx = d.txq.avail_idx();
    d.txq.set_avail_idx(idx.wrapping_add(QSIZE + 5));
    d.kick(TXQ_INDEX);
    d.pump_rounds(4);
    // A ring entry naming a descriptor beyond the table.
    d.txq.set_avail_idx(idx);
    d.txq.push_avail(QSIZE + 7);
    d.kick(TXQ_INDEX);
    d.pump_rounds(4);
    d.rxq.push_avail(0xffff);
    d.send_raw(&[(0, 44, 0, 0)]);
    d.kick(RXQ_INDEX);
    d.pump_rounds(4);
    assert_eq!(d.conn_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Limits.

#[test]
fn rst_queue_is_bounded_and_tx_waits_instead_of_dropping() {
    let mut d = Driver::new("rstq");
    // No RX buffers: every packet for an unknown connection queues an RST. Once MAX_PENDING_RST
    // are queued the device stops taking TX buffers.
    // Send until the device has left 50 offered buffers in a row untaken.
    let mut sent = 0u32;
    let mut refused = 0;
    while refused < 50 {
        if d.try_send(
            &ghdr(VSOCK_OP_RW, 46_000 + sent, 1),
            VSOCK_TYPE_STREAM,
            b"x",
        ) {
            sent += 1;
            refused = 0;
        } else {
            refused += 1;
        }
        d.run_once(1);
    }
    d.reap_tx();
    assert_eq!(
        d.tx_used.len(),
        MAX_PENDING_RST,
        "TX must stop at the RST queue bound"
    );
    assert_eq!(sent as usize, MAX_PENDING_RST + TX_SLOTS as usize);
    // With RX buffers, every RST is delivered and the stalled TX buffers are taken.
    let got = d.pump_until(Duration::from_secs(10), |p| p.len() == sent as usize);
    let mut ports: Vec<u32> = got.iter().map(|p| p.hdr.dst_port).collect();
    ports.sort_unstable();
    assert_eq!(ports, (46_000..46_000 + sent).collect::<Vec<_>>());
    assert!(got.iter().all(|p| p.hdr.op == VSOCK_OP_RST));
    d.reap_tx();
    assert_eq!(d.tx_used.len(), sent as usize);
}

#[test]
fn connection_limit_refuses_with_rst() {
    let mut d = Driver::new("limit");
    let l = listen_port(&d, 8000);
    l.set_nonblocking(true).unwrap();
    let mut accepted = Vec::new();
    let mut responses = 0usize;
    let mut resets = Vec::new();
    let total = MAX_CONNECTIONS as u32 + 3;
    let mut next = 0u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    while responses + resets.len() < total as usize {
        assert!(
            Instant::now() < deadline,
            "{responses} responses, {} resets",
            resets.len()
        );
        // One REQUEST per round; accept whatever the device connected meanwhile, so the
        // listener's backlog never refuses on its own.
        if next < total
            && d.try_send(
                &ghdr(VSOCK_OP_REQUEST, 60_000 + next, 8000),
                VSOCK_TYPE_STREAM,
                &[],
            )
        {
            next += 1;
        }
        d.post_rx();
        d.run_once(1);
        for p in d.take_rx() {
            match p.hdr.op {
                VSOCK_OP_RESPONSE => responses += 1,
                VSOCK_OP_RST => resets.push(p.hdr.dst_port),
                op => panic!("unexpected op {op}"),
            }
        }
        while let Ok((s, _)) = l.accept() {
            accepted.push(s);
        }
    }
    assert_eq!(responses, MAX_CONNECTIONS);
    assert_eq!(
        resets,
        (60_000 + MAX_CONNECTIONS as u32..60_000 + total).collect::<Vec<_>>()
    );
    assert_eq!(d.conn_count(), MAX_CONNECTIONS);
    // A host client is refused too (closed without an answer) while the table is full.
    let mut s = d.dial(b"CONNECT 1\n");
    pump_until_closed(&mut d, &mut s, Duration::from_secs(5));
    // Closing one makes room again.
    d.send(&ghdr(VSOCK_OP_RST, 60_000, 8000), &[]);
    d.pump_rounds(4);
    assert_eq!(d.conn_count(), MAX_CONNECTIONS - 1);
    d.send(&ghdr(VSOCK_OP_REQUEST, 61_000, 8000), &[]);
    let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
    assert_eq!(got[0].hdr.op, VSOCK_OP_RESPONSE);
}

#[test]
fn guest_close_with_a_host_that_never_reads_times_out() {
    let (mut d, _l, h, mut g) = guest_connected("drainto", 5003, 40_003, 64 * 1024);
    // More than the host socket holds, within the device's credit: some bytes stay buffered.
    g.tx = pattern(8, 2 << 20);
    pump_guest(&mut d, &mut g, Duration::from_secs(10), |g| {
        // Stop once the device's credit is used up (the host does not read).
        let in_flight = (g.tx_off as u32).wrapping_sub(g.host_fwd_cnt);
        in_flight >= g.host_buf_alloc && g.host_buf_alloc > 0
    });
    d.send(
        &g.hdr(VSOCK_OP_SHUTDOWN)
            .with_flags(VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND),
        &[],
    );
    d.pump_rounds(4);
    assert_eq!(
        d.conn_count(),
        1,
        "buffered bytes keep the connection while draining"
    );
    let got = d.pump_until(CONN_SHUTDOWN_TIMEOUT * 4, |p| {
        p.iter().any(|p| p.hdr.op == VSOCK_OP_RST)
    });
    assert_eq!(got.last().unwrap().hdr.dst_port, 40_003);
    assert_eq!(d.conn_count(), 0);
    drop(h);
}

#[test]
fn a_restored_device_resets_the_guest_s_connections_and_delivers_nothing_until_it_took_that() {
    let mut d = Driver::new("restored");
    d.post_rx();
    d.post_event();
    d.run_once(10);
    let irqs = d.irq_count();
    // What a restore does once the device is active with the template's queues.
    d.dev.lock().unwrap().restored();
    assert_eq!(d.evq.used_idx(), 1);
    assert_eq!(d.evq.used_elem(0), (u32::from(EV_DESC), 4));
    let id: u32 = d.mem.read_obj(GuestAddress(EV_BUF)).unwrap();
    assert_eq!(id, 0, "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET");
    assert!(d.irq_count() > irqs, "the guest is interrupted");

    // A host connection made now waits: the guest would reset it with the template's.
    let _s = d.dial(b"CONNECT 1024\n");
    assert!(d.pump_rounds(20).is_empty());
    // A kick of the event queue without a new buffer changes nothing.
    d.kick(EVQ_INDEX);
    assert!(d.pump_rounds(10).is_empty());
    // The guest handled the event: it posts the buffer again and kicks; the request goes.
    d.post_event();
    let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
    assert_eq!(got[0].hdr.op, VSOCK_OP_REQUEST);
    assert_eq!(got[0].hdr.dst_port, 1024);
}

#[test]
fn a_transport_reset_without_an_event_buffer_is_not_waited_for() {
    let mut d = Driver::new("restored-nobuf");
    d.post_rx();
    assert!(!d.dev.lock().unwrap().send_transport_reset());
    let _s = d.dial(b"CONNECT 1024\n");
    let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
    assert_eq!(got[0].hdr.op, VSOCK_OP_REQUEST);
}

/// EVENT_IDX: a connection both ways with the queues in event index mode. Each queue the
/// device drained asks for a kick on the next buffer (avail_event is the avail index it
/// reached), and the bytes arrive whole.
#[test]
fn event_idx_connection_both_ways_rearms_every_queue() {
    let mut d = Driver::with_event_idx("evidx", true);
    assert!(
        d.dev.lock().unwrap().avail_features()
            & (1u64 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
            != 0,
        "EVENT_IDX is offered"
    );
    let (mut h, mut g) = host_connect(&mut d, 1234, 64 * 1024);
    let host_data = pattern(5, 200 * 1024 + 5);
    let guest_data = pattern(6, 300 * 1024 + 7);
    h.out = host_data.clone();
    g.tx = guest_data.clone();
    pump_pair(&mut d, &mut g, &mut h, Duration::from_secs(20), |g, h| {
        g.rx.len() == host_data.len() && h.input.len() == guest_data.len()
    });
    assert!(g.rx == host_data, "host->guest bytes differ");
    assert!(h.input == guest_data, "guest->host bytes differ");
    assert_eq!(
        d.txq.avail_event(),
        d.txq.avail_idx(),
        "TX asks for the next kick"
    );
}

/// EVENT_IDX, RX: with packets pending and no buffer left, the device asks for a kick past
/// every buffer it saw, and delivers once one comes.
#[test]
fn event_idx_rx_without_buffers_asks_for_a_kick_past_what_it_saw() {
    let mut d = Driver::with_event_idx("evidx-rx", true);
    // One RX buffer in all: the driver posts it, and again once it took its packet.
    d.rx_free.truncate(1);
    let _a = d.dial(b"CONNECT 1024\n");
    let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
    assert_eq!(got[0].hdr.op, VSOCK_OP_REQUEST);
    let _b = d.dial(b"CONNECT 1025\n");
    for _ in 0..20 {
        d.run_once(10);
    }
    assert_eq!(d.rxq.used_idx(), 1, "no buffer for the second request");
    assert_eq!(d.rxq.avail_event(), 1, "kick me past the buffer I saw");
    d.post_rx_n(1);
    let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
    assert_eq!(
        (got[0].hdr.op, got[0].hdr.dst_port),
        (VSOCK_OP_REQUEST, 1025)
    );
}

/// EVENT_IDX after a restore: the transport reset took the event buffer, and the device asks
/// for a kick when the guest posts it again, which is how it learns the guest took the reset.
#[test]
fn event_idx_restored_device_asks_for_the_event_buffer_kick() {
    let mut d = Driver::with_event_idx("evidx-restored", true);
    d.post_rx();
    // Several event buffers, as Linux posts them.
    for _ in 0..3 {
        d.post_event();
    }
    d.run_once(10);
    d.dev.lock().unwrap().restored();
    assert_eq!(d.evq.used_idx(), 1);
    assert_eq!(
        d.evq.avail_event(),
        3,
        "kick me when a buffer comes back, past the ones I saw"
    );
    let _s = d.dial(b"CONNECT 1024\n");
    assert!(d.pump_rounds(20).is_empty());
    d.post_event();
    let got = d.pump_until(Duration::from_secs(5), |p| !p.is_empty());
    assert_eq!(got[0].hdr.op, VSOCK_OP_REQUEST);
}
