//! Where the agent listens: vsock in the guest, a Unix socket in host mode. Both hand out the
//! same boxed byte stream, so everything above (control, streams, logs) is transport-blind.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::UnixListener;
use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

/// A connected byte stream.
pub trait Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Conn for T {}
pub type BoxConn = Box<dyn Conn>;

/// A listen address: `vsock:PORT` or `unix:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Vsock(u32),
    Unix(PathBuf),
}

impl std::str::FromStr for Address {
    type Err = String;
    fn from_str(s: &str) -> Result<Address, String> {
        if let Some(port) = s.strip_prefix("vsock:") {
            port.parse()
                .map(Address::Vsock)
                .map_err(|_| format!("bad vsock port in {s:?}: expected vsock:PORT"))
        } else if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a socket path (unix:/run/agent.sock)".into());
            }
            Ok(Address::Unix(PathBuf::from(path)))
        } else {
            Err(format!(
                "unknown listen address {s:?}: expected vsock:PORT or unix:PATH"
            ))
        }
    }
}

pub enum Listener {
    Vsock(VsockListener),
    /// The path is removed when the listener is dropped.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub fn bind(addr: &Address) -> io::Result<Listener> {
        match addr {
            Address::Vsock(port) => {
                VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, *port)).map(Listener::Vsock)
            }
            Address::Unix(path) => {
                remove_stale_socket(path)?;
                let l = UnixListener::bind(path)?;
                Ok(Listener::Unix(l, path.clone()))
            }
        }
    }

    /// The next connection and a description of its peer.
    pub async fn accept(&self) -> io::Result<(BoxConn, String)> {
        match self {
            Listener::Vsock(l) => {
                let (s, a) = l.accept().await?;
                Ok((
                    Box::new(s),
                    format!("vsock cid {} port {}", a.cid(), a.port()),
                ))
            }
            Listener::Unix(l, _) => {
                let (s, _) = l.accept().await?;
                Ok((Box::new(s), "unix".into()))
            }
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes a socket file nobody listens on (left by a killed agent); refuses to touch a live
/// socket or anything that is not a socket.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if !m.file_type().is_socket() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{}: another agent is listening there", path.display()),
            )),
            Err(_) => std::fs::remove_file(path),
        },
    }
}
