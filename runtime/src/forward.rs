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

async fn run(endpoint: Endpoint, netns: Option<PathBuf>) {
    let permits = Arc::new(Semaphore::new(MAX_FORWARD_CONNECTIONS));
    let mut listening: BTreeMap<u16, AbortHandle> = BTreeMap::new();
    // Ports whose bind failed (something on the host side holds them): tried again when the
    // guest's set changes, logged once.
    let mut refused: BTreeMap<u16, String> = BTreeMap::new();
    let mut client: Option<Arc<AgentClient>> = None;
    let mut known: Vec<u16> = Vec::new();
    // The accept loops; aborted with this task (the JoinSet aborts what it holds on drop).
    let mut tasks = JoinSet::new();
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
        let ports = match c.listening_ports(&known, WATCH).await {
            Ok(p) => p,
            Err(e) => {
                tracing::debug!("port-forward: listening_ports: {e}");
                client = None;
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        debug_assert!(ports.len() <= MAX_LISTENING_PORTS);
        listening.retain(|port, h| {
            let keep = ports.contains(port);
            if !keep {
                h.abort();
                tracing::info!("port-forward: {port} no longer listens in the guest");
            }
            keep
        });
        for &port in &ports {
            if listening.contains_key(&port) {
                continue;
            }
            match bind(netns.as_deref(), port) {
                Ok(l) => {
                    refused.remove(&port);
                    tracing::info!("port-forward: 127.0.0.1:{port} goes to the guest");
                    let h = tasks.spawn(accept_loop(l, port, c.clone(), permits.clone()));
                    listening.insert(port, h);
                }
                Err(e) => {
                    let msg = e.to_string();
                    if refused.get(&port) != Some(&msg) {
                        tracing::warn!(
                            "port-forward: cannot listen on 127.0.0.1:{port} ({}): {msg}",
                            netns
                                .as_deref()
                                .map(|p| p.display().to_string())
                                .unwrap_or_else(|| "the host's network".into())
                        );
                        refused.insert(port, msg);
                    }
                }
            }
        }
        refused.retain(|p, _| ports.contains(p));
        // Finished accept loops (their listener failed) are collected here.
        while tasks.try_join_next().is_some() {}
        known = ports;
    }
}

/// Binds `127.0.0.1:port` in the namespace at `netns` (or this process's).
fn bind(netns: Option<&Path>, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
    let l = match netns {
        None => std::net::TcpListener::bind(addr)?,
        Some(path) => {
            let ns = std::fs::File::open(path)?;
            // A thread of its own enters the namespace (setns changes the calling thread only)
            // and ends after the bind: the socket stays in the namespace it was made in. Never a
            // pooled thread, which would keep the namespace for other work.
            std::thread::spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                std::net::TcpListener::bind(addr)
            })
            .join()
            .map_err(|_| std::io::Error::other("the bind thread panicked"))??
        }
    };
    l.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(l)
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
        let permit = match permits.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("port-forward {port}: accept: {e}");
                tokio::time::sleep(RETRY).await;
                continue;
            }
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
}
