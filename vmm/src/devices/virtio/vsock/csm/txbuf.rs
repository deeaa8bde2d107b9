//! Guest-to-host bytes that the host socket did not take yet.
//!
//! Bytes from the guest are written straight from guest memory into the host socket; only what
//! the socket refuses (it is full) is copied here, and flushed when the socket becomes writable.
//! The buffer never holds more than `capacity` bytes: that is the credit the device gives the
//! guest, so a guest that overflows it broke the protocol.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vm_memory::VolatileSlice;

/// A bounded FIFO of bytes.
#[derive(Debug)]
pub struct TxBuf {
    data: Vec<u8>,
    /// Bytes before `start` were already flushed.
    start: usize,
    capacity: usize,
}

/// The guest sent more than the buffer may hold.
#[derive(Debug, PartialEq, Eq)]
pub struct TxBufFull;

impl TxBuf {
    pub fn new(capacity: usize) -> TxBuf {
        TxBuf {
            data: Vec::new(),
            start: 0,
            capacity,
        }
    }

    pub fn len(&self) -> usize {
        self.data.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn clear(&mut self) {
        self.data = Vec::new();
        self.start = 0;
    }

    /// Appends the bytes of a guest buffer.
    pub fn push(&mut self, src: &VolatileSlice<'_, ()>) -> Result<(), TxBufFull> {
        let n = src.len();
        if n > self.capacity - self.len() {
            return Err(TxBufFull);
        }
        if self.start > 0 {
            self.data.drain(..self.start);
            self.start = 0;
        }
        let old = self.data.len();
        self.data.resize(old + n, 0);
        let copied = src.copy_to(&mut self.data[old..]);
        // `copy_to` copies min(src, dst) bytes, and both are `n` long.
        self.data.truncate(old + copied);
        Ok(())
    }

    /// Writes as much as the socket takes; returns how many bytes left the buffer.
    pub fn flush_to<S: AsRawFd>(&mut self, sock: &S) -> io::Result<usize> {
        let mut total = 0;
        while !self.is_empty() {
            match send_bytes(sock, &self.data[self.start..]) {
                Ok(0) => break,
                Ok(n) => {
                    self.start += n;
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.is_empty() {
            if self.data.capacity() > 64 * 1024 {
                self.data = Vec::new();
            } else {
                self.data.clear();
            }
            self.start = 0;
        }
        Ok(total)
    }
}

/// `send(2)` of `len` bytes at `ptr`, without SIGPIPE and without blocking.
///
/// # Safety
/// `ptr` must be valid for reads of `len` bytes for the duration of the call.
unsafe fn send_raw(fd: RawFd, ptr: *const u8, len: usize) -> io::Result<usize> {
    // SAFETY: the caller guarantees `ptr` is readable for `len` bytes; the kernel only reads it.
    let r = unsafe { libc::send(fd, ptr.cast(), len, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// `send(2)` without SIGPIPE and without blocking.
pub fn send_bytes<S: AsRawFd>(sock: &S, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid slice of `buf.len()` bytes for the duration of the call.
    unsafe { send_raw(sock.as_raw_fd(), buf.as_ptr(), buf.len()) }
}

/// `send(2)` straight from guest memory, without SIGPIPE and without blocking.
pub fn send_volatile<S: AsRawFd>(sock: &S, buf: &VolatileSlice<'_, ()>) -> io::Result<usize> {
    let guard = buf.ptr_guard();
    // SAFETY: the guard keeps the mapping of `buf.len()` bytes of guest memory valid for the
    // call; the kernel only reads from it (copy_from_user tolerates concurrent guest writes).
    unsafe { send_raw(sock.as_raw_fd(), guard.as_ptr(), buf.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    #[test]
    fn bounded_and_flushes_in_order() {
        let mut src = vec![7u8; 100];
        src[0] = 1;
        src[99] = 9;
        // SAFETY: `src` outlives `slice` and nothing else accesses it meanwhile.
        let slice = unsafe { VolatileSlice::new(src.as_mut_ptr(), src.len()) };
        let mut b = TxBuf::new(150);
        b.push(&slice).unwrap();
        assert_eq!(b.push(&slice), Err(TxBufFull));
        assert_eq!(b.len(), 100);
        let (a, mut peer) = UnixStream::pair().unwrap();
        assert_eq!(b.flush_to(&a).unwrap(), 100);
        assert!(b.is_empty());
        b.push(&slice).unwrap();
        assert_eq!(b.flush_to(&a).unwrap(), 100);
        let mut got = vec![0u8; 200];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(&got[..100], &src[..]);
        assert_eq!(&got[100..], &src[..]);
    }
}
