//! The frame codec and message decoding against good and bad input.

use std::io::Cursor;

use hull_agent_protocol::frame::{read_frame, read_frame_async, write_frame, HEADER_LEN};
use hull_agent_protocol::*;

fn all_requests() -> Vec<Request> {
    let p = ProcessId(7);
    vec![
        Request::Version,
        Request::Health,
        Request::Spawn(SpawnRequest {
            argv: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/tmp".into(),
            user: Some(User {
                uid: 1000,
                gid: 1000,
                groups: vec![1000, 27],
            }),
            stdio: StdioSpec::Terminal { rows: 24, cols: 80 },
            root: Some("/run/rootfs".into()),
        }),
        Request::Mount(MountRequest {
            options: vec![MountOption::Nosuid, MountOption::Noexec],
            data: vec!["size=1m".into()],
            ..MountRequest::tmpfs("/run/t")
        }),
        Request::Unmount {
            target: "/run/rootfs".into(),
            lazy: true,
        },
        Request::Signal {
            process: p,
            signal: 15,
            group: true,
        },
        Request::Wait { process: p },
        Request::CloseStdin {
            process: p,
            after_bytes: Some(12),
        },
        Request::ResizeTerminal {
            process: p,
            rows: 40,
            cols: 100,
        },
        Request::Release { process: p },
        Request::ListProcesses,
        Request::Stats,
        Request::SetTime {
            seconds: 1_700_000_000,
            nanos: 5,
        },
        Request::SetIdentity {
            hostname: "pod-1".into(),
            seconds: 1_700_000_000,
            nanos: 7,
            entropy: vec![0xa5; 64],
        },
        Request::Shutdown {
            grace_ms: Some(100),
        },
        Request::CreateContainer(CreateContainerRequest {
            id: "c1".into(),
            bundle: "/run/hull/shared/containers/c1".into(),
            stdio: StdioSpec::Terminal { rows: 24, cols: 80 },
        }),
        Request::StartContainer { id: "c1".into() },
        Request::Exec(ExecRequest {
            id: "c1".into(),
            process: serde_json::json!({"args": ["sh"], "cwd": "/", "terminal": false}),
            stdio: StdioSpec::default(),
        }),
        Request::KillContainer {
            id: "c1".into(),
            signal: 9,
            all: true,
        },
        Request::ContainerState { id: "c1".into() },
        Request::ContainerPids { id: "c1".into() },
        Request::PauseContainer { id: "c1".into() },
        Request::ResumeContainer { id: "c1".into() },
        Request::UpdateContainer {
            id: "c1".into(),
            resources: serde_json::json!({"pids": {"limit": 10}}),
        },
        Request::ContainerStats { id: "c1".into() },
        Request::DeleteContainer {
            id: "c1".into(),
            force: true,
        },
        Request::ConfigureNetwork(hull_agent_protocol::NetworkConfig {
            interfaces: vec![hull_agent_protocol::NetInterface {
                name: "eth0".into(),
                mac: "02:42:ac:11:00:02".into(),
                device_mac: Some("02:68:75:00:00:01".into()),
                mtu: 1500,
                addresses: vec![hull_agent_protocol::IpNet {
                    addr: "172.17.0.2".parse().unwrap(),
                    prefix_len: 16,
                }],
            }],
            routes: vec![hull_agent_protocol::NetRoute {
                destination: None,
                gateway: Some("172.17.0.1".parse().unwrap()),
                device: "eth0".into(),
                source: None,
                metric: Some(100),
                scope_link: false,
            }],
        }),
        Request::ListeningPorts {
            known: vec![80, 8080],
            wait_ms: 30_000,
        },
    ]
}

fn frame_with_len(len: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = len.to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

#[test]
fn every_request_round_trips_and_has_a_known_type_name() {
    let reqs = all_requests();
    assert_eq!(
        reqs.len(),
        Request::TYPES.len(),
        "test covers every request type"
    );
    for (i, call) in reqs.into_iter().enumerate() {
        let id = i as u64 + 1;
        let frame = encode_frame(&RequestFrame {
            id,
            call: call.clone(),
        })
        .unwrap();
        let mut dec = FrameDecoder::new();
        dec.push(&frame);
        let payload = dec.next_frame().unwrap().expect("a whole frame");
        let json: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(json["call"]["type"], call.type_name());
        assert!(Request::TYPES.contains(&call.type_name()));
        let back = decode_request(&payload).unwrap();
        assert_eq!(back, RequestFrame { id, call });
        assert!(dec.next_frame().unwrap().is_none());
        dec.finish().unwrap();
    }
}

#[test]
fn decoder_reassembles_frames_fed_byte_by_byte_and_splits_batches() {
    let a = encode_frame(&RequestFrame {
        id: 1,
        call: Request::Health,
    })
    .unwrap();
    let b = encode_frame(&RequestFrame {
        id: 2,
        call: Request::Stats,
    })
    .unwrap();
    let mut dec = FrameDecoder::new();
    let mut got = Vec::new();
    for byte in a.iter().chain(b.iter()) {
        dec.push(&[*byte]);
        while let Some(p) = dec.next_frame().unwrap() {
            got.push(decode_request(&p).unwrap().id);
        }
    }
    assert_eq!(got, vec![1, 2]);

    let mut dec = FrameDecoder::new();
    dec.push(&[a.clone(), b.clone()].concat());
    assert_eq!(
        decode_request(&dec.next_frame().unwrap().unwrap())
            .unwrap()
            .id,
        1
    );
    assert_eq!(
        decode_request(&dec.next_frame().unwrap().unwrap())
            .unwrap()
            .id,
        2
    );
    assert!(dec.next_frame().unwrap().is_none());
}

#[test]
fn oversized_length_is_refused_from_the_header_alone() {
    let mut dec = FrameDecoder::new();
    dec.push(&(MAX_FRAME_SIZE as u32 + 1).to_be_bytes());
    match dec.next_frame() {
        Err(FrameError::TooLarge { len, max }) => {
            assert_eq!(len, MAX_FRAME_SIZE + 1);
            assert_eq!(max, MAX_FRAME_SIZE);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // A blocking reader refuses it without allocating or reading the payload.
    let mut r = Cursor::new(u32::MAX.to_be_bytes().to_vec());
    let err = read_frame(&mut r).unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err:?}");
    assert!(err.to_string().contains("exceeds the maximum frame size"));
    // Exactly the maximum is fine.
    let payload = vec![b' '; MAX_FRAME_SIZE];
    let mut r = Cursor::new(frame_with_len(MAX_FRAME_SIZE as u32, &payload));
    assert_eq!(read_frame(&mut r).unwrap().unwrap().len(), MAX_FRAME_SIZE);
}

#[test]
fn encoding_an_oversized_message_fails() {
    let big = SpawnRequest::new(vec!["x".repeat(MAX_FRAME_SIZE)]);
    let err = encode_frame(&RequestFrame {
        id: 1,
        call: Request::Spawn(big),
    })
    .unwrap_err();
    assert!(matches!(err, FrameError::TooLarge { .. }), "{err:?}");
    let mut sink = Vec::new();
    assert!(write_frame(&mut sink, &"y".repeat(MAX_FRAME_SIZE)).is_err());
    assert!(sink.is_empty(), "nothing written for a refused frame");
}

#[test]
fn empty_frame_is_an_error() {
    let mut dec = FrameDecoder::new();
    dec.push(&0u32.to_be_bytes());
    assert!(matches!(dec.next_frame(), Err(FrameError::Empty)));
    let mut r = Cursor::new(0u32.to_be_bytes().to_vec());
    assert!(matches!(read_frame(&mut r), Err(FrameError::Empty)));
}

#[test]
fn truncated_frames_are_reported_and_clean_eof_is_not() {
    // Clean end of stream between frames.
    let mut r = Cursor::new(Vec::new());
    assert!(read_frame(&mut r).unwrap().is_none());
    // End inside the header.
    let mut r = Cursor::new(vec![0u8, 0]);
    match read_frame(&mut r) {
        Err(FrameError::Truncated { got: 2, want }) => assert_eq!(want, HEADER_LEN),
        other => panic!("{other:?}"),
    }
    // End inside the payload.
    let mut r = Cursor::new(frame_with_len(10, b"{\"id\""));
    match read_frame(&mut r) {
        Err(FrameError::Truncated { got: 5, want: 10 }) => {}
        other => panic!("{other:?}"),
    }
    let mut dec = FrameDecoder::new();
    dec.push(&frame_with_len(10, b"{\"id\""));
    assert!(dec.next_frame().unwrap().is_none());
    assert!(matches!(
        dec.finish(),
        Err(FrameError::Truncated { got: 5, want: 10 })
    ));
    let mut dec = FrameDecoder::new();
    dec.push(&[0, 0, 1]);
    assert!(matches!(
        dec.finish(),
        Err(FrameError::Truncated { got: 3, want: 4 })
    ));
}

#[tokio::test]
async fn async_reader_matches_the_blocking_one() {
    let good = encode_frame(&RequestFrame {
        id: 9,
        call: Request::Version,
    })
    .unwrap();
    let mut r = &good[..];
    let p = read_frame_async(&mut r).await.unwrap().unwrap();
    assert_eq!(decode_request(&p).unwrap().id, 9);
    assert!(read_frame_async(&mut r).await.unwrap().is_none());

    let mut r = &good[..good.len() - 1];
    assert!(matches!(
        read_frame_async(&mut r).await,
        Err(FrameError::Truncated { .. })
    ));
    let mut r = &[0u8, 0, 0][..];
    assert!(matches!(
        read_frame_async(&mut r).await,
        Err(FrameError::Truncated { got: 3, want: 4 })
    ));
    let big = (MAX_FRAME_SIZE as u32 + 1).to_be_bytes();
    let mut r = &big[..];
    assert!(matches!(
        read_frame_async(&mut r).await,
        Err(FrameError::TooLarge { .. })
    ));
    let zero = 0u32.to_be_bytes();
    let mut r = &zero[..];
    assert!(matches!(
        read_frame_async(&mut r).await,
        Err(FrameError::Empty)
    ));
}

#[test]
fn unknown_request_type_keeps_its_id() {
    let err = decode_request(br#"{"id":42,"call":{"type":"checkpoint_container","spec":{}}}"#)
        .unwrap_err();
    assert_eq!(err.id, Some(42));
    assert_eq!(err.error.kind, ErrorKind::UnknownRequest);
    assert!(err.error.message.contains("\"checkpoint_container\""));
}

#[test]
fn bad_fields_of_a_known_request_are_invalid_arguments() {
    let err =
        decode_request(br#"{"id":3,"call":{"type":"signal","process":"seven"}}"#).unwrap_err();
    assert_eq!(err.id, Some(3));
    assert_eq!(err.error.kind, ErrorKind::InvalidArgument);
    assert!(err.error.message.starts_with("invalid signal request"));
    let err = decode_request(br#"{"id":4,"call":{"type":"spawn","cwd":"/"}}"#).unwrap_err();
    assert_eq!(err.error.kind, ErrorKind::InvalidArgument);
    assert!(err.error.message.contains("argv"), "{}", err.error.message);
}

#[test]
fn malformed_requests_are_bad_frames() {
    for (payload, what) in [
        (&b"not json"[..], "not valid JSON"),
        (b"[1,2]", "not a JSON object"),
        (br#"{"call":{"type":"health"}}"#, "no numeric \"id\""),
        (
            br#"{"id":"1","call":{"type":"health"}}"#,
            "no numeric \"id\"",
        ),
        (
            br#"{"id":-1,"call":{"type":"health"}}"#,
            "no numeric \"id\"",
        ),
        (br#"{"id":0,"call":{"type":"health"}}"#, "reserved"),
    ] {
        let err = decode_request(payload).unwrap_err();
        assert_eq!(err.id, None, "{what}");
        assert_eq!(err.error.kind, ErrorKind::BadFrame, "{what}");
        assert!(err.error.message.contains(what), "{}", err.error.message);
    }
    let err = decode_request(br#"{"id":5}"#).unwrap_err();
    assert_eq!(err.id, Some(5));
    assert!(err.error.message.contains("no \"call\""));
    let err = decode_request(br#"{"id":5,"call":{}}"#).unwrap_err();
    assert_eq!(err.id, Some(5));
    assert!(err.error.message.contains("\"type\""));
}

#[test]
fn hello_out_of_order_is_reported() {
    // A second hello where a request is expected.
    let hello = serde_json::to_vec(&Hello::new(ConnectionKind::Control)).unwrap();
    let err = decode_request(&hello).unwrap_err();
    assert_eq!(err.error.kind, ErrorKind::OutOfOrder);
    // A request where the hello is expected.
    let req = serde_json::to_vec(&RequestFrame {
        id: 1,
        call: Request::Health,
    })
    .unwrap();
    let err = decode_hello(&req).unwrap_err();
    assert_eq!(err.kind, ErrorKind::OutOfOrder);
    assert!(err.message.contains("hello"));
}

#[test]
fn hello_version_mismatch_names_both_versions() {
    for v in [0u64, 1, 3, u64::from(u32::MAX) + 5] {
        let payload = format!(r#"{{"version":{v},"connection":{{"kind":"teleport"}}}}"#);
        let err = decode_hello(payload.as_bytes()).unwrap_err();
        assert_eq!(err.kind, ErrorKind::VersionMismatch);
        assert!(
            err.message
                .contains(&format!("agent speaks version {PROTOCOL_VERSION}")),
            "{}",
            err.message
        );
    }
    let err = decode_hello(br#"{"version":1,"connection":{"kind":"control"}}"#).unwrap_err();
    assert!(err.message.contains("host speaks version 1"));
}

#[test]
fn hello_round_trips_and_rejects_bad_kinds() {
    for kind in [
        ConnectionKind::Control,
        ConnectionKind::Log,
        ConnectionKind::Stream {
            process: ProcessId(3),
            stream: StdStream::Stderr,
        },
        ConnectionKind::Forward { port: 8080 },
    ] {
        let h = Hello::new(kind);
        let bytes = serde_json::to_vec(&h).unwrap();
        assert_eq!(decode_hello(&bytes).unwrap(), h);
    }
    let err = decode_hello(br#"{"version":2,"connection":{"kind":"teleport"}}"#).unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadFrame);
    let err = decode_hello(b"\xff\xfe").unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadFrame);
}

#[test]
fn responses_round_trip_and_unknown_ones_keep_their_id() {
    let frames = vec![
        ResponseFrame {
            id: 1,
            result: Ok(Response::Spawned {
                process: ProcessId(1),
                pid: 99,
            }),
        },
        ResponseFrame {
            id: 2,
            result: Ok(Response::Exited(ExitStatus::Signaled {
                signal: 9,
                core_dumped: false,
            })),
        },
        ResponseFrame {
            id: 3,
            result: Err(AgentError::new(ErrorKind::UnknownProcess, "no process 5")),
        },
        ResponseFrame {
            id: 4,
            result: Ok(Response::Stats(GuestStats::default())),
        },
        ResponseFrame {
            id: 5,
            result: Ok(Response::Done),
        },
        ResponseFrame {
            id: 6,
            result: Ok(Response::Ports {
                ports: vec![80, 8080],
            }),
        },
    ];
    for f in frames {
        let bytes = encode_frame(&f).unwrap();
        let back = decode_response(&bytes[HEADER_LEN..]).unwrap();
        assert_eq!(back, f);
    }
    let (id, msg) =
        decode_response(br#"{"id":8,"result":{"Ok":{"type":"container_created"}}}"#).unwrap_err();
    assert_eq!(id, Some(8));
    assert!(msg.contains("container_created"), "{msg}");
    // An error kind from a newer agent still decodes.
    let f =
        decode_response(br#"{"id":9,"result":{"Err":{"kind":"quota","message":"m"}}}"#).unwrap();
    assert_eq!(f.result.unwrap_err().kind, ErrorKind::Other);
}
