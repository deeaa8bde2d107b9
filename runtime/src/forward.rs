//! Port-forward to a sandbox's guest: `kubectl port-forward` (CRI `PortForward`).
//!
//! containerd serves a pod's port-forward itself: it dials `localhost:<port>` (IPv4) inside the
//! pod's network namespace on the host, or in the host's own namespace for a host-network pod.
//! With hull the pod's servers run in the guest, so nothing listens there. A
//! [`PortForwarder`] puts a listener on `127.0.0.1:<port>` in that namespace for every TCP port
//! that listens on the guest's loopback (the agent's `listening_ports`, a call that waits for
//! a change), and passes each connection to the guest through a forward connection of the
//! agent, which dials `127.0.0.1:<port>` there. Kata (a `kata-runtime` port-forward through
//! the agent) and gVisor (`runsc` port-forward into the sandbox's stack) solve it the same way:
//! the runtime carries the connection into the sandbox.
//!
//! **Owns**: the listeners and the connections they accept, all dropped with the
//! forwarder. **Must not**: trust the guest's list (checked by the agent client: at most
//! [`MAX_LISTENING_PORTS`] ports), take a port that something else on the host side holds
//! (its bind fails and it is left alone), or hold more than [`MAX_FORWARD_CONNECTIONS`]
//! connections at once.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hull_agent_protocol::MAX_LISTENING_PORTS;
use tokio::sync::Semaphore;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::agent::{AgentClient, Endpoint};

/// Connections forwarded at once, over all ports of one sandbox.
pub const MAX_FORWARD_CONNECTIONS: usize = 256;

/// How long one `listening_ports` call waits for a change.
const WATCH: Duration = Duration::from_secs(30);

/// Pause before calling again after a failed call (the agent is not up, or restarting).
const RETRY: Duration = Duration::from_secs(1);

/// Least time between two `listening_ports` calls: a guest that answers each at once with
/// another set cannot make the host bind and close listeners in a tight loop.
const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// How long connecting to the agent may take.
const CONNECT: Duration = Duration::from_secs(10);

/// Forwards the guest's listening ports from one network namespace on the host; stops (every
/// listener and connection closed) when dropped.
pub struct PortForwarder {
    task: JoinHandle<()>,
}

impl Drop for PortForwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PortForwarder {
    /// Starts forwarding to the agent at `agent`, listening in the network namespace at
    /// `netns` (the pod's), or in this process's own when `None` (a host-network pod).
    pub fn start(agent: Endpoint, netns: Option<PathBuf>) -> PortForwarder {
        PortForwarder {
            task: tokio::spawn(run(agent, netns)),
        }
    }
}

/// Lowest port forwarded on the host's own network (a host-network pod): below it are the
/// host's privileged ports, which a root shim could take but a runc pod without
/// NET_BIND_SERVICE could not (the kernel's default `ip_unprivileged_port_start`).
pub const HOST_NETWORK_MIN_PORT: u16 = 1024;

/// At most this many ports are named in one log line.
const LOG_PORTS: usize = 16;

fn some_ports(ports: &[u16]) -> String {
    let mut s = ports
        .iter()
        .take(LOG_PORTS)
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if ports.len() > LOG_PORTS {
        s.push_str(&format!(" and {} more", ports.len() - LOG_PORTS));
    }
    s
}

async fn run(endpoint: Endpoint, netns: Option<PathBuf>) {
    let permits = Arc::new(Semaphore::new(MAX_FORWARD_CONNECTIONS));
    let mut listening: BTreeMap<u16, AbortHandle> = BTreeMap::new();
    // Ports whose bind failed (something on the host side holds them, or they are the host's
    // privileged ones): tried again when the guest's set changes.
    let mut refused: BTreeMap<u16, String> = BTreeMap::new();
    let mut client: Option<Arc<AgentClient>> = None;
    let mut known: Vec<u16> = Vec::new();
    // The accept loops; aborted with this task (the JoinSet aborts what it holds on drop).
    let mut tasks = JoinSet::new();
    let where_ = netns
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "the host's network".into());
    loop {
        let c = match &client {
            Some(c) => c.clone(),
            None => match AgentClient::connect(endpoint.clone(), CONNECT).await {
                Ok(c) => {
                    let c = Arc::new(c);
                    client = Some(c.clone());
                    c
                }
                Err(e) => {
                    tracing::debug!("port-forward: agent not reachable: {e}");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        let called = tokio::time::Instant::now();
        let ports = match c.listening_ports(&known, WATCH).await {
            Ok(p) => p,
            Err(e) => {
                // A new connection next time, and the listeners start over with it (none keeps
                // the old connection alive).
                tracing::debug!("port-forward: listening_ports: {e}");
                client = None;
                tasks.abort_all();
                listening.clear();
                known.clear();
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        debug_assert!(ports.len() <= MAX_LISTENING_PORTS);
        let mut gone = Vec::new();
        listening.retain(|port, h| {
            let keep = ports.contains(port);
            if !keep {
                h.abort();
                gone.push(*port);
            }
            keep
        });
        if !gone.is_empty() {
            tracing::info!(
                "port-forward: no longer listening in the guest: {}",
                some_ports(&gone)
            );
        }
        let mut new = Vec::new();
        let mut now_refused = Vec::new();
        for &p in &ports {
            if listening.contains_key(&p) {
                continue;
            }
            if netns.is_none() && p < HOST_NETWORK_MIN_PORT {
                if refused.insert(p, "a privileged port".into()).is_none() {
                    now_refused.push(p);
                }
                continue;
            }
            new.push(p);
        }
        let ns = netns.clone();
        let bound = match tokio::task::spawn_blocking(move || bind_all(ns.as_deref(), &new)).await {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!("port-forward: binding: {e}");
                Vec::new()
            }
        };
        let mut added = Vec::new();
        for (port, r) in bound {
            match r.and_then(|l| {
                l.set_nonblocking(true)?;
                tokio::net::TcpListener::from_std(l)
            }) {
                Ok(l) => {
                    refused.remove(&port);
                    added.push(port);
                    let h = tasks.spawn(accept_loop(l, port, c.clone(), permits.clone()));
                    listening.insert(port, h);
                }
                Err(e) => {
                    let msg = e.to_string();
                    if refused.get(&port) != Some(&msg) {
                        refused.insert(port, msg);
                        now_refused.push(port);
                    }
                }
            }
        }
        if !added.is_empty() {
            tracing::info!(
                "port-forward: 127.0.0.1 in {where_} goes to the guest for {}",
                some_ports(&added)
            );
        }
        if !now_refused.is_empty() {
            let first = refused.get(&now_refused[0]).cloned().unwrap_or_default();
            tracing::warn!(
                "port-forward: not forwarding {} from {where_} (first: {first})",
                some_ports(&now_refused)
            );
        }
        refused.retain(|p, _| ports.contains(p));
        // Finished accept loops (their listener failed) are collected here.
        while tasks.try_join_next().is_some() {}
        known = ports;
        tokio::time::sleep_until(called + MIN_INTERVAL).await;
    }
}

/// Binds `127.0.0.1:<port>` for each of `ports` in the namespace at `netns` (or this
/// process's). Blocking: run off the async workers.
fn bind_all(
    netns: Option<&Path>,
    ports: &[u16],
) -> Vec<(u16, std::io::Result<std::net::TcpListener>)> {
    let bind =
        |port: u16| std::net::TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port));
    if ports.is_empty() {
        return Vec::new();
    }
    let Some(path) = netns else {
        return ports.iter().map(|&p| (p, bind(p))).collect();
    };
    let all_failed = |e: &std::io::Error| {
        ports
            .iter()
            .map(|&p| (p, Err(std::io::Error::new(e.kind(), e.to_string()))))
            .collect()
    };
    let ns = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return all_failed(&e),
    };
    let ports = ports.to_vec();
    // A thread of its own enters the namespace (setns changes the calling thread only) and
    // ends after the binds: the sockets stay in the namespace they were made in. Never a pooled
    // thread, which would keep the namespace for other work.
    let r = std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(std::io::Error::from)?;
        Ok::<_, std::io::Error>(ports.iter().map(|&p| (p, bind(p))).collect::<Vec<_>>())
    })
    .join();
    match r {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => all_failed(&e),
        Err(_) => all_failed(&std::io::Error::other("the bind thread panicked")),
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    port: u16,
    client: Arc<AgentClient>,
    permits: Arc<Semaphore>,
) {
    // The connections of this port; dropped (closed) with the loop.
    let mut conns = JoinSet::new();
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("port-forward {port}: accept: {e}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        // A connection over the limit is closed at once (the caller sees it end), never left
        // waiting in the backlog; an idle listener holds no slot.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::debug!(
                "port-forward {port}: {MAX_FORWARD_CONNECTIONS} connections already; closing one from {peer}"
            );
            continue;
        };
        while conns.try_join_next().is_some() {}
        let client = client.clone();
        conns.spawn(async move {
            let _permit = permit;
            let mut tcp = tcp;
            let _ = tcp.set_nodelay(true);
            let mut guest = match client.open_forward(port).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("port-forward {port}: from {peer}: {e}");
                    return;
                }
            };
            match tokio::io::copy_bidirectional(&mut tcp, &mut guest).await {
                Ok((up, down)) => {
                    tracing::debug!("port-forward {port}: {up} bytes in, {down} out, closed")
                }
                Err(e) => tracing::debug!("port-forward {port}: {e}"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::tests::{hostile_agent, next_request, reply};
    use hull_agent_protocol::{ConnectionKind, Request, Response};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A fake guest says port P listens; a connection to 127.0.0.1:P on the host side reaches
    /// the guest's side of a forward connection for P, both ways, half-close included. Once
    /// the forwarder is dropped, nothing listens on P.
    #[tokio::test]
    async fn a_guest_port_is_reached_from_the_host_side_until_the_forwarder_stops() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (dir, _c) = hostile_agent("forward", move |kind, mut s| async move {
            match kind {
                ConnectionKind::Control => {
                    let mut first = true;
                    while let Some(req) = next_request(&mut s).await {
                        assert!(matches!(req.call, Request::ListeningPorts { .. }));
                        if first {
                            first = false;
                            let ports = vec![port];
                            reply(&mut s, req.id, Ok(Response::Ports { ports })).await;
                        }
                        // Later calls wait for a change that never comes (no reply).
                    }
                }
                ConnectionKind::Forward { port: p } => {
                    assert_eq!(p, port);
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.unwrap();
                    s.write_all(b"guest got ").await.unwrap();
                    s.write_all(&got).await.unwrap();
                }
                other => panic!("unexpected connection {other:?}"),
            }
        })
        .await;
        let fwd = PortForwarder::start(Endpoint::unix(dir.0.join("a.sock")), None);
        let mut answer = None;
        for _ in 0..100 {
            if let Ok(mut c) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                c.write_all(b"hello").await.unwrap();
                c.shutdown().await.unwrap();
                let mut out = String::new();
                c.read_to_string(&mut out).await.unwrap();
                answer = Some(out);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(answer.as_deref(), Some("guest got hello"));
        drop(fwd);
        let mut closed = false;
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
            {
                closed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            closed,
            "127.0.0.1:{port} still listens after the forwarder stopped"
        );
    }

    /// A guest that answers every `listening_ports` at once with another set cannot make the
    /// host call, bind and close in a tight loop: one call per `MIN_INTERVAL` at most.
    #[tokio::test]
    async fn a_guest_that_answers_at_once_is_asked_at_a_bounded_rate() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let (dir, _c) = hostile_agent("forward-flood", move |kind, mut s| {
            let counted = counted.clone();
            async move {
                if let ConnectionKind::Control = kind {
                    while let Some(req) = next_request(&mut s).await {
                        let n = counted.fetch_add(1, Ordering::SeqCst);
                        // Ports no test listens on, a different set each time.
                        let ports = vec![if n.is_multiple_of(2) { 1 } else { 2 }];
                        reply(&mut s, req.id, Ok(Response::Ports { ports })).await;
                    }
                }
            }
        })
        .await;
        let fwd = PortForwarder::start(Endpoint::unix(dir.0.join("a.sock")), None);
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(fwd);
        let n = calls.load(Ordering::SeqCst);
        assert!((1..=6).contains(&n), "{n} calls in 2 s");
    }
}
