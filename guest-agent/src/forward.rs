//! Port-forward in the guest: which TCP ports listen where `127.0.0.1` reaches them (read from
//! the kernel's `/proc/net/tcp` and `/proc/net/tcp6`, the table `ss -tln` reads), and a
//! connection to one of them spliced to a host connection.
//!
//! Containers share the guest's network namespace (the pod's), which is the agent's, so the
//! agent sees every container's listening sockets and reaches them on its own loopback.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hull_agent_protocol::{AgentError, ErrorKind, MAX_LISTENING_PORTS, MAX_PORTS_WAIT_MS};
use tokio::net::TcpStream;

use crate::transport::BoxConn;

/// How often a waiting `listening_ports` call reads the tables again: a new server is
/// forwarded within about this long, and an idle guest wakes this often for it.
const POLL: Duration = Duration::from_millis(500);

/// How long the agent tries to connect to a forwarded port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The TCP state LISTEN in `/proc/net/tcp`'s `st` column.
const TCP_LISTEN: &str = "0A";

/// Ports in LISTEN state in one `/proc/net/tcp` (`v6` false) or `/proc/net/tcp6` table whose
/// local address a connection to `127.0.0.1` reaches.
pub fn parse_listening(table: &str, v6: bool, out: &mut BTreeSet<u16>) {
    for line in table.lines().skip(1) {
        let mut f = line.split_whitespace();
        let (Some(_sl), Some(local), Some(_remote), Some(st)) =
            (f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if st != TCP_LISTEN {
            continue;
        }
        let Some((addr, port)) = local.split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        if port != 0 && reaches_loopback_v4(addr, v6) {
            out.insert(port);
        }
    }
}

/// Whether a socket bound to `addr` (the kernel's hex: one 32-bit word for IPv4, four for
/// IPv6, each in host byte order, little-endian here) accepts a connection to 127.0.0.1.
fn reaches_loopback_v4(addr: &str, v6: bool) -> bool {
    let words: Vec<u32> = match addr.len() {
        8 if !v6 => u32::from_str_radix(addr, 16).ok().into_iter().collect(),
        32 if v6 => (0..4)
            .filter_map(|i| u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok())
            .collect(),
        _ => return false,
    };
    // Each word was printed from memory in network order read as a little-endian u32.
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    let v4 = |b: &[u8]| b == [0, 0, 0, 0] || b[0] == 127;
    match bytes.len() {
        4 => v4(&bytes),
        16 => {
            // `::` (a dual-stack socket; one with IPV6_V6ONLY is refused at connect), or
            // `::ffff:a.b.c.d` for an IPv4 address that reaches loopback.
            bytes.iter().all(|&b| b == 0)
                || (bytes[..10].iter().all(|&b| b == 0)
                    && bytes[10] == 0xff
                    && bytes[11] == 0xff
                    && v4(&bytes[12..]))
        }
        _ => false,
    }
}

/// The ports listening now, ascending, at most [`MAX_LISTENING_PORTS`].
fn listening_now() -> Result<Vec<u16>, AgentError> {
    let mut ports = BTreeSet::new();
    for (path, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        match std::fs::read_to_string(path) {
            Ok(t) => parse_listening(&t, v6, &mut ports),
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(AgentError::new(
                    ErrorKind::Io,
                    format!("cannot read {path}: {e}"),
                ))
            }
        }
    }
    Ok(ports.into_iter().take(MAX_LISTENING_PORTS).collect())
}

/// The `listening_ports` call: the ports now, once they differ from `known` or `wait_ms` has
/// passed.
pub async fn listening_ports(known: Vec<u16>, wait_ms: u32) -> Result<Vec<u16>, AgentError> {
    if known.len() > MAX_LISTENING_PORTS {
        return Err(AgentError::new(
            ErrorKind::InvalidArgument,
            format!(
                "listening_ports: {} known ports, at most {MAX_LISTENING_PORTS}",
                known.len()
            ),
        ));
    }
    if wait_ms > MAX_PORTS_WAIT_MS {
        return Err(AgentError::new(
            ErrorKind::InvalidArgument,
            format!("listening_ports: wait_ms {wait_ms} is over {MAX_PORTS_WAIT_MS}"),
        ));
    }
    let known: BTreeSet<u16> = known.into_iter().collect();
    let deadline = Instant::now() + Duration::from_millis(wait_ms.into());
    loop {
        let now = tokio::task::spawn_blocking(listening_now)
            .await
            .map_err(|e| AgentError::new(ErrorKind::Io, format!("listening_ports: {e}")))??;
        if now.iter().copied().collect::<BTreeSet<u16>>() != known || Instant::now() >= deadline {
            return Ok(now);
        }
        tokio::time::sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// Connects to `127.0.0.1:port` (the hello reply's error if that fails).
pub async fn connect(port: u16) -> Result<TcpStream, AgentError> {
    if port == 0 {
        return Err(AgentError::new(
            ErrorKind::InvalidArgument,
            "forward: port 0".to_string(),
        ));
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(("127.0.0.1", port))).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(AgentError::new(
            ErrorKind::Io,
            format!("forward: cannot connect to 127.0.0.1:{port} in the guest: {e}"),
        )),
        Err(_) => Err(AgentError::new(
            ErrorKind::Io,
            format!(
                "forward: no connection to 127.0.0.1:{port} in the guest within {} s",
                CONNECT_TIMEOUT.as_secs()
            ),
        )),
    }
}

/// Copies both ways until both directions reached end-of-file (each passed on as a
/// half-close) or either side failed.
pub async fn splice(mut host: BoxConn, mut tcp: TcpStream, port: u16) {
    match tokio::io::copy_bidirectional(&mut host, &mut tcp).await {
        Ok((up, down)) => {
            tracing::debug!("forward {port}: {up} bytes in, {down} bytes out, closed")
        }
        Err(e) => tracing::debug!("forward {port}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0 100 0 0 10 0
   2: 0F02000A:01BB 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0
   3: 0100007F:1F91 0100007F:D2A4 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 100 0 0 10 0
   4: 0101007F:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 5 1 0 100 0 0 10 0
   garbage line
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:1F40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 6 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:1F41 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 7 1 0 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:1F42 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 8 1 0 100 0 0 10 0
   3: 0000000000000000FFFF00000F02000A:1F43 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 9 1 0 100 0 0 10 0
";

    #[test]
    fn finds_the_ports_loopback_reaches() {
        let mut p = BTreeSet::new();
        parse_listening(TCP, false, &mut p);
        // 127.0.0.1:8080, 0.0.0.0:80, 127.0.1.1:9000 listen; 10.0.2.15:443 is not loopback;
        // 8081 is an established connection.
        assert_eq!(p.into_iter().collect::<Vec<_>>(), vec![80, 8080, 9000]);
        let mut p = BTreeSet::new();
        parse_listening(TCP6, true, &mut p);
        // :: and ::ffff:127.0.0.1 are reached through 127.0.0.1; ::1 and ::ffff:10.0.2.15 not.
        assert_eq!(p.into_iter().collect::<Vec<_>>(), vec![8000, 8002]);
        // A table of the other family's width matches nothing.
        let mut p = BTreeSet::new();
        parse_listening(TCP, true, &mut p);
        parse_listening(TCP6, false, &mut p);
        assert!(p.is_empty());
    }

    #[tokio::test]
    async fn answers_at_once_when_the_set_differs_and_refuses_what_is_over_the_limits() {
        // A set no host has: the reply comes at once.
        let t = Instant::now();
        let got = listening_ports(vec![1], 10_000).await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(5));
        assert!(got.len() <= MAX_LISTENING_PORTS);
        let e = listening_ports(vec![1; MAX_LISTENING_PORTS + 1], 0)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        let e = listening_ports(vec![], MAX_PORTS_WAIT_MS + 1)
            .await
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
    }

    #[tokio::test]
    async fn a_new_listener_ends_the_wait_and_is_reached() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let before = listening_now().unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let got = listening_ports(before, 10_000).await.unwrap();
        assert!(got.contains(&port), "{port} not in {got:?}");
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await.unwrap();
            s.write_all(b"pong").await.unwrap();
        });
        let mut c = connect(port).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut b = [0u8; 4];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"pong");
        server.await.unwrap();
        drop(c);
        assert_eq!(
            connect(0).await.unwrap_err().kind,
            ErrorKind::InvalidArgument
        );
    }
}
