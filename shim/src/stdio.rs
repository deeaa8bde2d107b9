//! A task's standard streams: the paths containerd passes (FIFOs it created, possibly empty,
//! or `file://` paths) copied to and from the agent's stream connections.
//!
//! Opening never blocks, as in runc-v2: stdin's read side is opened non-blocking (a FIFO without
//! a writer yet), and stdout/stderr are opened read-write, so the open does not wait for
//! containerd's reader and a write never fails with EPIPE while it reattaches.
//!
//! Stdin reaches end-of-file only when a writer came and went: the reader waits for epoll's
//! readiness, which a FIFO reports for data, or for a hang-up once a writer had opened it (a
//! FIFO whose writer has not opened it yet is not readable, so no early end-of-file).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hull_agent_protocol::{Redirect, StdioSpec};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

/// The stdio of one process as containerd describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

impl StdioPaths {
    /// What the agent sets up: a terminal (of `size`, rows and columns), or a pipe for each
    /// stream containerd gave a path for and /dev/null for the others.
    pub fn spec(&self, size: (u16, u16)) -> StdioSpec {
        if self.terminal {
            return StdioSpec::Terminal {
                rows: size.0,
                cols: size.1,
            };
        }
        let r = |p: &str| {
            if p.is_empty() {
                Redirect::Null
            } else {
                Redirect::Pipe
            }
        };
        StdioSpec::Pipes {
            stdin: r(&self.stdin),
            stdout: r(&self.stdout),
            stderr: r(&self.stderr),
        }
    }

    /// Whether the agent's stderr stream carries anything (not with a terminal).
    pub fn has_stderr(&self) -> bool {
        !self.terminal && !self.stderr.is_empty()
    }
}

/// A path containerd passed: a FIFO path, or a `file://` URL (a log file). `binary://` log
/// drivers are not supported.
fn local_path(p: &str) -> std::io::Result<PathBuf> {
    if let Some(rest) = p.strip_prefix("file://") {
        return Ok(PathBuf::from(rest));
    }
    if p.contains("://") {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            format!("stdio {p:?}: only FIFOs, files and file:// URLs are supported"),
        ));
    }
    Ok(PathBuf::from(p))
}

/// The read side of a stdin FIFO (or file).
pub struct Input(AsyncFd<File>);

impl Input {
    /// Opens `path` for reading without blocking.
    pub fn open(path: &str) -> std::io::Result<Input> {
        let path = local_path(path)?;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| annotate(e, "open stdin", &path))?;
        // SAFETY: the File owns its descriptor, and the AsyncFd owns the File: the descriptor
        // is neither closed nor replaced while it is registered.
        let fd = unsafe { AsyncFd::register_with_interest(f, tokio::io::Interest::READABLE)? };
        Ok(Input(fd))
    }

    /// Reads some bytes; 0 is end-of-file.
    pub async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut ready = self.0.readable().await?;
            match ready.try_io(|f| f.get_ref().read(buf)) {
                Ok(r) => return r,
                Err(_would_block) => continue,
            }
        }
    }
}

fn annotate(e: std::io::Error, what: &str, path: &Path) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

/// Where an output stream goes.
pub type Output = Box<dyn AsyncWrite + Send + Unpin>;

/// Opens an output path: a FIFO read-write and non-blocking, anything else (a file, a
/// `file://` URL) for appending.
pub async fn open_output(path: &str) -> std::io::Result<Output> {
    let path = local_path(path)?;
    let is_fifo = std::fs::metadata(&path)
        .map(|m| m.file_type().is_fifo())
        .unwrap_or(false);
    if is_fifo {
        let tx = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&path)
            .map_err(|e| annotate(e, "open output FIFO", &path))?;
        return Ok(Box::new(tx));
    }
    let f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
        .map_err(|e| annotate(e, "open output file", &path))?;
    Ok(Box::new(f))
}

/// Copies an agent output stream to its destination until end-of-file; returns the bytes copied.
pub async fn copy_out(mut from: impl AsyncRead + Unpin, mut to: Output) -> std::io::Result<u64> {
    let n = tokio::io::copy(&mut from, &mut to).await?;
    to.flush().await?;
    Ok(n)
}

/// Copies stdin to the agent's stdin stream until end-of-file or until `close` is notified
/// (CloseIO); returns the bytes written to the agent, for its `close_stdin`.
pub async fn copy_in(
    from: Input,
    mut to: impl AsyncWrite + Unpin,
    close: Arc<Notify>,
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 32 * 1024];
    let mut total = 0u64;
    loop {
        let n = tokio::select! {
            r = from.read(&mut buf) => r?,
            () = close.notified() => break,
        };
        if n == 0 {
            break;
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
    }
    to.shutdown().await.ok();
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn fifo(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        p
    }

    #[test]
    fn stdio_specs() {
        let mut p = StdioPaths {
            stdin: String::new(),
            stdout: "/f/out".into(),
            stderr: "/f/err".into(),
            terminal: false,
        };
        assert_eq!(
            p.spec((24, 80)),
            StdioSpec::Pipes {
                stdin: Redirect::Null,
                stdout: Redirect::Pipe,
                stderr: Redirect::Pipe
            }
        );
        assert!(p.has_stderr());
        p.terminal = true;
        assert_eq!(
            p.spec((30, 100)),
            StdioSpec::Terminal {
                rows: 30,
                cols: 100
            }
        );
        assert!(!p.has_stderr());
        assert!(local_path("binary:///usr/bin/logger").is_err());
        assert_eq!(
            local_path("file:///var/log/x").unwrap(),
            Path::new("/var/log/x")
        );
    }

    /// Output: opening a FIFO nobody reads yet does not block; what the agent sends arrives
    /// whole at containerd's reader.
    #[tokio::test]
    async fn output_to_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "out");
        let out = open_output(path.to_str().unwrap()).await.unwrap();
        let mut reader = tokio::net::unix::pipe::OpenOptions::new()
            .open_receiver(&path)
            .unwrap();
        let (mut agent, shim_side) = tokio::net::UnixStream::pair().unwrap();
        let copier = tokio::spawn(copy_out(shim_side, out));
        agent.write_all(b"hello from the guest\n").await.unwrap();
        drop(agent);
        assert_eq!(copier.await.unwrap().unwrap(), 21);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello from the guest\n");
    }

    #[tokio::test]
    async fn output_to_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, "before\n").unwrap();
        let out = open_output(&format!("file://{}", path.display()))
            .await
            .unwrap();
        copy_out(&b"after\n"[..], out).await.unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "before\nafter\n");
    }

    /// Stdin: no end-of-file before containerd's writer opened the FIFO; everything written
    /// reaches the agent, then end-of-file when the writer closes.
    #[tokio::test]
    async fn stdin_from_fifo_waits_for_its_writer() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "in");
        let input = Input::open(path.to_str().unwrap()).unwrap();
        let (agent, shim_side) = tokio::net::UnixStream::pair().unwrap();
        let copier = tokio::spawn(copy_in(input, shim_side, Arc::new(Notify::new())));
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!copier.is_finished(), "stdin ended before a writer came");
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut w, b"line one\nline two\n").unwrap();
        drop(w);
        assert_eq!(copier.await.unwrap().unwrap(), 18);
        let mut got = String::new();
        let mut agent = agent;
        agent.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "line one\nline two\n");
    }

    /// CloseIO stops the copy while the writer is still open, and reports the bytes sent.
    #[tokio::test]
    async fn stdin_closed_by_closeio() {
        let dir = tempfile::tempdir().unwrap();
        let path = fifo(dir.path(), "in");
        let input = Input::open(path.to_str().unwrap()).unwrap();
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        std::io::Write::write_all(&mut w, b"abc").unwrap();
        let (mut agent, shim_side) = tokio::net::UnixStream::pair().unwrap();
        let close = Arc::new(Notify::new());
        let copier = tokio::spawn(copy_in(input, shim_side, close.clone()));
        let mut buf = [0u8; 3];
        agent.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"abc");
        close.notify_one();
        assert_eq!(copier.await.unwrap().unwrap(), 3);
        let mut rest = Vec::new();
        agent.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        drop(w);
    }
}
