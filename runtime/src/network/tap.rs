//! Tap devices through `/dev/net/tun` (the kernel does not create tun/tap links over netlink).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Opens `/dev/net/tun` and attaches it to the tun/tap `name` with `flags` (`IFF_*`), creating
/// the device if it is not there (unless `flags` has `IFF_TUN_EXCL`). Must run in the namespace
/// the device is (to be) in: the device goes to the namespace of the thread that opened the
/// file.
pub(crate) fn open(name: &str, flags: libc::c_int) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: `ifreq` is plain C data for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.is_empty() || name.len() >= ifr.ifr_name.len() || name.bytes().any(|b| b == 0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "invalid interface name",
        ));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // The flags are a C short; every IFF_* tun flag fits.
    ifr.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `ifr` is and outlives the call; the
    // fd is open for the duration.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// Creates the persistent tap `name` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, the flags hull-vmm
/// opens it with), failing with `EBUSY` if a link of that name exists. The tap stays after this
/// returns (the fd is closed), down, until it is deleted.
pub(super) fn create_persistent(name: &str) -> io::Result<()> {
    let file = open(
        name,
        libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR | libc::IFF_TUN_EXCL,
    )?;
    // SAFETY: TUNSETPERSIST takes its argument by value (1: persistent); the fd is open.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
