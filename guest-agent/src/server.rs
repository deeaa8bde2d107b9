//! Connection handling: accepting connections, the hello handshake, framing on control
//! connections (reading requests, in-flight ids, writing replies in completion order, one task
//! per call) and handing stream and log connections to their copiers.
//!
//! What a request does is the service's business ([`Agent::handle`]); this module never looks
//! inside a request beyond its id.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hull_agent_protocol::frame::{read_frame_async, write_frame_async, write_raw_frame_async};
use hull_agent_protocol::{
    decode_hello, decode_request, encode_frame, AgentError, ConnectionKind, ErrorKind, FrameError,
    HelloReply, ResponseFrame, HELLO_TIMEOUT_MS, MAX_IN_FLIGHT, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::service::{Agent, Outcome};
use crate::transport::{BoxConn, Listener};

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
                crate::log::serve_connection(conn).await;
            }
        }
        ConnectionKind::Forward { port } => match crate::forward::connect(port).await {
            Err(e) => {
                tracing::debug!("forward {port}: {}", e.message);
                let _ = reply_hello(&mut conn, Err(e)).await;
            }
            Ok(tcp) => {
                if reply_hello(&mut conn, Ok(())).await {
                    crate::forward::splice(conn, tcp, port).await;
                }
            }
        },
        ConnectionKind::Stream { process, stream } => match agent.open_stream(process, stream) {
            Err(e) => {
                let _ = reply_hello(&mut conn, Err(e)).await;
            }
            Ok(claim) => {
                // The stream is claimed; if the reply cannot be sent, hand it back through
                // the normal end-of-connection path.
                let _ = reply_hello(&mut conn, Ok(())).await;
                claim.copy(conn).await;
            }
        },
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
            let mut set = crate::locked(&in_flight);
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
            let Outcome {
                result,
                after_reply,
            } = agent.handle(frame.call).await;
            crate::locked(&in_flight).remove(&id);
            if let Some(after_reply) = after_reply {
                // Reply first (and wait until it is written), then act. The wait runs in a task
                // of its own: a host that closes the connection as soon as it has the reply
                // aborts this call's task (see `abort_all` below), and the action must happen
                // anyway. A reply never written (ack dropped) acts at once.
                let (ack_tx, ack_rx) = oneshot::channel();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ack_rx).await;
                    after_reply();
                });
                send(&tx, ResponseFrame { id, result }, Some(ack_tx)).await;
                // Fault injection for tests: keep this call's task alive after its reply is
                // written, the window in which a host hang-up aborts it. An action run here
                // instead of in its own task would be lost (the shutdown race once seen).
                hold_after_reply().await;
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

/// `HULL_AGENT_TEST_HOLD_AFTER_REPLY_MS`: how long a call's task lingers after writing a reply
/// that has an after-reply action (tests only; unset, it does not linger).
async fn hold_after_reply() {
    static HOLD: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    let hold = HOLD.get_or_init(|| {
        std::env::var("HULL_AGENT_TEST_HOLD_AFTER_REPLY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
    });
    if let Some(d) = hold {
        tokio::time::sleep(*d).await;
    }
}

fn error_frame(id: u64, e: AgentError) -> ResponseFrame {
    ResponseFrame { id, result: Err(e) }
}
