//! The host side of the device: a muxer over the Unix listener, the host clients still sending
//! their `CONNECT` line, and every connection's Unix stream, all polled by one epoll whose fd the
//! device registers with the VMM's event loop. It owns the connections and routes packets between
//! them and the guest; what waits for the guest is in its RX queue (`muxer_rxq`), and the
//! deadlines that end connections are in its kill queue (`muxer_killq`).

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

use super::muxer_killq::MuxerKillQ;
use super::muxer_rxq::MuxerRxQ;
use crate::devices::virtio::vsock::csm::connection::VsockConnection;
use crate::devices::virtio::vsock::packet::{
    write_header, Header, Packet, VSOCK_OP_REQUEST, VSOCK_OP_RST, VSOCK_TYPE_STREAM,
};
use crate::devices::virtio::vsock::{
    VsockError, CONNECT_LINE_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECT_LINE, MAX_PENDING_HOST_CONNECTS,
    VSOCK_HOST_CID,
};

/// epoll data of the listener and of the timer; streams use their fd.
const LISTENER_TOKEN: u64 = u64::MAX;
const TIMER_TOKEN: u64 = u64::MAX - 1;
/// Host-initiated connections get local ports from here up (as in Firecracker), well away from
/// the ports host services listen on.
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Where a muxer's host-initiated ports start: a random point of their range. A VM restored
/// from a template may still hold closing sockets of the template's connections (host ports
/// from the template's muxer); a new connection on one of those ports would be refused by the
/// guest. Starting anywhere in 3 * 2^30 ports makes that as unlikely as it can be.
fn first_local_port() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom(2) writes at most `b.len()` bytes into `b`, alive for the call.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let r = if n == 4 {
        u32::from_ne_bytes(b)
    } else {
        // No randomness (never seen): the clock's nanoseconds serve the same purpose.
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
    };
    FIRST_LOCAL_PORT + r % (u32::MAX - 1 - FIRST_LOCAL_PORT)
}
/// Events handled per `notify` (the epoll is level-triggered: the rest come next time).
const EVENTS_PER_NOTIFY: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Host-side port.
    pub local_port: u32,
    /// Guest-side port.
    pub peer_port: u32,
}

/// A host client that connected to the Unix socket and is sending `CONNECT <port>\n`.
struct PendingHost {
    stream: UnixStream,
    line: Vec<u8>,
    deadline: Instant,
}

pub struct VsockMuxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    killq: MuxerKillQ,
    conns: HashMap<ConnKey, VsockConnection>,
    fd_to_key: HashMap<RawFd, ConnKey>,
    pending_hosts: HashMap<RawFd, PendingHost>,
    rxq: MuxerRxQ,
    next_local_port: u32,
}

impl VsockMuxer {
    /// Binds the listener at `uds_path`; fails if the path exists.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> Result<VsockMuxer, VsockError> {
        if uds_path.symlink_metadata().is_ok() {
            return Err(VsockError::UdsPathExists(uds_path));
        }
        let listener = UnixListener::bind(&uds_path).map_err(|e| {
            if e.kind() == io::ErrorKind::AddrInUse {
                VsockError::UdsPathExists(uds_path.clone())
            } else {
                VsockError::UdsBind {
                    path: uds_path.clone(),
                    source: e,
                }
            }
        })?;
        // The agent is behind this socket: its owner's alone, whatever the process's umask (the
        // virtio-fs passthrough clears it); peers are checked on accept too.
        std::fs::set_permissions(
            &uds_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .map_err(|e| VsockError::UdsBind {
            path: uds_path.clone(),
            source: e,
        })?;
        // From here on, the socket file is ours: remove it on any failure below (and on drop).
        let cleanup = |e: VsockError| {
            let _ = std::fs::remove_file(&uds_path);
            e
        };
        listener
            .set_nonblocking(true)
            .map_err(|e| cleanup(VsockError::Setup("listener O_NONBLOCK", e)))?;
        let epoll = Epoll::new().map_err(|e| cleanup(VsockError::Setup("epoll", e)))?;
        let killq = MuxerKillQ::new().map_err(cleanup)?;
        for (fd, token, what) in [
            (listener.as_raw_fd(), LISTENER_TOKEN, "epoll add listener"),
            (killq.as_raw_fd(), TIMER_TOKEN, "epoll add timer"),
        ] {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(|e| cleanup(VsockError::Setup(what, e)))?;
        }
        Ok(VsockMuxer {
            guest_cid,
            uds_path,
            listener,
            epoll,
            killq,
            conns: HashMap::new(),
            fd_to_key: HashMap::new(),
            pending_hosts: HashMap::new(),
            rxq: MuxerRxQ::default(),
            next_local_port: first_local_port(),
        })
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Number of live connections (for tests and diagnostics).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether a packet from the guest can be handled now: any packet may need an RST reply, so
    /// none is taken while the RST queue is full.
    pub fn can_accept_tx(&self) -> bool {
        self.rxq.has_rst_room()
    }

    pub fn has_pending_rx(&self) -> bool {
        !self.rxq.is_empty()
    }

    /// The guest driver reset the device: every connection ends (host streams are closed), and
    /// nothing is pending for the guest anymore. Host clients still sending `CONNECT` stay.
    pub fn reset(&mut self) {
        let keys: Vec<ConnKey> = self.conns.keys().copied().collect();
        for key in keys {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.close();
            }
            self.update(key);
        }
        self.rxq.clear();
        self.rearm_timer();
    }

    /// Handles a packet the guest sent (TX queue).
    pub fn send_pkt(&mut self, pkt: &Packet<'_>) {
        if pkt.src_cid() != self.guest_cid || pkt.dst_cid() != VSOCK_HOST_CID {
            tracing::debug!(
                src_cid = pkt.src_cid(),
                dst_cid = pkt.dst_cid(),
                "vsock: dropping a packet with wrong CIDs"
            );
            return;
        }
        let key = ConnKey {
            local_port: pkt.dst_port(),
            peer_port: pkt.src_port(),
        };
        let op = pkt.op();
        if pkt.type_() != VSOCK_TYPE_STREAM {
            if op != VSOCK_OP_RST {
                self.rxq.push_rst(key);
            }
            return;
        }
        match self.conns.get_mut(&key) {
            None => {
                if op == VSOCK_OP_REQUEST {
                    self.guest_connect(key, pkt);
                } else if op != VSOCK_OP_RST {
                    self.rxq.push_rst(key);
                }
            }
            Some(conn) => {
                match op {
                    // The guest reused a live connection's ports: end the old one.
                    VSOCK_OP_REQUEST => conn.kill(),
                    VSOCK_OP_RST => conn.close(),
                    _ => conn.send_pkt(pkt),
                }
                self.update(key);
            }
        }
    }

    /// A guest connects to host port `key.local_port`: forward it to `<uds_path>_<port>`.
    fn guest_connect(&mut self, key: ConnKey, pkt: &Packet<'_>) {
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!("vsock: connection limit reached; refusing a guest connection");
            self.rxq.push_rst(key);
            return;
        }
        let mut path = self.uds_path.as_os_str().to_owned();
        path.push(format!("_{}", key.local_port));
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let conn = VsockConnection::new_peer_init(
                    self.guest_cid,
                    stream,
                    key.local_port,
                    key.peer_port,
                    pkt.buf_alloc(),
                    pkt.fwd_cnt(),
                );
                self.add_conn(key, conn);
            }
            Err(e) => {
                tracing::debug!(path = ?path, error = %e, "vsock: guest connection refused");
                self.rxq.push_rst(key);
            }
        }
    }

    fn add_conn(&mut self, key: ConnKey, conn: VsockConnection) {
        self.fd_to_key.insert(conn.fd(), key);
        self.conns.insert(key, conn);
        self.update(key);
        self.rearm_timer();
    }

    /// Brings the epoll registration, the RX queue and the timer in line with a connection's
    /// state, and forgets the connection once it is done.
    fn update(&mut self, key: ConnKey) {
        let Some(conn) = self.conns.get_mut(&key) else {
            return;
        };
        if let Some(stream) = conn.take_stream_if_dead() {
            if conn.registered.take().is_some() {
                let _ = self.epoll.ctl(
                    ControlOperation::Delete,
                    stream.as_raw_fd(),
                    EpollEvent::default(),
                );
            }
            self.fd_to_key.remove(&stream.as_raw_fd());
            drop(stream);
        }
        if conn.is_done() {
            let in_rxq = conn.in_rxq;
            let had_expiry = conn.timer_seen.is_some();
            if let Some(c) = self.conns.remove(&key) {
                // A connection that ended without being killed (e.g. the guest's RST) still
                // holds its stream.
                drop(c);
            }
            if in_rxq {
                self.rxq.remove_conn(key);
            }
            if had_expiry {
                self.rearm_timer();
            }
            return;
        }
        let wanted = conn.wanted_events();
        if wanted != conn.registered {
            let fd = conn.fd();
            let res = match (conn.registered, wanted) {
                (None, Some(ev)) => {
                    self.epoll
                        .ctl(ControlOperation::Add, fd, EpollEvent::new(ev, fd as u64))
                }
                (Some(_), Some(ev)) => {
                    self.epoll
                        .ctl(ControlOperation::Modify, fd, EpollEvent::new(ev, fd as u64))
                }
                (Some(_), None) => {
                    self.epoll
                        .ctl(ControlOperation::Delete, fd, EpollEvent::default())
                }
                (None, None) => Ok(()),
            };
            match res {
                Ok(()) => conn.registered = wanted,
                Err(e) => {
                    tracing::warn!(error = %e, "vsock: epoll_ctl failed; resetting the connection");
                    conn.kill();
                    return self.update(key);
                }
            }
        }
        if conn.has_pending_rx() && !conn.in_rxq {
            conn.in_rxq = true;
            self.rxq.push_conn(key);
        }
        if conn.expiry() != conn.timer_seen {
            conn.timer_seen = conn.expiry();
            self.rearm_timer();
        }
    }

    /// Fills an RX packet; false if nothing is pending after all.
    pub fn recv_pkt(&mut self, pkt: &mut Packet<'_>) -> bool {
        if let Some(key) = self.rxq.pop_rst() {
            write_header(
                pkt,
                &Header {
                    src_cid: VSOCK_HOST_CID,
                    dst_cid: self.guest_cid,
                    src_port: key.local_port,
                    dst_port: key.peer_port,
                    op: VSOCK_OP_RST,
                    ..Header::default()
                },
            );
            return true;
        }
        // Round robin over the connections with something to send; each is looked at most once.
        for _ in 0..self.rxq.conn_count() {
            let Some(key) = self.rxq.pop_conn() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(&key) else {
                continue;
            };
            conn.in_rxq = false;
            let produced = conn.recv_pkt(pkt);
            self.update(key);
            if produced {
                return true;
            }
        }
        false
    }

    /// The muxer's epoll fd, for the VMM's event loop.
    pub fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }

    /// Handles whatever is ready on the muxer's epoll.
    pub fn notify(&mut self) {
        let mut events = [EpollEvent::default(); EVENTS_PER_NOTIFY];
        let n = match self.epoll.wait(0, &mut events) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::warn!(error = %e, "vsock: epoll_wait failed");
                }
                return;
            }
        };
        for ev in &events[..n] {
            let evset = EventSet::from_bits_truncate(ev.events());
            match ev.data() {
                LISTENER_TOKEN => self.accept_all(),
                TIMER_TOKEN => self.on_timer(),
                data => {
                    let fd = data as RawFd;
                    if self.pending_hosts.contains_key(&fd) {
                        self.read_connect_line(fd);
                    } else if let Some(&key) = self.fd_to_key.get(&fd) {
                        if let Some(conn) = self.conns.get_mut(&key) {
                            conn.notify(evset);
                        }
                        self.update(key);
                    } else {
                        // Not ours anymore (closed meanwhile); make sure it stops firing.
                        let _ = self
                            .epoll
                            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
                    }
                }
            }
        }
    }

    fn accept_all(&mut self) {
        // Bounded: at most the pending limit plus one refused client per call.
        for _ in 0..=MAX_PENDING_HOST_CONNECTS {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "vsock: accept failed");
                    return;
                }
            };
            if !crate::api::peer_allowed(&stream) {
                tracing::warn!("vsock: a connection from another user refused");
                continue;
            }
            if self.pending_hosts.len() >= MAX_PENDING_HOST_CONNECTS
                || self.conns.len() >= MAX_CONNECTIONS
            {
                tracing::warn!("vsock: too many host connections; refusing one");
                continue; // dropping the stream closes it
            }
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let fd = stream.as_raw_fd();
            if self
                .epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, fd as u64),
                )
                .is_err()
            {
                continue;
            }
            self.pending_hosts.insert(
                fd,
                PendingHost {
                    stream,
                    line: Vec::with_capacity(MAX_CONNECT_LINE),
                    deadline: Instant::now() + CONNECT_LINE_TIMEOUT,
                },
            );
            self.rearm_timer();
        }
    }

    fn drop_pending_host(&mut self, fd: RawFd) {
        if let Some(p) = self.pending_hosts.remove(&fd) {
            let _ = self.epoll.ctl(
                ControlOperation::Delete,
                p.stream.as_raw_fd(),
                EpollEvent::default(),
            );
        }
    }

    /// Reads the `CONNECT <port>\n` line one byte at a time, so that bytes the client sends
    /// right after it stay in the socket for the guest.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending_hosts.get_mut(&fd) else {
            return;
        };
        let mut byte = [0u8; 1];
        loop {
            match p.stream.read(&mut byte) {
                Ok(0) => return self.drop_pending_host(fd),
                Ok(_) if byte[0] == b'\n' => break,
                Ok(_) => {
                    if p.line.len() >= MAX_CONNECT_LINE {
                        tracing::debug!("vsock: CONNECT line too long; closing");
                        return self.drop_pending_host(fd);
                    }
                    p.line.push(byte[0]);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return self.drop_pending_host(fd),
            }
        }
        let port = parse_connect_line(&p.line);
        let Some(p) = self.pending_hosts.remove(&fd) else {
            return;
        };
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
        let Some(peer_port) = port else {
            tracing::debug!(line = ?String::from_utf8_lossy(&p.line), "vsock: bad CONNECT line; closing");
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            tracing::warn!("vsock: connection limit reached; refusing a host connection");
            return;
        }
        let Some(local_port) = self.allocate_local_port(peer_port) else {
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port,
        };
        let conn = VsockConnection::new_local_init(self.guest_cid, p.stream, local_port, peer_port);
        self.add_conn(key, conn);
        self.rearm_timer();
    }

    fn allocate_local_port(&mut self, peer_port: u32) -> Option<u32> {
        // At most MAX_CONNECTIONS ports are taken, so this finds one within that many tries.
        for _ in 0..=MAX_CONNECTIONS {
            let port = self.next_local_port;
            self.next_local_port = if port == u32::MAX - 1 {
                FIRST_LOCAL_PORT
            } else {
                port + 1
            };
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.conns.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    fn on_timer(&mut self) {
        let now = self.killq.fired();
        for key in MuxerKillQ::expired(&self.conns, now) {
            if let Some(conn) = self.conns.get_mut(&key) {
                conn.timeout();
            }
            self.update(key);
        }
        let stale: Vec<RawFd> = self
            .pending_hosts
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in stale {
            tracing::debug!("vsock: host client sent no CONNECT line in time; closing");
            self.drop_pending_host(fd);
        }
        self.rearm_timer();
    }

    /// Arms the timer for the earliest deadline (or disarms it).
    fn rearm_timer(&mut self) {
        let earliest = self
            .conns
            .values()
            .filter_map(|c| c.expiry())
            .chain(self.pending_hosts.values().map(|p| p.deadline))
            .min();
        self.killq.rearm(earliest);
    }
}

impl Drop for VsockMuxer {
    fn drop(&mut self) {
        // Only when it is still there: the VMM removes its sockets itself first (through their
        // directory's fd, the only removal its jailed event loop may make), and a stat is all
        // this costs then.
        if std::fs::symlink_metadata(&self.uds_path).is_ok() {
            let _ = std::fs::remove_file(&self.uds_path);
        }
    }
}

/// `CONNECT <port>` (case-insensitive keyword, optional trailing `\r`) -> port.
fn parse_connect_line(line: &[u8]) -> Option<u32> {
    let s = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut words = s.split_ascii_whitespace();
    let cmd = words.next()?;
    let port = words.next()?;
    if !cmd.eq_ignore_ascii_case("connect") || words.next().is_some() {
        return None;
    }
    port.parse().ok()
}

pub(super) fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on an fd the caller owns; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Connects to a Unix stream socket without blocking: a listener whose backlog is full refuses
/// (EAGAIN) instead of stalling the VMM's event loop.
fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: plain syscall; the returned fd is checked and owned right after.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created socket that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    // SAFETY: `addr` is a valid sockaddr_un and `len` does not exceed its size.
    let r = unsafe {
        libc::connect(
            sock.as_raw_fd(),
            std::ptr::addr_of!(addr).cast::<libc::sockaddr>(),
            len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(sock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_line_parsing() {
        assert_eq!(parse_connect_line(b"CONNECT 52"), Some(52));
        assert_eq!(parse_connect_line(b"connect 4294967295\r"), Some(u32::MAX));
        assert_eq!(parse_connect_line(b"CONNECT"), None);
        assert_eq!(parse_connect_line(b"CONNECT 4294967296"), None);
        assert_eq!(parse_connect_line(b"CONNECT -1"), None);
        assert_eq!(parse_connect_line(b"CONNECT 1 2"), None);
        assert_eq!(parse_connect_line(b"LISTEN 1"), None);
        assert_eq!(parse_connect_line(b"\xff\xfe"), None);
    }

    #[test]
    fn nonblocking_connect_refuses_missing_and_full() {
        let dir = crate::devices::virtio::test_utils::TempDir::new("nbc");
        let p = dir.0.join("l");
        assert!(connect_nonblocking(&p).is_err());
        let listener = UnixListener::bind(&p).unwrap();
        let mut ok = Vec::new();
        // Fill the backlog: connect must eventually fail instead of blocking.
        let mut refused = false;
        for _ in 0..10_000 {
            match connect_nonblocking(&p) {
                Ok(s) => ok.push(s),
                Err(_) => {
                    refused = true;
                    break;
                }
            }
        }
        assert!(refused, "connect to a full backlog never failed");
        assert!(!ok.is_empty());
        drop(listener);
    }
}
