//! The host side of a virtio-net device: a tap interface opened through `/dev/net/tun`, and
//! [`TapIo`], the little the device needs from it (so tests and fuzz targets can use a fake).
//!
//! The tap is opened with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR and a vnet header size of 12
//! bytes (`virtio_net_hdr_v1`, with `num_buffers`): every frame read from or written to the tap
//! starts with the same header the guest's driver uses, so frames pass between the guest's
//! buffers and the tap without translation. The fd is non-blocking.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::VNET_HDR_LEN;

/// What the device needs from its host side.
pub trait TapIo: Send {
    /// Reads one frame (vnet header first) into `buf`. `WouldBlock` when none is waiting.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (vnet header first).
    fn write_frame(&mut self, buf: &[u8]) -> io::Result<usize>;
    /// Sets the offloads (`TUN_F_*`) the host may use in frames it hands to the device.
    fn set_offload(&mut self, flags: u32) -> io::Result<()>;
    /// The fd the event loop watches for readability (edge-triggered).
    fn raw_fd(&self) -> RawFd;
}

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap `{name}`: the name is empty or longer than 15 bytes, or contains a NUL")]
    InvalidName { name: String },
    #[error("tap `{name}`: cannot open /dev/net/tun: {source}")]
    OpenTun {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("tap `{name}`: {what}: {source}")]
    Ioctl {
        name: String,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

/// An open tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

/// A `struct ifreq` with `name` and `flags` set.
fn ifreq(name: &str, flags: libc::c_short) -> Option<libc::ifreq> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return None;
    }
    // SAFETY: ifreq is plain old data (arrays, integers and a union of them); all zeroes is a
    // valid value of it.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags;
    Some(req)
}

impl Tap {
    /// Attaches to the tap interface `name` (created beforehand, or created by this call when
    /// the process may: then it lasts as long as the fd), sets a 12-byte vnet header and makes
    /// the fd non-blocking. Offloads stay off until [`TapIo::set_offload`].
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
        let mut req = ifreq(name, flags).ok_or_else(|| TapError::InvalidName {
            name: name.to_string(),
        })?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun {
                name: name.to_string(),
                source,
            })?;
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one and outlives the call.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        tap.check(rc, "TUNSETIFF (attach to the interface)")?;
        let hdr_len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which outlives the call.
        let rc = unsafe { libc::ioctl(tap.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        tap.check(rc, "TUNSETVNETHDRSZ")?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The tap's open file (what vhost-net is given as its backend).
    pub fn file(&self) -> &File {
        &self.file
    }

    fn check(&self, rc: libc::c_int, what: &'static str) -> Result<(), TapError> {
        if rc < 0 {
            return Err(TapError::Ioctl {
                name: self.name.clone(),
                what,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl TapIo for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    fn write_frame(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        let arg = libc::c_ulong::from(flags);
        // SAFETY: TUNSETOFFLOAD takes its argument by value; no memory is passed.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETOFFLOAD, arg) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

/// The `TUN_F_*` offloads for the virtio-net features the driver acknowledged: what the guest
/// can take in the frames the host sends it. The tap refuses TSO without checksum offload, and
/// so does the virtio specification (GUEST_TSO4/6 need GUEST_CSUM).
pub fn offload_flags(acked_features: u64) -> u32 {
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
    };
    let has = |bit: u32| acked_features & (1u64 << bit) != 0;
    if !has(VIRTIO_NET_F_GUEST_CSUM) {
        return 0;
    }
    let mut flags = libc::TUN_F_CSUM;
    if has(VIRTIO_NET_F_GUEST_TSO4) {
        flags |= libc::TUN_F_TSO4;
    }
    if has(VIRTIO_NET_F_GUEST_TSO6) {
        flags |= libc::TUN_F_TSO6;
    }
    if has(VIRTIO_NET_F_GUEST_UFO) {
        flags |= libc::TUN_F_UFO;
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_checks_the_name() {
        let r = ifreq("tap0", 2).unwrap();
        let name: Vec<u8> = r.ifr_name[..5].iter().map(|&c| c as u8).collect();
        assert_eq!(name, b"tap0\0");
        // SAFETY: the flags member is the one `ifreq` set.
        assert_eq!(unsafe { r.ifr_ifru.ifru_flags }, 2);
        assert!(ifreq("", 0).is_none());
        assert!(ifreq(&"x".repeat(16), 0).is_none());
        assert!(ifreq(&"x".repeat(15), 0).is_some());
        assert!(ifreq("a\0b", 0).is_none());
    }

    #[test]
    fn a_tap_that_cannot_be_opened_is_named() {
        for name in ["", "0123456789abcdef"] {
            let e = Tap::open(name).unwrap_err();
            assert!(e.to_string().contains(&format!("tap `{name}`")), "{e}");
        }
    }
}
