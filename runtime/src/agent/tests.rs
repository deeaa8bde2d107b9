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

struct Dir(PathBuf);
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
