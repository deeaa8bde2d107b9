//! Stream connections: copying a process's stdout/stderr to the host and the host's bytes into
//! its stdin, with the hand-over rules described in the protocol docs.

use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use hull_agent_protocol::{AgentError, ErrorKind, ProcessId, StdStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};

use super::{CloseAt, Fd, Output, Process, Processes, StdinSlot};
use crate::transport::BoxConn;

/// Copy buffer per stream connection.
const CHUNK: usize = 256 * 1024;

/// How long an attached output stream may stay silent after its process exited before the agent
/// ends it: something the process left behind (a background child in the guest's pid namespace,
/// an exec'd `sleep &`) holds the pipe open without writing, and would otherwise delay `wait`
/// for as long as it lives. runc returns when the container's process exits, whatever holds its
/// stdout. Output that keeps coming keeps the stream going.
pub(crate) const OUTPUT_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

/// A stream claimed for one stream connection; [`Claim::copy`] serves it.
pub struct Claim {
    procs: Arc<Processes>,
    proc: Arc<Process>,
    stream: StdStream,
    attachment: Attachment,
}

impl Claim {
    /// Copies the stream over its connection: output to the host until end-of-file (or until
    /// the host goes away: the pipe is held again), or the host's bytes into stdin.
    pub async fn copy(self, mut conn: BoxConn) {
        match self.attachment {
            Attachment::Output(fd) => {
                run_output(self.procs, self.proc, self.stream, fd, conn).await
            }
            Attachment::Stdin(fd) => run_stdin(self.proc, fd, conn).await,
            Attachment::Drained => {
                debug_assert_ne!(self.stream, StdStream::Stdin);
                let _ = conn.shutdown().await;
            }
        }
    }
}

/// What a stream connection got.
enum Attachment {
    /// Copy this output descriptor to the host.
    Output(Fd),
    /// The stream was already drained: the host gets end-of-file at once.
    Drained,
    /// Copy the host's bytes into this stdin descriptor.
    Stdin(Fd),
}

impl Processes {
    /// Claims a stream for a connection (before the hello reply is sent, so a `wait` that
    /// follows the reply accounts for it).
    pub fn attach(self: &Arc<Self>, id: ProcessId, stream: StdStream) -> Result<Claim, AgentError> {
        let proc = self.get(id)?;
        let busy = || {
            AgentError::new(
                ErrorKind::Busy,
                format!("{stream:?} of {id} already has a stream connection"),
            )
        };
        let att = {
            let mut st = proc.state();
            if stream == StdStream::Stdin {
                match std::mem::replace(&mut st.stdin, StdinSlot::Attached) {
                    StdinSlot::Idle(fd) => Attachment::Stdin(fd),
                    other => {
                        let err = match &other {
                            StdinSlot::NotPiped(why) => {
                                AgentError::new(ErrorKind::InvalidArgument, format!("{id}: {why}"))
                            }
                            StdinSlot::Closed => AgentError::new(
                                ErrorKind::InvalidArgument,
                                format!("stdin of {id} is already closed"),
                            ),
                            _ => busy(),
                        };
                        st.stdin = other;
                        return Err(err);
                    }
                }
            } else {
                let slot = st.output(stream);
                match std::mem::replace(slot, Output::Attached) {
                    Output::Held(fd) => Attachment::Output(fd),
                    Output::Eof => {
                        *slot = Output::Eof;
                        Attachment::Drained
                    }
                    Output::NotPiped(why) => {
                        *slot = Output::NotPiped(why);
                        return Err(AgentError::new(
                            ErrorKind::InvalidArgument,
                            format!("{id}: {why}"),
                        ));
                    }
                    Output::Attached => return Err(busy()),
                }
            }
        };
        proc.notify();
        Ok(Claim {
            procs: self.clone(),
            proc,
            stream,
            attachment: att,
        })
    }
}

async fn read_fd(fd: &Fd, buf: &mut [u8]) -> io::Result<usize> {
    fd.async_io(Interest::READABLE, |inner| {
        nix::unistd::read(inner.as_raw_fd(), buf).map_err(io::Error::from)
    })
    .await
}

async fn write_fd(fd: &Fd, data: &[u8]) -> io::Result<usize> {
    fd.async_io(Interest::WRITABLE, |inner| {
        nix::unistd::write(inner, data).map_err(io::Error::from)
    })
    .await
}

enum OutEnd {
    /// The pipe reached end-of-file and everything was written to the connection.
    Eof,
    /// The host went away first; the pipe goes back to the agent.
    HostGone,
    /// The process was released.
    Released,
    /// The process exited and the pipe stayed silent for [`OUTPUT_LINGER`]: whatever still holds
    /// it open no longer holds the host.
    Lingered,
}

/// Copies an output stream to its connection until end-of-file (then closes the connection)
/// or until the host goes away (then the pipe is held again).
async fn run_output(
    procs: Arc<Processes>,
    proc: Arc<Process>,
    stream: StdStream,
    fd: Fd,
    conn: BoxConn,
) {
    let (mut rd, mut wr) = tokio::io::split(conn);
    let mut buf = vec![0u8; CHUNK];
    let mut probe = [0u8; 256];
    let mut copied: u64 = 0;
    let mut exited = proc.state().exit.is_some();
    let mut last_read = tokio::time::Instant::now();
    let end = loop {
        tokio::select! {
            r = read_fd(&fd, &mut buf) => match r {
                Ok(0) => break OutEnd::Eof,
                Ok(n) => {
                    if wr.write_all(&buf[..n]).await.is_err() {
                        break OutEnd::HostGone;
                    }
                    copied += n as u64;
                    last_read = tokio::time::Instant::now();
                }
                // A terminal master reads EIO once every slave descriptor is closed.
                Err(e) if e.raw_os_error() == Some(libc::EIO) => break OutEnd::Eof,
                Err(e) => {
                    tracing::warn!("{} {stream:?}: read: {e}", proc.id);
                    break OutEnd::Eof;
                }
            },
            r = rd.read(&mut probe) => match r {
                Ok(0) | Err(_) => break OutEnd::HostGone,
                Ok(_) => {} // nothing is expected from the host here; ignore it
            },
            _ = proc.wait_for(|st| st.released.then_some(())) => break OutEnd::Released,
            _ = proc.wait_for(|st| st.exit.map(|_| ())), if !exited => {
                exited = true;
                last_read = last_read.max(tokio::time::Instant::now());
            }
            _ = tokio::time::sleep_until(last_read + OUTPUT_LINGER), if exited => {
                break OutEnd::Lingered;
            }
        }
    };
    if matches!(end, OutEnd::Lingered) {
        tracing::debug!(
            "{} {stream:?}: still open {OUTPUT_LINGER:?} after the exit, with nothing written; \
             ended (something the process left holds it)",
            proc.id
        );
    }
    match end {
        OutEnd::Eof | OutEnd::Lingered => {
            // Every byte is written; the state says so before the host sees end-of-file, so a
            // host that reads to the end and then asks finds the stream drained.
            *proc.state().output(stream) = Output::Eof;
            proc.notify();
            procs.release_if_collected(&proc);
            let _ = wr.shutdown().await;
            tracing::debug!("{} {stream:?}: end of file after {copied} bytes", proc.id);
            return;
        }
        OutEnd::HostGone => {
            *proc.state().output(stream) = Output::Held(fd);
            tracing::debug!(
                "{} {stream:?}: host closed the stream after {copied} bytes; output held",
                proc.id
            );
        }
        OutEnd::Released => *proc.state().output(stream) = Output::Eof,
    }
    proc.notify();
    procs.release_if_collected(&proc);
}

enum InEnd {
    /// The host closed the stream connection.
    HostEof,
    /// `close_stdin` is due, the process is gone, or it was released.
    Close,
}

/// Writes all of `data`, unless stdin is to be closed at once meanwhile.
async fn write_stdin(proc: &Process, fd: &Fd, mut data: &[u8]) -> Result<usize, ()> {
    let mut written = 0;
    while !data.is_empty() {
        let notified = proc.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let st = proc.state();
            if st.released || st.close_stdin == CloseAt::Now {
                return Err(());
            }
        }
        tokio::select! {
            r = write_fd(fd, data) => match r {
                Ok(n) => {
                    data = &data[n..];
                    written += n;
                    proc.state().stdin_written += n as u64;
                    proc.notify();
                }
                // EPIPE: nobody reads stdin any more (the process exited or closed it).
                Err(_) => return Err(()),
            },
            _ = notified => {}
        }
    }
    Ok(written)
}

/// Copies the host's bytes into stdin until the connection ends or stdin is to be closed.
async fn run_stdin(proc: Arc<Process>, fd: Fd, conn: BoxConn) {
    let (mut rd, _wr) = tokio::io::split(conn);
    let mut buf = vec![0u8; CHUNK];
    let end = loop {
        let notified = proc.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let limit = {
            let st = proc.state();
            if st.released || st.stdin_due() {
                break InEnd::Close;
            }
            match st.close_stdin {
                CloseAt::AfterBytes(n) => (n - st.stdin_written).min(CHUNK as u64) as usize,
                _ => CHUNK,
            }
        };
        tokio::select! {
            r = rd.read(&mut buf[..limit]) => match r {
                Ok(0) | Err(_) => break InEnd::HostEof,
                Ok(n) => {
                    if write_stdin(&proc, &fd, &buf[..n]).await.is_err() {
                        break InEnd::Close;
                    }
                }
            },
            _ = notified => {}
        }
    };
    {
        let mut st = proc.state();
        st.stdin = match end {
            // A terminal stays open for the next connection.
            InEnd::HostEof if proc.terminal && !st.released => StdinSlot::Idle(fd),
            _ => {
                tracing::debug!("{}: stdin closed after {} bytes", proc.id, st.stdin_written);
                StdinSlot::Closed
            }
        };
    }
    proc.notify();
}
