//! The host side of the agent protocol: the bytes a hostile guest sends back on a control
//! connection, as hull-runtime decodes them (`read_frame_async`, which must agree with the
//! blocking `read_frame` and with `FrameDecoder`; the first frame as the hello reply, the others
//! with `decode_response`). Decoded replies must survive an encode/decode round trip, and an
//! undecodable reply may only name the id the frame really carries.

#![no_main]

#[path = "common/frames.rs"]
mod frames;

use hull_agent_protocol::frame::read_frame_async;
use hull_agent_protocol::{decode_hello_reply, decode_response, encode_frame, Response};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let payloads = frames::decode_in_pieces(stream, seed);
    // What the runtime's reader (async) makes of the same stream.
    let (async_frames, _) = RT.with(|rt| {
        rt.block_on(async {
            let mut r = stream;
            let mut v = Vec::new();
            loop {
                match read_frame_async(&mut r).await {
                    Ok(Some(p)) => v.push(p),
                    Ok(None) => return (v, false),
                    Err(_) => return (v, true),
                }
            }
        })
    });
    assert_eq!(async_frames, payloads, "read_frame_async disagrees");
    let mut payloads = payloads.iter();
    if let Some(hello) = payloads.next() {
        if let Ok(h) = decode_hello_reply(hello) {
            let again = encode_frame(&h).unwrap();
            assert_eq!(decode_hello_reply(&again[4..]).unwrap(), h);
        }
    }
    for p in payloads {
        match decode_response(p) {
            Ok(f) => {
                // Floats (stats) need not survive a text round trip bit for bit.
                if matches!(f.result, Ok(Response::Stats(_))) {
                    continue;
                }
                let again = encode_frame(&f).expect("a decoded reply must encode");
                assert_eq!(decode_response(&again[4..]).unwrap(), f, "round trip");
            }
            Err((id, _)) => {
                if let Some(id) = id {
                    let v: serde_json::Value = serde_json::from_slice(p).unwrap();
                    assert_eq!(v.get("id").and_then(|v| v.as_u64()), Some(id));
                }
            }
        }
    }
});
