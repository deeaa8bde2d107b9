//! Hostile and broken frames on raw sockets: each gets a clear error, and the agent keeps
//! serving (the same connection where the frame boundary is intact, other connections always).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::TestAgent;
use hull_agent_protocol::frame::{read_frame, write_frame};
use hull_agent_protocol::*;

fn raw(agent: &TestAgent) -> UnixStream {
    let mut last = None;
    for _ in 0..500 {
        match UnixStream::connect(&agent.sock) {
            Ok(s) => {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                return s;
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("agent socket: {last:?}");
}

fn hello_reply(s: &mut UnixStream) -> HelloReply {
    let p = read_frame(s).unwrap().expect("a hello reply");
    decode_hello_reply(&p).unwrap()
}

fn control(agent: &TestAgent) -> UnixStream {
    let mut s = raw(agent);
    write_frame(&mut s, &Hello::new(ConnectionKind::Control)).unwrap();
    assert_eq!(hello_reply(&mut s).result, Ok(()));
    s
}

fn response(s: &mut UnixStream) -> ResponseFrame {
    let p = read_frame(s).unwrap().expect("a response");
    decode_response(&p).unwrap()
}

fn send_raw(s: &mut UnixStream, payload: &[u8]) {
    s.write_all(&(payload.len() as u32).to_be_bytes()).unwrap();
    s.write_all(payload).unwrap();
}

/// Sends one request frame.
fn request(s: &mut UnixStream, id: u64, call: Request) {
    write_frame(s, &RequestFrame { id, call }).unwrap();
}

/// Sends a frame header announcing `len` bytes and only `partial` of them and goes away; the
/// agent still serves new connections.
fn leave_mid_frame(agent: &TestAgent, mut s: UnixStream, len: u32, partial: &[u8]) {
    s.write_all(&len.to_be_bytes()).unwrap();
    s.write_all(partial).unwrap();
    drop(s);
    health(&mut control(agent), 1);
}

fn health(s: &mut UnixStream, id: u64) {
    request(s, id, Request::Health);
    let r = response(s);
    assert_eq!(r.id, id);
    assert!(matches!(r.result, Ok(Response::Health(_))), "{r:?}");
}

fn assert_closed(s: &mut UnixStream) {
    let mut b = [0u8; 16];
    assert_eq!(
        s.read(&mut b).unwrap(),
        0,
        "the agent closed the connection"
    );
}

#[test]
fn bad_hellos() {
    let agent = TestAgent::start();

    // Another protocol version: a clear mismatch naming both, then close.
    let mut s = raw(&agent);
    send_raw(&mut s, br#"{"version":99,"connection":{"kind":"control"}}"#);
    let r = hello_reply(&mut s);
    assert_eq!(r.version, PROTOCOL_VERSION);
    let e = r.result.unwrap_err();
    assert_eq!(e.kind, ErrorKind::VersionMismatch);
    assert!(
        e.message.contains("host speaks version 99"),
        "{}",
        e.message
    );
    assert!(e
        .message
        .contains(&format!("agent speaks version {PROTOCOL_VERSION}")));
    assert_closed(&mut s);

    // A request where the hello belongs.
    let mut s = raw(&agent);
    request(&mut s, 1, Request::Health);
    let e = hello_reply(&mut s).result.unwrap_err();
    assert_eq!(e.kind, ErrorKind::OutOfOrder);
    assert_closed(&mut s);

    // Garbage, an unknown connection kind, an empty and an oversized hello.
    for payload in [
        &b"\x00\x01garbage"[..],
        br#"{"version":2,"connection":{"kind":"x"}}"#, // the current PROTOCOL_VERSION
    ] {
        let mut s = raw(&agent);
        send_raw(&mut s, payload);
        assert_eq!(
            hello_reply(&mut s).result.unwrap_err().kind,
            ErrorKind::BadFrame
        );
    }
    let mut s = raw(&agent);
    s.write_all(&0u32.to_be_bytes()).unwrap();
    assert_eq!(
        hello_reply(&mut s).result.unwrap_err().kind,
        ErrorKind::BadFrame
    );
    let mut s = raw(&agent);
    s.write_all(&u32::MAX.to_be_bytes()).unwrap();
    let e = hello_reply(&mut s).result.unwrap_err();
    assert!(e.message.contains("exceeds the maximum"), "{}", e.message);

    // Truncated hello, then the peer goes away; the agent still serves.
    leave_mid_frame(&agent, raw(&agent), 100, b"{\"ver");
}

#[test]
fn bad_requests_on_a_control_connection() {
    let agent = TestAgent::start();
    let mut s = control(&agent);

    // Unknown request type: error with its id; the connection goes on.
    send_raw(
        &mut s,
        br#"{"id":7,"call":{"type":"checkpoint_container","spec":{}}}"#,
    );
    let r = response(&mut s);
    assert_eq!(r.id, 7);
    let e = r.result.unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnknownRequest);
    assert!(e.message.contains("checkpoint_container"));
    health(&mut s, 8);

    // Bad JSON, no id, id 0: error with id 0.
    for payload in [
        &b"{not json"[..],
        br#"{"call":{"type":"health"}}"#,
        br#"{"id":0,"call":{"type":"health"}}"#,
    ] {
        send_raw(&mut s, payload);
        let r = response(&mut s);
        assert_eq!(r.id, 0);
        assert_eq!(r.result.unwrap_err().kind, ErrorKind::BadFrame);
    }
    health(&mut s, 9);

    // Bad fields of a known call.
    send_raw(
        &mut s,
        br#"{"id":10,"call":{"type":"wait","process":"seven"}}"#,
    );
    let r = response(&mut s);
    assert_eq!(r.id, 10);
    assert_eq!(r.result.unwrap_err().kind, ErrorKind::InvalidArgument);

    // An empty frame: the boundary is intact, so the connection goes on.
    s.write_all(&0u32.to_be_bytes()).unwrap();
    let r = response(&mut s);
    assert_eq!(r.id, 0);
    assert_eq!(r.result.unwrap_err().kind, ErrorKind::BadFrame);
    health(&mut s, 11);

    // A second hello is out of order.
    write_frame(&mut s, &Hello::new(ConnectionKind::Control)).unwrap();
    let r = response(&mut s);
    assert_eq!(r.result.unwrap_err().kind, ErrorKind::OutOfOrder);
    health(&mut s, 12);

    // A duplicate id while the first is in flight.
    request(
        &mut s,
        20,
        Request::Spawn(SpawnRequest::new(["sleep", "1000"])),
    );
    let Ok(Response::Spawned { process, .. }) = response(&mut s).result else {
        panic!("spawn")
    };
    request(&mut s, 21, Request::Wait { process });
    request(&mut s, 21, Request::Health);
    let r = response(&mut s);
    assert_eq!(r.id, 21);
    let e = r.result.unwrap_err();
    assert_eq!(e.kind, ErrorKind::BadFrame);
    assert!(e.message.contains("already in flight"));
    request(
        &mut s,
        22,
        Request::Signal {
            process,
            signal: 9,
            group: false,
        },
    );
    // Replies in completion order: the signal's, then the wait's.
    let mut got = [response(&mut s), response(&mut s)];
    got.sort_by_key(|r| r.id);
    assert_eq!(got[0].id, 21);
    assert!(matches!(got[0].result, Ok(Response::Exited(_))));
    assert_eq!(got[1].id, 22);

    // An oversized length: error, then this connection (only) is closed.
    s.write_all(&(MAX_FRAME_SIZE as u32 + 1).to_be_bytes())
        .unwrap();
    let r = response(&mut s);
    assert_eq!(r.id, 0);
    assert!(r
        .result
        .unwrap_err()
        .message
        .contains("exceeds the maximum frame size"));
    assert_closed(&mut s);

    // A truncated frame, then the peer leaves.
    leave_mid_frame(&agent, control(&agent), 50, b"{\"id\":1");
}

#[test]
fn bad_stream_connections() {
    let agent = TestAgent::start();
    // A stream connection for a process that does not exist.
    let mut s = raw(&agent);
    write_frame(
        &mut s,
        &Hello::new(ConnectionKind::Stream {
            process: ProcessId(12345),
            stream: StdStream::Stdout,
        }),
    )
    .unwrap();
    let e = hello_reply(&mut s).result.unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnknownProcess);
    health(&mut control(&agent), 1);
}
