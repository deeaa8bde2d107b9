//! Splitting a byte stream into agent frames, two ways that must agree.

use hull_agent_protocol::frame::read_frame;
use hull_agent_protocol::FrameDecoder;

/// The frames of `stream` as `read_frame` (blocking, whole stream) sees them, and whether it
/// ended in an error (bad length or a truncated frame) rather than a clean end.
pub fn read_all(stream: &[u8]) -> (Vec<Vec<u8>>, bool) {
    let mut r = stream;
    let mut frames = Vec::new();
    loop {
        match read_frame(&mut r) {
            Ok(Some(p)) => frames.push(p),
            Ok(None) => return (frames, false),
            Err(_) => return (frames, true),
        }
    }
}

/// The frames of `stream` pushed into a [`FrameDecoder`] in pieces whose sizes come from
/// `seed`; checked to be exactly what `read_frame` finds.
pub fn decode_in_pieces(stream: &[u8], seed: u8) -> Vec<Vec<u8>> {
    let (want, want_err) = read_all(stream);
    let mut dec = FrameDecoder::new();
    let mut got = Vec::new();
    let mut failed = false;
    let mut rest = stream;
    let mut x = u32::from(seed) | 1;
    'feed: while !rest.is_empty() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let n = (x as usize % 64 + 1).min(rest.len());
        dec.push(&rest[..n]);
        rest = &rest[n..];
        loop {
            match dec.next_frame() {
                Ok(Some(p)) => got.push(p),
                Ok(None) => break,
                Err(_) => {
                    failed = true;
                    break 'feed;
                }
            }
        }
    }
    if !failed && dec.finish().is_err() {
        failed = true;
    }
    assert_eq!(
        got, want,
        "FrameDecoder and read_frame disagree on the frames"
    );
    assert_eq!(
        failed, want_err,
        "FrameDecoder and read_frame disagree on the end"
    );
    got
}
