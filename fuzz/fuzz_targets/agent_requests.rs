//! The guest side of the agent protocol: the bytes a (hostile or buggy) host sends on a control
//! connection, as hull-agent decodes them. The first byte picks how the stream is cut into the
//! pieces fed to `FrameDecoder` (which must agree with `read_frame`); the first frame is decoded
//! as the hello, the others as requests. Decoded requests must survive an encode/decode round
//! trip, never carry id 0, and mount requests are validated as the agent does.

#![no_main]

#[path = "common/frames.rs"]
mod frames;

use hull_agent_protocol::{decode_hello, decode_request, encode_frame, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let payloads = frames::decode_in_pieces(stream, seed);
    let mut payloads = payloads.iter();
    if let Some(hello) = payloads.next() {
        if let Ok(h) = decode_hello(hello) {
            let again = encode_frame(&h).unwrap();
            assert_eq!(decode_hello(&again[4..]).unwrap(), h);
        }
    }
    for p in payloads {
        match decode_request(p) {
            Ok(f) => {
                assert_ne!(f.id, 0, "request id 0 accepted");
                let _ = f.call.type_name();
                if let Request::Mount(m) = &f.call {
                    let _ = m.validate();
                }
                let again = encode_frame(&f).expect("a decoded request must encode");
                assert_eq!(decode_request(&again[4..]).unwrap(), f, "round trip");
            }
            Err(e) => {
                assert_ne!(e.id, Some(0));
                let _ = e.error.to_string();
            }
        }
    }
});
