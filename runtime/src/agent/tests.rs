//! The client against a fake hull-vmm hybrid vsock socket and a fake agent: the CONNECT
//! handshake, waiting for a guest that is not listening yet, and hostile or mismatched answers.

use std::path::PathBuf;
use std::time::Duration;

use hull_agent_protocol::frame::{read_frame_async, write_frame_async};
use hull_agent_protocol::{
    decode_hello, decode_request, AgentError, ConnectionKind, ErrorKind, HealthInfo, HelloReply,
    Request, Response, ResponseFrame, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use super::{AgentClient, Endpoint, Error};

pub(crate) struct Dir(pub(crate) PathBuf);
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
fn tmp(tag: &str) -> Dir {
    let p = std::env::temp_dir().join(format!("hull-client-{tag}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    Dir(p)
}

async fn read_line(s: &mut UnixStream) -> String {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8(line).unwrap()
}

/// Plays the agent on an accepted, handshaken stream: hello, then answers health calls.
async fn fake_agent(mut s: UnixStream, version: u32) {
    let hello = read_frame_async(&mut s).await.unwrap().unwrap();
    let h = decode_hello(&hello).unwrap();
    assert_eq!(h.connection, ConnectionKind::Control);
    let result = if version == PROTOCOL_VERSION {
        Ok(())
    } else {
        Err(hull_agent_protocol::version_mismatch(
            PROTOCOL_VERSION,
            version,
        ))
    };
    write_frame_async(&mut s, &HelloReply { version, result })
        .await
        .unwrap();
    while let Ok(Some(p)) = read_frame_async(&mut s).await {
        let req = decode_request(&p).unwrap();
        let result = match req.call {
            Request::Health => Ok(Response::Health(HealthInfo {
                uptime_ms: 1,
                running_processes: 0,
            })),
            _ => Err(AgentError::new(ErrorKind::Unsupported, "fake")),
        };
        write_frame_async(&mut s, &ResponseFrame { id: req.id, result })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn hybrid_vsock_handshake_waits_for_the_guest_listener() {
    let dir = tmp("hybrid");
    let uds = dir.0.join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    let vmm = tokio::spawn(async move {
        // The first two connections: nothing listens in the guest yet, the VMM hangs up.
        for _ in 0..2 {
            let (mut s, _) = listener.accept().await.unwrap();
            assert_eq!(read_line(&mut s).await, "CONNECT 1024");
        }
        let (mut s, _) = listener.accept().await.unwrap();
        assert_eq!(read_line(&mut s).await, "CONNECT 1024");
        s.write_all(b"OK 1073741824\n").await.unwrap();
        fake_agent(s, PROTOCOL_VERSION).await;
    });
    let c = AgentClient::connect_retry(Endpoint::vm(&uds), Duration::from_secs(20))
        .await
        .unwrap();
    c.health().await.unwrap();
    drop(c);
    vmm.await.unwrap();
}

#[tokio::test]
async fn bad_handshake_answers_are_errors_not_retries() {
    let dir = tmp("badok");
    let uds = dir.0.join("v.sock");
    let listener = UnixListener::bind(&uds).unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        read_line(&mut s).await;
        s.write_all(b"NOPE\n").await.unwrap();
        let (mut s, _) = listener.accept().await.unwrap();
        read_line(&mut s).await;
        // A hostile endless line.
        let _ = s.write_all(&[b'A'; 4096]).await;
    });
    let e = AgentClient::connect_retry(Endpoint::vm(&uds), Duration::from_secs(20))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(
            e,
            Error::Handshake {
                not_listening: false,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("NOPE"), "{e}");
    let e = AgentClient::connect(Endpoint::vm(&uds), Duration::from_secs(20))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("longer than"), "{e}");
}

#[tokio::test]
async fn version_mismatch_is_reported_and_not_retried() {
    let dir = tmp("version");
    let sock = dir.0.join("a.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        fake_agent(s, PROTOCOL_VERSION + 1).await;
    });
    let e = AgentClient::connect_retry(Endpoint::unix(&sock), Duration::from_secs(20))
        .await
        .err()
        .unwrap();
    assert_eq!(e.agent_kind(), Some(ErrorKind::VersionMismatch), "{e}");
    assert!(e.to_string().contains("version"), "{e}");
}

#[tokio::test]
async fn a_silent_agent_times_out() {
    let dir = tmp("silent");
    let sock = dir.0.join("a.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let keep = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(s);
    });
    let e = AgentClient::connect(Endpoint::unix(&sock), Duration::from_millis(200))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    keep.abort();
}

// ---- A hostile agent: whatever the guest sends, the client stays bounded and answers with
// ---- typed errors.

/// Waits for `fut`, failing the test if it does not finish within a generous deadline (a hang
/// is the bug these tests look for).
async fn finishes<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), fut)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

/// A fake agent on a Unix socket: answers every connection's hello, then hands the connection
/// to `handler`. Returns the connected client (and the directory to keep alive).
pub(crate) async fn hostile_agent<F, Fut>(tag: &str, handler: F) -> (Dir, AgentClient)
where
    F: Fn(ConnectionKind, UnixStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let dir = tmp(tag);
    let sock = dir.0.join("a.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    let handler = std::sync::Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let hello = read_frame_async(&mut s).await.unwrap().unwrap();
                let h = decode_hello(&hello).unwrap();
                let ok = HelloReply {
                    version: PROTOCOL_VERSION,
                    result: Ok(()),
                };
                write_frame_async(&mut s, &ok).await.unwrap();
                handler(h.connection, s).await;
            });
        }
    });
    let c = AgentClient::connect(Endpoint::unix(&sock), Duration::from_secs(20))
        .await
        .unwrap();
    (dir, c)
}

/// The next request on a control connection (`None` once the client is gone).
pub(crate) async fn next_request(s: &mut UnixStream) -> Option<hull_agent_protocol::RequestFrame> {
    let p = read_frame_async(s).await.ok()??;
    Some(decode_request(&p).unwrap())
}

pub(crate) async fn reply(s: &mut UnixStream, id: u64, result: Result<Response, AgentError>) {
    write_frame_async(s, &ResponseFrame { id, result })
        .await
        .unwrap();
}

/// A health reply that says which request it answers.
fn health(uptime_ms: u64) -> Result<Response, AgentError> {
    Ok(Response::Health(HealthInfo {
        uptime_ms,
        running_processes: 0,
    }))
}

/// One raw frame: the payload behind its length header.
fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

async fn uptime(c: &AgentClient) -> u64 {
    c.health().await.unwrap().uptime_ms
}

#[tokio::test]
async fn replies_to_unknown_ids_are_dropped() {
    let (_dir, c) = hostile_agent("unknown-id", |_, mut s| async move {
        while let Some(req) = next_request(&mut s).await {
            for bogus in [req.id + 1000, u64::MAX, req.id.wrapping_sub(1)] {
                reply(&mut s, bogus, health(666)).await;
            }
            reply(&mut s, req.id, health(req.id)).await;
        }
    })
    .await;
    assert_eq!(uptime(&c).await, 1);
    assert_eq!(uptime(&c).await, 2);
    assert_eq!(c.calls_waiting(), 0);
}

#[tokio::test]
async fn duplicate_replies_reach_only_their_own_call() {
    let (_dir, c) = hostile_agent("dup-id", |_, mut s| async move {
        while let Some(req) = next_request(&mut s).await {
            reply(&mut s, req.id, health(req.id)).await;
            reply(&mut s, req.id, health(9999)).await;
            reply(&mut s, req.id, Err(AgentError::new(ErrorKind::Io, "dup"))).await;
        }
    })
    .await;
    for id in 1..=3 {
        assert_eq!(uptime(&c).await, id);
    }
    // Concurrent calls each get the reply with their own id.
    let (a, b) = tokio::join!(uptime(&c), uptime(&c));
    assert_eq!((a.min(b), a.max(b)), (4, 5));
    assert_eq!(c.calls_waiting(), 0);
}

#[tokio::test]
async fn the_wrong_reply_type_is_a_protocol_error() {
    let (_dir, c) = hostile_agent("wrong-type", |_, mut s| async move {
        while let Some(req) = next_request(&mut s).await {
            let r = match req.call {
                Request::Wait { .. } => health(1),
                _ => Ok(Response::Done),
            };
            reply(&mut s, req.id, r).await;
        }
    })
    .await;
    let e = c.health().await.unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    assert!(e.to_string().contains("unexpected reply to health"), "{e}");
    let e = c.wait(hull_agent_protocol::ProcessId(1)).await.unwrap_err();
    assert!(e.to_string().contains("unexpected reply to wait"), "{e}");
    let e = c
        .spawn(hull_agent_protocol::SpawnRequest::new(["/bin/true"]))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    // The connection is still fine for calls whose reply type matches.
    c.release(hull_agent_protocol::ProcessId(1)).await.unwrap();
}

#[tokio::test]
async fn undecodable_frames_fail_their_call_or_are_skipped() {
    let (_dir, c) = hostile_agent("undecodable", |_, mut s| async move {
        while let Some(req) = next_request(&mut s).await {
            // No readable id: skipped.
            s.write_all(&raw_frame(b"\xff\x00 not json")).await.unwrap();
            s.write_all(&raw_frame(b"[1, 2, 3]")).await.unwrap();
            s.write_all(&raw_frame(b"{\"id\": \"one\"}")).await.unwrap();
            if req.id == 1 {
                // A readable id with a result this client cannot decode: that call fails.
                let bad = format!(
                    "{{\"id\": {}, \"result\": {{\"Ok\": {{\"type\": \"teleport\"}}}}}}",
                    req.id
                );
                s.write_all(&raw_frame(bad.as_bytes())).await.unwrap();
            } else {
                reply(&mut s, req.id, health(req.id)).await;
            }
        }
    })
    .await;
    let e = c.health().await.unwrap_err();
    // The client's own decoding failed: not an error the agent reported.
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    assert_eq!(e.agent_kind(), None);
    assert!(e.to_string().contains("undecodable reply"), "{e}");
    assert_eq!(uptime(&c).await, 2);
    assert_eq!(c.calls_waiting(), 0);
}

#[tokio::test]
async fn an_oversized_frame_fails_the_calls_and_closes_the_connection() {
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
    let closed_tx = std::sync::Mutex::new(Some(closed_tx));
    let (_dir, c) = hostile_agent("oversized", move |_, mut s| {
        let closed_tx = closed_tx.lock().unwrap().take();
        async move {
            next_request(&mut s).await.unwrap();
            // A header announcing 4 GiB (the maximum is 1 MiB), and nothing after it: the client
            // must refuse it from the header alone, without allocating or waiting for it.
            s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
            // The client shuts the connection down: the agent sees the end.
            while next_request(&mut s).await.is_some() {}
            let _ = closed_tx.unwrap().send(());
        }
    })
    .await;
    let e = finishes("a call answered by an oversized frame", c.health())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    assert!(
        e.to_string().contains("exceeds the maximum frame size"),
        "{e}"
    );
    finishes("the agent seeing the connection close", closed_rx)
        .await
        .unwrap();
    // Later calls fail at once, even those without a time limit.
    let e = finishes("a call after the connection broke", c.health())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Closed), "{e}");
    let e = finishes(
        "a wait after the connection broke",
        c.wait(hull_agent_protocol::ProcessId(1)),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Closed), "{e}");
    assert_eq!(c.calls_waiting(), 0);
}

#[tokio::test]
async fn a_frame_just_over_the_maximum_is_refused() {
    let (_dir, c) = hostile_agent("just-over", |_, mut s| async move {
        let req = next_request(&mut s).await.unwrap();
        let mut big = serde_json::to_vec(&ResponseFrame {
            id: req.id,
            result: health(1),
        })
        .unwrap();
        big.resize(hull_agent_protocol::MAX_FRAME_SIZE + 1, b' ');
        let _ = s.write_all(&raw_frame(&big)).await;
        while next_request(&mut s).await.is_some() {}
    })
    .await;
    let e = finishes("a call answered by a too large frame", c.health())
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("exceeds the maximum frame size"),
        "{e}"
    );
}

#[tokio::test]
async fn a_flood_of_id_0_errors_does_not_disturb_calls() {
    let (_dir, c) = hostile_agent("flood", |_, mut s| async move {
        while let Some(req) = next_request(&mut s).await {
            let noise = hull_agent_protocol::encode_frame(&ResponseFrame {
                id: 0,
                result: Err(AgentError::new(ErrorKind::BadFrame, "x".repeat(100))),
            })
            .unwrap();
            let mut burst = Vec::with_capacity(noise.len() * 1000);
            for _ in 0..1000 {
                burst.extend_from_slice(&noise);
            }
            for _ in 0..50 {
                s.write_all(&burst).await.unwrap();
            }
            // id 0 with a success is just as much noise.
            reply(&mut s, 0, health(0)).await;
            reply(&mut s, req.id, health(req.id)).await;
        }
    })
    .await;
    assert_eq!(
        finishes("a call behind 50000 noise frames", uptime(&c)).await,
        1
    );
    assert_eq!(finishes("the next call", uptime(&c)).await, 2);
    assert_eq!(c.calls_waiting(), 0);
}

#[tokio::test]
async fn a_reply_that_never_comes_times_out() {
    let (_dir, mut c) = hostile_agent("never", |_, mut s| async move {
        let mut ignored = Vec::new();
        while let Some(req) = next_request(&mut s).await {
            match req.call {
                Request::Health | Request::Wait { .. } => ignored.push(req.id),
                _ => {
                    // The late replies come before this one's: nobody waits for them.
                    for id in ignored.drain(..) {
                        reply(&mut s, id, health(id)).await;
                    }
                    reply(&mut s, req.id, Ok(Response::Done)).await;
                }
            }
        }
    })
    .await;
    let limit = Duration::from_millis(300);
    c.set_call_timeout(limit);
    let e = finishes("a call with a time limit", c.health())
        .await
        .unwrap_err();
    match &e {
        Error::Timeout { what, after } => {
            assert_eq!(what, "health call");
            assert_eq!(*after, limit);
        }
        _ => panic!("expected a timeout, got {e}"),
    }
    assert!(e.to_string().contains("health call timed out"), "{e}");
    assert_eq!(
        c.calls_waiting(),
        0,
        "a timed out call must leave nothing behind"
    );
    // Other calls are unaffected, also by the late reply.
    c.release(hull_agent_protocol::ProcessId(1)).await.unwrap();
    // A caller that gives up on a call (drops it) leaves nothing behind either.
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        c.wait(hull_agent_protocol::ProcessId(1)),
    )
    .await;
    assert!(dropped.is_err());
    assert_eq!(c.calls_waiting(), 0);
}

/// The control side of a fake process for `run`: spawn, then `wait` answers only once the
/// process was killed (as a process blocked on a full pipe would).
async fn fake_process_control(s: UnixStream, killed: std::sync::Arc<tokio::sync::Notify>) {
    let (mut rd, wr) = s.into_split();
    let wr = std::sync::Arc::new(tokio::sync::Mutex::new(wr));
    loop {
        let Ok(Some(p)) = read_frame_async(&mut rd).await else {
            return;
        };
        let req = decode_request(&p).unwrap();
        let (wr, killed) = (wr.clone(), killed.clone());
        tokio::spawn(async move {
            let result = match req.call {
                Request::Spawn(_) => Ok(Response::Spawned {
                    process: hull_agent_protocol::ProcessId(7),
                    pid: 42,
                }),
                Request::Signal { signal, group, .. } => {
                    assert_eq!((signal, group), (9, true));
                    killed.notify_one();
                    Ok(Response::Done)
                }
                Request::Wait { .. } => {
                    killed.notified().await;
                    killed.notify_one();
                    Ok(Response::Exited(
                        hull_agent_protocol::ExitStatus::Signaled {
                            signal: 9,
                            core_dumped: false,
                        },
                    ))
                }
                _ => Ok(Response::Done),
            };
            let frame = hull_agent_protocol::encode_frame(&ResponseFrame { id: req.id, result });
            let _ = wr.lock().await.write_all(&frame.unwrap()).await;
        });
    }
}

#[tokio::test]
async fn more_output_than_the_cap_kills_the_process_and_fails() {
    let killed = std::sync::Arc::new(tokio::sync::Notify::new());
    let k = killed.clone();
    let (_dir, mut c) = hostile_agent("cap", move |kind, mut s| {
        let killed = k.clone();
        async move {
            match kind {
                ConnectionKind::Control => fake_process_control(s, killed).await,
                ConnectionKind::Stream {
                    stream: hull_agent_protocol::StdStream::Stdout,
                    ..
                } => {
                    // `yes`: writes until the host stops reading.
                    let chunk = vec![b'y'; 64 << 10];
                    while s.write_all(&chunk).await.is_ok() {}
                }
                _ => {} // stderr: end of file at once
            }
        }
    })
    .await;
    c.set_max_run_output(256 << 10);
    let e = finishes(
        "run of a process with endless output",
        c.run(hull_agent_protocol::SpawnRequest::new(["yes"]), None),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Io(_)), "{e}");
    assert!(e.to_string().contains("more than 262144 bytes"), "{e}");
    // The kill came from the client (the fake's wait answers only after it).
    finishes("the kill", killed.notified()).await;
}

#[tokio::test]
async fn output_up_to_the_cap_is_collected() {
    let (_dir, mut c) = hostile_agent("cap-ok", |kind, mut s| async move {
        match kind {
            ConnectionKind::Control => {
                while let Some(req) = next_request(&mut s).await {
                    let result = match req.call {
                        Request::Spawn(_) => Ok(Response::Spawned {
                            process: hull_agent_protocol::ProcessId(7),
                            pid: 42,
                        }),
                        Request::Wait { .. } => {
                            Ok(Response::Exited(hull_agent_protocol::ExitStatus::Exited {
                                code: 3,
                            }))
                        }
                        _ => Err(AgentError::new(ErrorKind::Unsupported, "fake")),
                    };
                    reply(&mut s, req.id, result).await;
                }
            }
            ConnectionKind::Stream {
                stream: hull_agent_protocol::StdStream::Stdout,
                ..
            } => s.write_all(&vec![b'o'; 256 << 10]).await.unwrap(),
            _ => s.write_all(b"err").await.unwrap(),
        }
    })
    .await;
    c.set_max_run_output(256 << 10);
    let out = finishes(
        "run",
        c.run(hull_agent_protocol::SpawnRequest::new(["x"]), None),
    )
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout.len(), 256 << 10);
    assert_eq!(out.stderr, b"err");
}

// ---- Container calls against a fake agent.

/// A fake agent for container calls: `c1` exists (created), `c2` is stopped, anything else is
/// unknown; `bad` gets replies of the wrong type, `other` a state reply about another container.
async fn container_agent(tag: &str) -> (Dir, AgentClient) {
    use hull_agent_protocol::{ContainerInfo, ContainerStatus, ProcessId};
    hostile_agent(tag, |_, mut s| async move {
        while let Some(req) = next_request(&mut s).await {
            let id = match &req.call {
                Request::CreateContainer(c) => c.id.clone(),
                Request::Exec(e) => e.id.clone(),
                Request::StartContainer { id }
                | Request::KillContainer { id, .. }
                | Request::ContainerState { id }
                | Request::ContainerPids { id }
                | Request::PauseContainer { id }
                | Request::ResumeContainer { id }
                | Request::UpdateContainer { id, .. }
                | Request::ContainerStats { id }
                | Request::DeleteContainer { id, .. } => id.clone(),
                _ => String::new(),
            };
            let info = |id: &str| ContainerInfo {
                id: id.into(),
                status: ContainerStatus::Created,
                process: ProcessId(5),
                pid: 1,
                exit: None,
                oom_killed: false,
            };
            let result = match (id.as_str(), &req.call) {
                ("bad", Request::CreateContainer(_) | Request::Exec(_)) => Ok(Response::Done),
                ("bad", _) => health(1),
                ("other", Request::ContainerState { .. }) => Ok(Response::Container(info("c1"))),
                ("c1", Request::CreateContainer(_)) => Err(AgentError::new(
                    ErrorKind::ContainerExists,
                    "container c1 already exists",
                )),
                ("new", Request::CreateContainer(c)) => {
                    assert_eq!(c.bundle, "/run/hull/shared/containers/new");
                    Ok(Response::Spawned {
                        process: ProcessId(5),
                        pid: 1,
                    })
                }
                ("c1", Request::ContainerState { .. }) => Ok(Response::Container(info("c1"))),
                ("c1", Request::ContainerPids { .. }) => Ok(Response::Pids { pids: vec![1, 7] }),
                ("c1", Request::ContainerStats { .. }) => Ok(Response::ContainerStats(
                    hull_agent_protocol::ContainerStats::default(),
                )),
                ("c1", _) => Ok(Response::Done),
                ("c2", _) => Err(AgentError::new(
                    ErrorKind::WrongState,
                    "container c2 is stopped",
                )),
                _ => Err(AgentError::new(
                    ErrorKind::UnknownContainer,
                    format!("no container {id}"),
                )),
            };
            reply(&mut s, req.id, result).await;
        }
    })
    .await
}

#[tokio::test]
async fn container_calls_check_their_reply_type() {
    let (_dir, c) = container_agent("ctr-wrong-type").await;
    let stdio = hull_agent_protocol::StdioSpec::default();
    let e = c.create_container("bad", "/b", stdio).await.unwrap_err();
    assert!(matches!(e, Error::Protocol(_)), "{e}");
    assert!(
        e.to_string()
            .contains("unexpected reply to create_container"),
        "{e}"
    );
    let e = c
        .exec("bad", serde_json::json!({"args": ["x"]}), stdio)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("unexpected reply to exec"), "{e}");
    for (what, e) in [
        ("container_state", c.container_state("bad").await.err()),
        ("container_pids", c.container_pids("bad").await.err()),
        ("container_stats", c.container_stats("bad").await.err()),
        ("start_container", c.start_container("bad").await.err()),
        (
            "delete_container",
            c.delete_container("bad", true).await.err(),
        ),
        (
            "kill_container",
            c.kill_container("bad", 9, false).await.err(),
        ),
    ] {
        let e = e.unwrap_or_else(|| panic!("{what} accepted a health reply"));
        assert!(matches!(e, Error::Protocol(_)), "{what}: {e}");
        assert!(
            e.to_string()
                .contains(&format!("unexpected reply to {what}")),
            "{e}"
        );
    }
    // A state reply about another container than the one asked for is refused too.
    let e = c.container_state("other").await.unwrap_err();
    assert!(
        e.to_string()
            .contains("unexpected reply to container_state"),
        "{e}"
    );
    // The connection is still fine.
    assert_eq!(c.container_pids("c1").await.unwrap(), vec![1, 7]);
    assert_eq!(c.container_state("c1").await.unwrap().pid, 1);
    c.container_stats("c1").await.unwrap();
    let p = c
        .create_container("new", "/run/hull/shared/containers/new", stdio)
        .await
        .unwrap();
    assert_eq!((p.process.0, p.pid), (5, 1));
}

#[tokio::test]
async fn container_error_kinds_pass_through() {
    let (_dir, c) = container_agent("ctr-kinds").await;
    let stdio = hull_agent_protocol::StdioSpec::default();
    let e = c.create_container("c1", "/b", stdio).await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::ContainerExists), "{e}");
    let e = c.start_container("c2").await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::WrongState), "{e}");
    assert!(e.to_string().contains("container c2 is stopped"), "{e}");
    let e = c.pause_container("nope").await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::UnknownContainer), "{e}");
    c.resume_container("c1").await.unwrap();
    c.update_container("c1", serde_json::json!({"pids": {"limit": 10}}))
        .await
        .unwrap();
    c.kill_container("c1", 15, true).await.unwrap();
    c.delete_container("c1", false).await.unwrap();
    // A bad id fails here, with the agent's wording, without a round trip.
    let e = c.start_container("../x").await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::InvalidArgument), "{e}");
    assert!(e.to_string().contains("invalid container id"), "{e}");
}

#[tokio::test]
async fn a_guest_that_stops_reading_cannot_hold_calls() {
    // The agent answers the hello, then never reads again: the client's writes fill the socket
    // buffer.
    let (_dir, mut c) = hostile_agent("deaf", |_, s| async move {
        let _keep = s;
        std::future::pending::<()>().await;
    })
    .await;
    let limit = Duration::from_millis(300);
    c.set_call_timeout(limit);
    let big = "x".repeat(512 << 10);
    let mut failures = Vec::new();
    // Each request is half a frame's worth: a few fill any socket buffer.
    for _ in 0..16 {
        let mut r = hull_agent_protocol::SpawnRequest::new(["/bin/true"]);
        r.env = vec![format!("BIG={big}")];
        match finishes("a call to a guest that does not read", c.spawn(r)).await {
            Ok(_) => panic!("the deaf agent answered"),
            Err(e) => failures.push(e),
        }
        if matches!(failures.last(), Some(Error::Closed)) {
            break;
        }
    }
    assert!(
        failures
            .iter()
            .any(|e| matches!(e, Error::Timeout { what, .. } if what.contains("does not read"))),
        "{failures:?}"
    );
    // From then on every call fails at once, `wait` (no reply limit) too.
    let e = finishes("a call after the send timed out", c.health())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Closed), "{e}");
    let e = finishes(
        "a wait after the send timed out",
        c.wait(hull_agent_protocol::ProcessId(1)),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, Error::Closed), "{e}");
    assert_eq!(c.calls_waiting(), 0);
}

#[tokio::test]
async fn a_port_list_is_checked() {
    // The fake guest answers the n-th listening_ports call with the n-th list.
    let lists: Vec<Vec<u16>> = vec![
        (1..=(hull_agent_protocol::MAX_LISTENING_PORTS as u16 + 1)).collect(),
        vec![80, 80],
        vec![0, 80],
        vec![443, 80],
    ];
    let (_dir, c) = hostile_agent("ports", move |_, mut s| {
        let lists = lists.clone();
        async move {
            let mut n = 0;
            while let Some(req) = next_request(&mut s).await {
                let ports = lists.get(n).cloned().unwrap_or_default();
                n += 1;
                reply(&mut s, req.id, Ok(Response::Ports { ports })).await;
            }
        }
    })
    .await;
    for what in ["too many", "repeated", "port 0"] {
        let e = finishes(what, c.listening_ports(&[], Duration::ZERO))
            .await
            .unwrap_err();
        assert!(
            matches!(e, Error::Protocol(_)) && e.to_string().contains("listening_ports"),
            "{what}: {e}"
        );
    }
    assert_eq!(
        c.listening_ports(&[], Duration::ZERO).await.unwrap(),
        vec![80, 443]
    );
}
