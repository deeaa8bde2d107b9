//! Length-prefixed frames: a 4-byte big-endian payload length, then the payload (JSON).
//!
//! The length is checked against [`MAX_FRAME_SIZE`] before anything is allocated, so a hostile
//! peer cannot make either side reserve more than that. A length of 0 is an error.
//!
//! Three ways in: [`FrameDecoder`] for bytes that arrive in pieces, [`read_frame`]/[`write_frame`]
//! on blocking `std::io`, and (feature `tokio`) [`read_frame_async`]/[`write_frame_async`].

use std::io::{Read, Write};

use serde::Serialize;

use crate::error::FrameError;
use crate::MAX_FRAME_SIZE;

/// Bytes in a frame header.
pub const HEADER_LEN: usize = 4;

/// Checks a payload length read from a header.
pub fn check_len(len: usize) -> Result<(), FrameError> {
    if len == 0 {
        Err(FrameError::Empty)
    } else if len > MAX_FRAME_SIZE {
        Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_SIZE,
        })
    } else {
        Ok(())
    }
}

/// Serializes `msg` as one frame (header + JSON payload).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut buf = vec![0u8; HEADER_LEN];
    serde_json::to_writer(&mut buf, msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = buf.len() - HEADER_LEN;
    check_len(len)?;
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge {
        len,
        max: MAX_FRAME_SIZE,
    })?;
    buf[..HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(buf)
}

/// Splits a byte stream that arrives in arbitrary pieces into frame payloads.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
}

impl FrameDecoder {
    pub fn new() -> FrameDecoder {
        FrameDecoder::default()
    }

    /// Appends received bytes. Call [`FrameDecoder::next_frame`] after each push: the decoder
    /// never buffers more than one header's worth past a bad length.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete payload, `Ok(None)` if more bytes are needed, or the framing error
    /// (after which the stream has no usable frame boundary any more).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = header_len(&self.buf[..HEADER_LEN]);
        check_len(len)?;
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(payload))
    }

    /// Call at end of stream: an error if a partial frame is buffered.
    pub fn finish(&self) -> Result<(), FrameError> {
        match self.buf.len() {
            0 => Ok(()),
            n if n < HEADER_LEN => Err(FrameError::Truncated {
                got: n,
                want: HEADER_LEN,
            }),
            n => Err(FrameError::Truncated {
                got: n - HEADER_LEN,
                want: header_len(&self.buf[..HEADER_LEN]),
            }),
        }
    }
}

fn header_len(h: &[u8]) -> usize {
    u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize
}

/// Reads as much of `buf` as the stream has; returns how many bytes were read (less than
/// `buf.len()` only at end of stream).
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(got)
}

/// Reads one frame payload from a blocking stream. `Ok(None)` on a clean end of stream (before a
/// header starts); [`FrameError::Truncated`] if it ends inside a frame.
pub fn read_frame<R: Read>(r: &mut R) -> Result<Option<Vec<u8>>, FrameError> {
    let mut header = [0u8; HEADER_LEN];
    match read_full(r, &mut header)? {
        0 => return Ok(None),
        HEADER_LEN => {}
        n => {
            return Err(FrameError::Truncated {
                got: n,
                want: HEADER_LEN,
            })
        }
    }
    let len = header_len(&header);
    check_len(len)?;
    let mut payload = vec![0u8; len];
    let got = read_full(r, &mut payload)?;
    if got < len {
        return Err(FrameError::Truncated { got, want: len });
    }
    Ok(Some(payload))
}

/// Writes `msg` as one frame to a blocking stream.
pub fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> Result<(), FrameError> {
    let frame = encode_frame(msg)?;
    w.write_all(&frame)?;
    w.flush()?;
    Ok(())
}

/// Async [`read_frame`].
#[cfg(feature = "tokio")]
pub async fn read_frame_async<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<Vec<u8>>, FrameError> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut header[got..]).await? {
            0 if got == 0 => return Ok(None),
            0 => {
                return Err(FrameError::Truncated {
                    got,
                    want: HEADER_LEN,
                })
            }
            n => got += n,
        }
    }
    let len = header_len(&header);
    check_len(len)?;
    let mut payload = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match r.read(&mut payload[got..]).await? {
            0 => return Err(FrameError::Truncated { got, want: len }),
            n => got += n,
        }
    }
    Ok(Some(payload))
}

/// Async [`write_frame`].
#[cfg(feature = "tokio")]
pub async fn write_frame_async<W: tokio::io::AsyncWrite + Unpin, T: Serialize>(
    w: &mut W,
    msg: &T,
) -> Result<(), FrameError> {
    use tokio::io::AsyncWriteExt;
    let frame = encode_frame(msg)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Writes an already encoded frame (from [`encode_frame`]).
#[cfg(feature = "tokio")]
pub async fn write_raw_frame_async<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    frame: &[u8],
) -> Result<(), FrameError> {
    use tokio::io::AsyncWriteExt;
    w.write_all(frame).await?;
    w.flush().await?;
    Ok(())
}
