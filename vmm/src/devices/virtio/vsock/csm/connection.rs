//! One vsock stream between a guest port and a host Unix stream.
//!
//! States:
//! - `LocalInit`: the host asked for the connection (`CONNECT <port>`); a REQUEST is pending or
//!   sent, and the guest must answer with RESPONSE (or RST) before `CONN_REQUEST_TIMEOUT`.
//! - `Established`: bytes flow both ways. Either side may half-close: the host by shutting down
//!   its write side (the device reads EOF and sends SHUTDOWN(SEND)), the guest by SHUTDOWN(SEND)
//!   (the device flushes what it buffered and shuts down the Unix stream's write side).
//! - `LocalClosed`: both directions are finished from the host's side; the device sent
//!   SHUTDOWN(RCV|SEND) and waits for the guest's RST, at most `CONN_SHUTDOWN_TIMEOUT`.
//! - `Draining`: the guest closed (SHUTDOWN(RCV|SEND)) while bytes for the host were still
//!   buffered; once they are flushed (or after `CONN_SHUTDOWN_TIMEOUT`) the device sends RST.
//! - `Killed`: the host stream is gone and an RST for the guest is pending; the muxer forgets the
//!   connection once the RST is delivered.
//! - `Closed`: nothing left to do (the guest reset the connection); the muxer forgets it.
//!
//! Flow control (virtio spec 5.10.6.3): the device may send the guest at most
//! `peer_buf_alloc - (rx_cnt - peer_fwd_cnt)` payload bytes; when that credit is zero it stops
//! reading the host stream and asks for a credit update. In the other direction it advertises
//! `buf_alloc = CONN_TX_BUF_SIZE` and `fwd_cnt` = bytes handed to the host stream, and sends a
//! credit update once the guest's view of the free space has fallen by half.

use std::io;
use std::num::Wrapping;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use vm_memory::{ReadVolatile, VolatileMemoryError};
use vmm_sys_util::epoll::EventSet;

use super::txbuf::{send_bytes, send_volatile, TxBuf};
use crate::devices::virtio::vsock::packet::{
    write_header, Header, Packet, VSOCK_FLAGS_SHUTDOWN_RCV, VSOCK_FLAGS_SHUTDOWN_SEND,
    VSOCK_OP_CREDIT_REQUEST, VSOCK_OP_CREDIT_UPDATE, VSOCK_OP_REQUEST, VSOCK_OP_RESPONSE,
    VSOCK_OP_RST, VSOCK_OP_RW, VSOCK_OP_SHUTDOWN,
};
use crate::devices::virtio::vsock::{
    CONN_REQUEST_TIMEOUT, CONN_SHUTDOWN_TIMEOUT, CONN_TX_BUF_SIZE, MAX_PKT_BUF_SIZE, VSOCK_HOST_CID,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    LocalInit,
    Established,
    LocalClosed,
    Draining,
    Killed,
    Closed,
}

/// Packets waiting for an RX buffer, by kind (at most one of each kind is ever pending).
mod pending {
    pub const RST: u8 = 1 << 0;
    pub const REQUEST: u8 = 1 << 1;
    pub const RESPONSE: u8 = 1 << 2;
    pub const RW: u8 = 1 << 3;
    pub const SHUTDOWN: u8 = 1 << 4;
    pub const CREDIT_UPDATE: u8 = 1 << 5;
    pub const CREDIT_REQUEST: u8 = 1 << 6;
}

#[derive(Debug)]
pub struct VsockConnection {
    guest_cid: u64,
    /// Host-side port (the port the guest connected to, or the one allocated for a
    /// host-initiated connection).
    local_port: u32,
    /// Guest-side port.
    peer_port: u32,
    /// `None` once the connection was killed and the muxer dropped the stream.
    stream: Option<UnixStream>,
    fd: RawFd,
    state: ConnState,
    pending: u8,
    shutdown_flags: u32,
    expiry: Option<Instant>,

    // Host -> guest flow control.
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    rx_cnt: Wrapping<u32>,
    credit_requested: bool,

    // Guest -> host.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_to_peer: Wrapping<u32>,
    tx_buf: TxBuf,

    // Half-close bookkeeping.
    /// The host stream reached EOF: the host sends nothing more.
    host_eof: bool,
    /// The host stream is fully closed (HUP/ERR or a failed write): nothing more can be written
    /// to it, and what it still holds is read until EOF.
    host_hup: bool,
    /// The guest sent SHUTDOWN(SEND).
    peer_no_send: bool,
    /// The guest sent SHUTDOWN(RCV).
    peer_no_recv: bool,
    /// The device shut down the stream's write side.
    stream_wr_shut: bool,

    /// Whether the muxer has this connection in its RX queue.
    pub in_rxq: bool,
    /// What the muxer registered with its epoll for the stream (`None`: not registered).
    pub registered: Option<EventSet>,
    /// The expiry the muxer last armed its timer for.
    pub timer_seen: Option<Instant>,
}

impl VsockConnection {
    fn new(
        guest_cid: u64,
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        state: ConnState,
    ) -> VsockConnection {
        VsockConnection {
            guest_cid,
            local_port,
            peer_port,
            fd: stream.as_raw_fd(),
            stream: Some(stream),
            state,
            pending: 0,
            shutdown_flags: 0,
            expiry: None,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            credit_requested: false,
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_to_peer: Wrapping(0),
            tx_buf: TxBuf::new(CONN_TX_BUF_SIZE as usize),
            host_eof: false,
            host_hup: false,
            peer_no_send: false,
            peer_no_recv: false,
            stream_wr_shut: false,
            in_rxq: false,
            registered: None,
            timer_seen: None,
        }
    }

    /// A connection the host asked for: a REQUEST to the guest is pending.
    pub fn new_local_init(
        guest_cid: u64,
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
    ) -> VsockConnection {
        let mut c = Self::new(
            guest_cid,
            stream,
            local_port,
            peer_port,
            ConnState::LocalInit,
        );
        c.pending = pending::REQUEST;
        c.expiry = Some(Instant::now() + CONN_REQUEST_TIMEOUT);
        c
    }

    /// A connection the guest asked for and the host accepted: a RESPONSE is pending.
    pub fn new_peer_init(
        guest_cid: u64,
        stream: UnixStream,
        local_port: u32,
        peer_port: u32,
        peer_buf_alloc: u32,
        peer_fwd_cnt: u32,
    ) -> VsockConnection {
        let mut c = Self::new(
            guest_cid,
            stream,
            local_port,
            peer_port,
            ConnState::Established,
        );
        c.peer_buf_alloc = peer_buf_alloc;
        c.peer_fwd_cnt = Wrapping(peer_fwd_cnt);
        c.pending = pending::RESPONSE;
        c
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    pub fn expiry(&self) -> Option<Instant> {
        self.expiry
    }

    pub fn has_pending_rx(&self) -> bool {
        self.pending != 0
    }

    /// Whether the muxer can forget this connection.
    pub fn is_done(&self) -> bool {
        self.state == ConnState::Closed || (self.state == ConnState::Killed && self.pending == 0)
    }

    /// The stream, once the connection no longer needs it (killed or closed), for the muxer to
    /// deregister and drop.
    pub fn take_stream_if_dead(&mut self) -> Option<UnixStream> {
        match self.state {
            ConnState::Killed | ConnState::Closed => self.stream.take(),
            _ => None,
        }
    }

    /// The epoll events the connection wants for its stream; `None` when the stream must not be
    /// polled at all (gone, or fully closed by the host: epoll would report HUP forever).
    pub fn wanted_events(&self) -> Option<EventSet> {
        if self.stream.is_none() || self.host_hup {
            return None;
        }
        let mut ev = EventSet::empty();
        if self.state == ConnState::Established
            && !self.host_eof
            && !self.peer_no_recv
            && self.pending & pending::RW == 0
            && self.peer_credit() > 0
        {
            ev |= EventSet::IN;
        }
        if !self.tx_buf.is_empty() {
            ev |= EventSet::OUT;
        }
        Some(ev)
    }

    /// How many payload bytes the guest can take now.
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Drops everything and queues an RST for the guest.
    pub fn kill(&mut self) {
        if matches!(self.state, ConnState::Killed | ConnState::Closed) {
            return;
        }
        self.state = ConnState::Killed;
        self.pending = pending::RST;
        self.expiry = None;
        self.tx_buf.clear();
    }

    /// The guest reset the connection: forget it without answering.
    pub fn close(&mut self) {
        self.state = ConnState::Closed;
        self.pending = 0;
        self.expiry = None;
        self.tx_buf.clear();
    }

    /// The connection's deadline passed.
    pub fn timeout(&mut self) {
        if self.expiry.is_some_and(|e| e <= Instant::now()) {
            tracing::debug!(
                local_port = self.local_port,
                peer_port = self.peer_port,
                state = ?self.state,
                "vsock connection timed out; resetting it"
            );
            self.kill();
        }
    }

    /// Handles a packet the guest sent on this connection (CIDs, ports and type already checked
    /// by the muxer; REQUEST and RST are handled there).
    pub fn send_pkt(&mut self, pkt: &Packet<'_>) {
        if matches!(self.state, ConnState::Killed | ConnState::Closed) {
            return;
        }
        // Every packet carries the guest's current receive window.
        self.peer_buf_alloc = pkt.buf_alloc();
        self.peer_fwd_cnt = Wrapping(pkt.fwd_cnt());

        match pkt.op() {
            VSOCK_OP_RESPONSE => self.on_response(),
            VSOCK_OP_RW => self.on_rw(pkt),
            VSOCK_OP_SHUTDOWN => self.on_shutdown(pkt.flags()),
            VSOCK_OP_CREDIT_UPDATE => {}
            VSOCK_OP_CREDIT_REQUEST => self.pending |= pending::CREDIT_UPDATE,
            op => {
                tracing::debug!(op, "vsock: unexpected op from the guest; resetting");
                self.kill();
            }
        }
        self.after_credit_change();
    }

    fn after_credit_change(&mut self) {
        if self.peer_credit() > 0 {
            self.credit_requested = false;
            // A fully closed host stream is not polled: its remaining bytes are read on demand.
            if self.host_hup && !self.host_eof && self.state == ConnState::Established {
                self.pending |= pending::RW;
            }
        }
    }

    fn on_response(&mut self) {
        if self.state != ConnState::LocalInit {
            tracing::debug!(state = ?self.state, "vsock: unexpected RESPONSE; resetting");
            self.kill();
            return;
        }
        let line = format!("OK {}\n", self.local_port);
        let ok = match &self.stream {
            Some(s) => matches!(send_bytes(s, line.as_bytes()), Ok(n) if n == line.len()),
            None => false,
        };
        if !ok {
            self.kill();
            return;
        }
        self.state = ConnState::Established;
        self.expiry = None;
    }

    fn on_rw(&mut self, pkt: &Packet<'_>) {
        let data = match pkt.data_slice() {
            Some(d) => *d,
            None => return, // an empty RW only carries credit information
        };
        match self.state {
            ConnState::Established if !self.peer_no_send => {}
            ConnState::LocalClosed | ConnState::Established if self.host_hup => {
                // The host can no longer receive: drop the bytes but keep the credit flowing so
                // the guest sees the connection's end instead of a stall.
                self.account_forwarded(data.len());
                return;
            }
            _ => {
                tracing::debug!(state = ?self.state, "vsock: data the guest may not send; resetting");
                self.kill();
                return;
            }
        }
        if self.host_hup || self.stream_wr_shut {
            self.account_forwarded(data.len());
            return;
        }
        let Some(stream) = &self.stream else { return };
        let mut written = 0;
        if self.tx_buf.is_empty() {
            match send_volatile(stream, &data) {
                Ok(n) => written = n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.on_host_hup();
                    self.account_forwarded(data.len());
                    return;
                }
            }
        }
        self.account_forwarded(written);
        if written < data.len() {
            // `written <= data.len()`, so the offset is inside the slice.
            let rest = match data.offset(written) {
                Ok(r) => r,
                Err(_) => return,
            };
            if self.tx_buf.push(&rest).is_err() {
                tracing::debug!("vsock: the guest overran its credit; resetting");
                self.kill();
            }
        }
    }

    fn account_forwarded(&mut self, n: usize) {
        self.fwd_cnt += Wrapping(n as u32);
        if (self.fwd_cnt - self.last_fwd_cnt_to_peer).0 >= CONN_TX_BUF_SIZE / 2 {
            self.pending |= pending::CREDIT_UPDATE;
        }
    }

    fn on_shutdown(&mut self, flags: u32) {
        if flags & VSOCK_FLAGS_SHUTDOWN_RCV != 0 {
            self.peer_no_recv = true;
            self.pending &= !pending::RW;
        }
        if flags & VSOCK_FLAGS_SHUTDOWN_SEND != 0 {
            self.peer_no_send = true;
        }
        match self.state {
            ConnState::LocalInit => self.kill(),
            // The host already finished; the guest now closes too and waits for our RST.
            ConnState::LocalClosed => self.kill(),
            ConnState::Established | ConnState::Draining => {
                if self.peer_no_recv && self.peer_no_send {
                    if self.tx_buf.is_empty() || self.host_hup {
                        self.kill();
                    } else if self.state != ConnState::Draining {
                        self.state = ConnState::Draining;
                        self.expiry = Some(Instant::now() + CONN_SHUTDOWN_TIMEOUT);
                    }
                } else if self.peer_no_send && self.tx_buf.is_empty() {
                    self.shutdown_stream_write();
                    self.check_both_done();
                }
            }
            ConnState::Killed | ConnState::Closed => {}
        }
    }

    fn shutdown_stream_write(&mut self) {
        if !self.stream_wr_shut {
            if let Some(s) = &self.stream {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            self.stream_wr_shut = true;
        }
    }

    /// Whether the guest-to-host direction is finished.
    fn g2h_done(&self) -> bool {
        self.host_hup || (self.peer_no_send && self.tx_buf.is_empty())
    }

    /// If both directions are finished, tell the guest and wait for its RST.
    fn check_both_done(&mut self) {
        if self.state == ConnState::Established && self.host_eof && self.g2h_done() {
            self.shutdown_flags = VSOCK_FLAGS_SHUTDOWN_RCV | VSOCK_FLAGS_SHUTDOWN_SEND;
            self.pending |= pending::SHUTDOWN;
            self.state = ConnState::LocalClosed;
            self.expiry = Some(Instant::now() + CONN_SHUTDOWN_TIMEOUT);
        }
    }

    fn on_host_eof(&mut self) {
        self.host_eof = true;
        self.pending &= !pending::RW;
        if self.state != ConnState::Established {
            return;
        }
        if self.g2h_done() {
            self.check_both_done();
        } else {
            // Half close: the host sends no more, but may still read.
            self.shutdown_flags = VSOCK_FLAGS_SHUTDOWN_SEND;
            self.pending |= pending::SHUTDOWN;
        }
    }

    /// The host stream cannot take bytes anymore (fully closed or broken).
    fn on_host_hup(&mut self) {
        if self.host_hup {
            return;
        }
        self.host_hup = true;
        self.tx_buf.clear();
        match self.state {
            ConnState::LocalInit | ConnState::Draining => self.kill(),
            ConnState::Established => {
                if !self.host_eof && self.unread_host_bytes() == 0 {
                    // Nothing left to read: this is the end of the host's bytes as well.
                    self.on_host_eof();
                    return;
                }
                if self.host_eof {
                    self.check_both_done();
                } else if self.peer_credit() > 0 && !self.peer_no_recv {
                    // Read what the host left until EOF.
                    self.pending |= pending::RW;
                } else if self.peer_no_recv {
                    self.on_host_eof();
                }
            }
            _ => {}
        }
    }

    /// Bytes waiting in the host stream (`FIONREAD`); errors count as none.
    fn unread_host_bytes(&self) -> usize {
        let Some(s) = &self.stream else { return 0 };
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one c_int to the pointer, which is valid for that.
        let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut n) };
        if r < 0 {
            0
        } else {
            usize::try_from(n).unwrap_or(0)
        }
    }

    /// Handles readiness of the host stream.
    pub fn notify(&mut self, evset: EventSet) {
        if evset.intersects(EventSet::HANG_UP | EventSet::ERROR) {
            self.on_host_hup();
        }
        if evset.contains(EventSet::IN)
            && self.state == ConnState::Established
            && !self.host_eof
            && !self.peer_no_recv
        {
            self.pending |= pending::RW;
        }
        if evset.contains(EventSet::OUT) {
            self.flush_tx();
        }
    }

    fn flush_tx(&mut self) {
        let Some(stream) = &self.stream else { return };
        match self.tx_buf.flush_to(stream) {
            Ok(n) => self.account_forwarded(n),
            Err(_) => {
                self.on_host_hup();
                return;
            }
        }
        if self.tx_buf.is_empty() {
            match self.state {
                ConnState::Draining => self.kill(),
                ConnState::Established if self.peer_no_send => {
                    self.shutdown_stream_write();
                    self.check_both_done();
                }
                _ => {}
            }
        }
    }

    fn header(&mut self, op: u16) -> Header {
        self.last_fwd_cnt_to_peer = self.fwd_cnt;
        self.pending &= !pending::CREDIT_UPDATE;
        Header {
            src_cid: VSOCK_HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            op,
            flags: 0,
            buf_alloc: CONN_TX_BUF_SIZE,
            fwd_cnt: self.fwd_cnt.0,
        }
    }

    fn emit(&mut self, pkt: &mut Packet<'_>, op: u16) {
        let hdr = self.header(op);
        write_header(pkt, &hdr);
    }

    /// Fills an RX packet with the most urgent pending packet; false if there was none after all.
    pub fn recv_pkt(&mut self, pkt: &mut Packet<'_>) -> bool {
        if self.pending & pending::RST != 0 {
            self.pending = 0;
            self.emit(pkt, VSOCK_OP_RST);
            return true;
        }
        if self.pending & pending::REQUEST != 0 {
            self.pending &= !pending::REQUEST;
            self.emit(pkt, VSOCK_OP_REQUEST);
            return true;
        }
        if self.pending & pending::RESPONSE != 0 {
            self.pending &= !pending::RESPONSE;
            self.emit(pkt, VSOCK_OP_RESPONSE);
            return true;
        }
        if self.pending & pending::RW != 0 {
            if let Some(done) = self.recv_data(pkt) {
                return done;
            }
        }
        if self.pending & pending::SHUTDOWN != 0 {
            self.pending &= !pending::SHUTDOWN;
            let mut hdr = self.header(VSOCK_OP_SHUTDOWN);
            hdr.flags = self.shutdown_flags;
            write_header(pkt, &hdr);
            return true;
        }
        if self.pending & pending::CREDIT_UPDATE != 0 {
            self.emit(pkt, VSOCK_OP_CREDIT_UPDATE);
            return true;
        }
        if self.pending & pending::CREDIT_REQUEST != 0 {
            self.pending &= !pending::CREDIT_REQUEST;
            self.emit(pkt, VSOCK_OP_CREDIT_REQUEST);
            return true;
        }
        false
    }

    /// Reads host bytes straight into the guest's buffer. `Some(true)`: the packet is filled;
    /// `None`: nothing to send as data, try the other pending kinds.
    fn recv_data(&mut self, pkt: &mut Packet<'_>) -> Option<bool> {
        if self.state != ConnState::Established || self.peer_no_recv || self.host_eof {
            self.pending &= !pending::RW;
            return None;
        }
        let credit = self.peer_credit();
        if credit == 0 {
            self.pending &= !pending::RW;
            if !self.credit_requested {
                self.credit_requested = true;
                self.pending |= pending::CREDIT_REQUEST;
            }
            return None;
        }
        let data = *pkt.data_slice()?;
        let max = (data.len() as u64)
            .min(u64::from(credit))
            .min(u64::from(MAX_PKT_BUF_SIZE)) as usize;
        if max == 0 {
            // A zero-sized RX buffer: nothing fits; leave the bytes for a real buffer.
            return None;
        }
        let mut dst = data.subslice(0, max).ok()?;
        let stream = self.stream.as_mut()?;
        match stream.read_volatile(&mut dst) {
            Ok(0) => {
                self.on_host_eof();
                None
            }
            Ok(n) => {
                self.rx_cnt += Wrapping(n as u32);
                // A short read means the socket is (for now) empty: wait for epoll. A fully closed
                // stream is not polled, so keep reading it until EOF.
                if n < max && !self.host_hup {
                    self.pending &= !pending::RW;
                }
                let mut hdr = self.header(VSOCK_OP_RW);
                hdr.len = n as u32;
                write_header(pkt, &hdr);
                Some(true)
            }
            Err(VolatileMemoryError::IOError(e))
                if e.kind() == io::ErrorKind::WouldBlock
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                if self.host_hup {
                    // A fully closed stream never blocks; treat it as its end.
                    self.on_host_eof();
                } else {
                    self.pending &= !pending::RW;
                }
                None
            }
            Err(e) => {
                tracing::debug!(error = %e, "vsock: reading the host stream failed; resetting");
                self.kill();
                self.pending = 0;
                self.emit(pkt, VSOCK_OP_RST);
                Some(true)
            }
        }
    }
}
