use std::path::PathBuf;
use std::time::Duration;

use hull_agent_protocol::AGENT_VSOCK_PORT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::error::Error;

/// Longest `OK <port>\n` line accepted from the VMM.
const MAX_HANDSHAKE_LINE: usize = 64;

/// Where the agent is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// hull-vmm's hybrid vsock Unix socket, and the guest port the agent listens on.
    HybridVsock { uds: PathBuf, port: u32 },
    /// A Unix socket served by `hull-agent --listen unix:PATH` (host mode).
    Unix(PathBuf),
}

impl Endpoint {
    /// The agent of a VM whose hull-vmm serves hybrid vsock at `uds`.
    pub fn vm(uds: impl Into<PathBuf>) -> Endpoint {
        Endpoint::HybridVsock {
            uds: uds.into(),
            port: AGENT_VSOCK_PORT,
        }
    }

    /// A host-mode agent.
    pub fn unix(path: impl Into<PathBuf>) -> Endpoint {
        Endpoint::Unix(path.into())
    }

    /// Opens a byte stream to the agent (before the hello): connects, and for hybrid vsock
    /// does the `CONNECT` handshake.
    pub async fn open(&self, timeout: Duration) -> Result<UnixStream, Error> {
        match tokio::time::timeout(timeout, self.open_inner()).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                what: format!("connecting to the agent at {self}"),
                after: timeout,
            }),
        }
    }

    async fn open_inner(&self) -> Result<UnixStream, Error> {
        let path = match self {
            Endpoint::HybridVsock { uds, .. } => uds,
            Endpoint::Unix(p) => p,
        };
        let mut s = UnixStream::connect(path)
            .await
            .map_err(|source| Error::Connect {
                endpoint: self.to_string(),
                source,
            })?;
        if let Endpoint::HybridVsock { port, .. } = self {
            self.handshake(&mut s, *port).await?;
        }
        Ok(s)
    }

    async fn handshake(&self, s: &mut UnixStream, port: u32) -> Result<(), Error> {
        let fail = |reason: String, not_listening: bool| Error::Handshake {
            endpoint: self.to_string(),
            reason,
            not_listening,
        };
        if let Err(e) = s.write_all(format!("CONNECT {port}\n").as_bytes()).await {
            return Err(fail(format!("sending CONNECT: {e}"), true));
        }
        // Byte by byte: nothing after the newline may be consumed.
        let mut line = Vec::with_capacity(16);
        loop {
            let mut b = [0u8; 1];
            match s.read(&mut b).await {
                Ok(0) => {
                    return Err(fail(
                        format!(
                            "the VMM closed the connection: nothing listens on guest port {port} \
                             (yet)"
                        ),
                        true,
                    ))
                }
                Ok(_) if b[0] == b'\n' => break,
                Ok(_) => {
                    line.push(b[0]);
                    if line.len() > MAX_HANDSHAKE_LINE {
                        return Err(fail(
                            format!("answer longer than {MAX_HANDSHAKE_LINE} bytes"),
                            false,
                        ));
                    }
                }
                Err(e) => return Err(fail(format!("reading the answer: {e}"), true)),
            }
        }
        let line = String::from_utf8_lossy(&line);
        match line.strip_prefix("OK ") {
            Some(p) if p.trim().parse::<u32>().is_ok() => Ok(()),
            _ => Err(fail(format!("expected \"OK <port>\", got {line:?}"), false)),
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::HybridVsock { uds, port } => {
                write!(f, "hybrid vsock {} port {port}", uds.display())
            }
            Endpoint::Unix(p) => write!(f, "unix {}", p.display()),
        }
    }
}
