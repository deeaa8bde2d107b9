//! Accepting connections, the hello handshake, and serving control connections.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_agent_protocol::frame::{read_frame_async, write_frame_async, write_raw_frame_async};
use hull_agent_protocol::{
    decode_hello, decode_request, encode_frame, AgentError, AgentMode, ConnectionKind, ErrorKind,
    FrameError, HealthInfo, HelloReply, Request, Response, ResponseFrame, StdStream, VersionInfo,
    HELLO_TIMEOUT_MS, MAX_IN_FLIGHT, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::process::streams::{self, Attachment};
use crate::process::Processes;
use crate::transport::{BoxConn, Listener};

/// Grace period between SIGTERM and SIGKILL at shutdown, unless the request says otherwise.
pub const DEFAULT_GRACE_MS: u32 = 2000;
/// Longest grace period a request may ask for.
pub const MAX_GRACE_MS: u32 = 60_000;

/// Shared state of the serving agent.
pub struct Agent {
    pub procs: Arc<Processes>,
    pub mode: AgentMode,
    pub started: Instant,
    /// Set once by a shutdown request: the grace period.
    shutdown: Mutex<Option<oneshot::Sender<u32>>>,
}

impl Agent {
    /// The agent and the receiver that fires when the host asks for a shutdown.
    pub fn new(mode: AgentMode) -> (Arc<Agent>, oneshot::Receiver<u32>) {
        let (tx, rx) = oneshot::channel();
        (
            Arc::new(Agent {
                procs: Arc::new(Processes::new()),
                mode,
                started: Instant::now(),
                shutdown: Mutex::new(Some(tx)),
            }),
            rx,
        )
    }
}

/// Accepts connections until the listener fails (returns why).
pub async fn serve(agent: Arc<Agent>, listener: Listener) -> std::io::Error {
    loop {
        let (conn, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) if is_transient(&e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => return e,
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            handle_connection(agent, conn, &peer).await;
        });
    }
}

fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EINTR
        )
    )
}

async fn reply_hello(conn: &mut BoxConn, result: Result<(), AgentError>) -> bool {
    let reply = HelloReply {
        version: PROTOCOL_VERSION,
        result,
    };
    write_frame_async(conn, &reply).await.is_ok()
}

async fn handle_connection(agent: Arc<Agent>, mut conn: BoxConn, peer: &str) {
    let hello = tokio::time::timeout(
        Duration::from_millis(HELLO_TIMEOUT_MS),
        read_frame_async(&mut conn),
    )
    .await;
    let payload = match hello {
        Err(_) => {
            tracing::warn!(
                "connection from {peer}: no hello within {HELLO_TIMEOUT_MS} ms; closing"
            );
            return;
        }
        Ok(Ok(Some(p))) => p,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::warn!("connection from {peer}: bad hello frame: {e}");
            let _ = reply_hello(&mut conn, Err(e.to_agent_error())).await;
            return;
        }
    };
    let hello = match decode_hello(&payload) {
        Ok(h) => h,
        Err(e) => {
            tracing::warn!("connection from {peer}: {}", e.message);
            let _ = reply_hello(&mut conn, Err(e)).await;
            let _ = conn.shutdown().await;
            return;
        }
    };
    match hello.connection {
        ConnectionKind::Control => {
            if reply_hello(&mut conn, Ok(())).await {
                tracing::debug!("control connection from {peer}");
                serve_control(agent, conn).await;
            }
        }
        ConnectionKind::Log => {
            if reply_hello(&mut conn, Ok(())).await {
                streams::run_log(conn).await;
            }
        }
        ConnectionKind::Stream { process, stream } => {
            match agent.procs.attach(process, stream) {
                Err(e) => {
                    let _ = reply_hello(&mut conn, Err(e)).await;
                }
                Ok((proc, att)) => {
                    // The stream is claimed; if the reply cannot be sent, hand it back through
                    // the normal end-of-connection path.
                    let _ = reply_hello(&mut conn, Ok(())).await;
                    match att {
                        Attachment::Output(fd) => {
                            streams::run_output(agent.procs.clone(), proc, stream, fd, conn).await
                        }
                        Attachment::Stdin(fd) => streams::run_stdin(proc, fd, conn).await,
                        Attachment::Drained => {
                            debug_assert_ne!(stream, StdStream::Stdin);
                            let _ = conn.shutdown().await;
                        }
                    }
                }
            }
        }
    }
}

/// An outgoing frame and, optionally, who to tell once it is written.
type Outgoing = (Vec<u8>, Option<oneshot::Sender<()>>);

async fn send(tx: &mpsc::Sender<Outgoing>, frame: ResponseFrame, ack: Option<oneshot::Sender<()>>) {
    let bytes = match encode_frame(&frame) {
        Ok(b) => b,
        Err(e) => {
            // Only a reply over the frame limit gets here (e.g. a huge process list).
            tracing::error!("reply to request {} cannot be encoded: {e}", frame.id);
            match encode_frame(&ResponseFrame {
                id: frame.id,
                result: Err(AgentError::new(
                    ErrorKind::Io,
                    format!("the reply cannot be sent: {e}"),
                )),
            }) {
                Ok(b) => b,
                Err(_) => return,
            }
        }
    };
    let _ = tx.send((bytes, ack)).await;
}

async fn serve_control(agent: Arc<Agent>, conn: BoxConn) {
    let (mut rd, mut wr) = tokio::io::split(conn);
    let (tx, mut rx) = mpsc::channel::<Outgoing>(64);
    let writer = tokio::spawn(async move {
        while let Some((frame, ack)) = rx.recv().await {
            if write_raw_frame_async(&mut wr, &frame).await.is_err() {
                break;
            }
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
        }
    });
    let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
    let mut calls = JoinSet::new();
    loop {
        // Reap finished call tasks as we go, so the set does not grow.
        while calls.try_join_next().is_some() {}
        let payload = match read_frame_async(&mut rd).await {
            Ok(Some(p)) => p,
            Ok(None) => break,
            Err(FrameError::Empty) => {
                send(
                    &tx,
                    error_frame(0, FrameError::Empty.to_agent_error()),
                    None,
                )
                .await;
                continue;
            }
            Err(e @ FrameError::TooLarge { .. }) => {
                // The frame boundary is lost: say why, then close this connection only.
                tracing::warn!("control connection: {e}; closing it");
                send(&tx, error_frame(0, e.to_agent_error()), None).await;
                break;
            }
            Err(e) => {
                tracing::warn!("control connection: {e}");
                break;
            }
        };
        let frame = match decode_request(&payload) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!("bad request: {}", e.error.message);
                send(&tx, error_frame(e.id.unwrap_or(0), e.error), None).await;
                continue;
            }
        };
        let id = frame.id;
        let refused = {
            let mut set = in_flight.lock().unwrap_or_else(|e| e.into_inner());
            if set.len() >= MAX_IN_FLIGHT {
                Some(AgentError::new(
                    ErrorKind::Busy,
                    format!("{MAX_IN_FLIGHT} requests are already in flight on this connection"),
                ))
            } else if !set.insert(id) {
                Some(AgentError::new(
                    ErrorKind::BadFrame,
                    format!("request id {id} is already in flight on this connection"),
                ))
            } else {
                None
            }
        };
        if let Some(err) = refused {
            send(&tx, error_frame(id, err), None).await;
            continue;
        }
        let agent = agent.clone();
        let tx = tx.clone();
        let in_flight = in_flight.clone();
        calls.spawn(async move {
            let shutdown_grace = match &frame.call {
                Request::Shutdown { grace_ms } => {
                    Some(grace_ms.unwrap_or(DEFAULT_GRACE_MS).min(MAX_GRACE_MS))
                }
                _ => None,
            };
            let result = handle_call(&agent, frame.call).await;
            in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            if let (Some(grace), true) = (shutdown_grace, result.is_ok()) {
                // Reply first (and wait until it is written), then shut down. The wait runs in a
                // task of its own: a host that closes the connection as soon as it has the reply
                // aborts this call's task (see `abort_all` below), and the shutdown must happen
                // anyway. A reply never written (ack dropped) shuts down at once.
                let (ack_tx, ack_rx) = oneshot::channel();
                let stopper = agent.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ack_rx).await;
                    stopper.request_shutdown(grace);
                });
                send(&tx, ResponseFrame { id, result }, Some(ack_tx)).await;
            } else {
                send(&tx, ResponseFrame { id, result }, None).await;
            }
        });
    }
    // The host is gone: its pending calls (waits) are dropped; processes keep running.
    calls.abort_all();
    drop(tx);
    let _ = writer.await;
}

fn error_frame(id: u64, e: AgentError) -> ResponseFrame {
    ResponseFrame { id, result: Err(e) }
}

impl Agent {
    /// Host mode: SIGTERM every process group the agent started, SIGKILL after the grace period.
    pub async fn stop_processes(&self, grace: Duration) {
        use nix::sys::signal::Signal;
        self.procs.signal_all(Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        while self.procs.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.procs.signal_all(Signal::SIGKILL);
        // Let the reaper collect them.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.procs.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn request_shutdown(&self, grace_ms: u32) {
        if let Some(tx) = self
            .shutdown
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            let _ = tx.send(grace_ms);
        }
    }
}

async fn handle_call(agent: &Agent, call: Request) -> Result<Response, AgentError> {
    let procs = &agent.procs;
    match call {
        Request::Version => Ok(Response::Version(VersionInfo {
            protocol: PROTOCOL_VERSION,
            agent: env!("CARGO_PKG_VERSION").to_string(),
            mode: agent.mode,
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
        })),
        Request::Health => Ok(Response::Health(HealthInfo {
            uptime_ms: agent.started.elapsed().as_millis() as u64,
            running_processes: procs.running(),
        })),
        Request::Spawn(req) => {
            let p = procs.spawn(&req)?;
            Ok(Response::Spawned {
                process: p.id,
                pid: p.pid,
            })
        }
        Request::Signal {
            process,
            signal,
            group,
        } => procs
            .signal(process, signal, group)
            .map(|()| Response::Done),
        Request::Wait { process } => procs.wait(process).await.map(Response::Exited),
        Request::CloseStdin {
            process,
            after_bytes,
        } => procs
            .close_stdin(process, after_bytes)
            .await
            .map(|()| Response::Done),
        Request::ResizeTerminal {
            process,
            rows,
            cols,
        } => procs.resize(process, rows, cols).map(|()| Response::Done),
        Request::Release { process } => procs.release(process).map(|()| Response::Done),
        Request::ListProcesses => Ok(Response::Processes {
            processes: procs.list(),
        }),
        Request::Stats => crate::stats::collect().map(Response::Stats),
        Request::SetTime { seconds, nanos } => {
            if agent.mode == AgentMode::Host {
                return Err(AgentError::new(
                    ErrorKind::Unsupported,
                    "set_time is refused in host mode: the agent does not change its host's clock",
                ));
            }
            crate::init::set_clock(seconds, nanos).map(|()| Response::Done)
        }
        Request::Mount(req) => {
            // Mounting a virtio-fs share is a FUSE round trip to the VMM: keep it off the
            // async workers.
            tokio::task::spawn_blocking(move || crate::mounts::mount_fs(&req))
                .await
                .map_err(|e| AgentError::new(ErrorKind::Io, format!("mount task: {e}")))?
                .map(|()| Response::Done)
        }
        Request::Unmount { target, lazy } => {
            tokio::task::spawn_blocking(move || crate::mounts::unmount_fs(&target, lazy))
                .await
                .map_err(|e| AgentError::new(ErrorKind::Io, format!("unmount task: {e}")))?
                .map(|()| Response::Done)
        }
        // The shutdown itself starts once this reply is written (see serve_control).
        Request::Shutdown { .. } => Ok(Response::Done),
        other => Err(AgentError::new(
            ErrorKind::UnknownRequest,
            format!(
                "request type {:?} is not served by this agent",
                other.type_name()
            ),
        )),
    }
}
