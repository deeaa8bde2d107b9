//! `hull-fs-probe`: a static test program for virtio-fs VM tests (what busybox cannot do:
//! mmap, flock/POSIX locks, Unix sockets, open_by_handle_at). Built fully static like
//! `hull-guest-probe`. Every subcommand prints `PROBE <name> ok ...` or `PROBE <name> FAIL
//! <why>` and exits non-zero on failure.
//!
//! - `mmap FILE OFFSET TEXT`: maps FILE shared, checks the mapping equals what read(2) returns,
//!   writes TEXT at OFFSET through the mapping, msyncs, unmaps, and reads it back with read(2).
//! - `locks FILE`: flock(2) and fcntl(2) locks exclude a second open file description / a
//!   second process, and are released on unlock.
//! - `unix-socket PATH`: binds a Unix socket at PATH, connects to it and exchanges a message.
//! - `xattr FILE NAME VALUE`: sets the extended attribute NAME, reads it back and finds it in
//!   the list.
//! - `open-by-handle FILE MOUNT`: takes FILE's handle, then opens handles with every node id in
//!   1..=4096 (and a few absurd ones) on MOUNT; any fd that opens must be a file of MOUNT.
//!   Prints whether the kernel refused to make handles, how many forged handles were tried,
//!   how many opened and how many escaped (must be 0).

use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::process::ExitCode;

fn fail(name: &str, why: impl std::fmt::Display) -> ExitCode {
    println!("PROBE {name} FAIL {why}");
    ExitCode::FAILURE
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn mmap_cmd(path: &str, offset: usize, text: &str) -> Result<String, String> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("open: {e}"))?;
    let mut content = Vec::new();
    f.read_to_end(&mut content)
        .map_err(|e| format!("read: {e}"))?;
    let len = content.len();
    if len == 0 || offset + text.len() > len {
        return Err(format!("file of {len} bytes too small"));
    }
    // SAFETY: a fresh shared mapping of an fd we own; checked for MAP_FAILED below and only
    // accessed within `len` bytes.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(format!("mmap: errno {}", errno()));
    }
    // SAFETY: `p` maps `len` readable and writable bytes until munmap below.
    let map = unsafe { std::slice::from_raw_parts_mut(p.cast::<u8>(), len) };
    if map != &content[..] {
        return Err("the mapping differs from read(2)".into());
    }
    map[offset..offset + text.len()].copy_from_slice(text.as_bytes());
    // SAFETY: `p`/`len` is the mapping made above.
    let rc = unsafe { libc::msync(p, len, libc::MS_SYNC) };
    if rc != 0 {
        return Err(format!("msync: errno {}", errno()));
    }
    // SAFETY: `p`/`len` is the mapping made above; `map` is not used after this.
    unsafe { libc::munmap(p, len) };
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    f.read_to_end(&mut back).map_err(|e| e.to_string())?;
    if &back[offset..offset + text.len()] != text.as_bytes() {
        return Err("read(2) does not see the write made through the mapping".into());
    }
    Ok(format!("len={len}"))
}

fn flock(fd: i32, op: i32) -> i32 {
    // SAFETY: plain syscall on an fd we own.
    if unsafe { libc::flock(fd, op) } == 0 {
        0
    } else {
        errno()
    }
}

fn setlk(fd: i32, kind: i32) -> i32 {
    let mut l: libc::flock = unsafe_zeroed_flock();
    l.l_type = kind as i16;
    l.l_whence = libc::SEEK_SET as i16;
    // SAFETY: F_SETLK reads the struct we pass, which outlives the call.
    if unsafe { libc::fcntl(fd, libc::F_SETLK, &l) } == 0 {
        0
    } else {
        errno()
    }
}

fn unsafe_zeroed_flock() -> libc::flock {
    // SAFETY: `flock` is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn locks_cmd(path: &str) -> Result<String, String> {
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| format!("open: {e}"))
    };
    let (a, b) = (open()?, open()?);
    if flock(a.as_raw_fd(), libc::LOCK_EX) != 0 {
        return Err("flock LOCK_EX".into());
    }
    let e = flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB);
    if e != libc::EWOULDBLOCK {
        return Err(format!(
            "a second flock LOCK_EX got errno {e}, not EWOULDBLOCK"
        ));
    }
    flock(a.as_raw_fd(), libc::LOCK_UN);
    if flock(b.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 {
        return Err("flock after unlock".into());
    }
    flock(b.as_raw_fd(), libc::LOCK_UN);
    // POSIX locks: held by this process, refused to a child.
    if setlk(a.as_raw_fd(), libc::F_WRLCK) != 0 {
        return Err("F_SETLK F_WRLCK".into());
    }
    // SAFETY: the child only makes syscalls and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let e = setlk(b.as_raw_fd(), libc::F_WRLCK);
        // SAFETY: exiting the forked child without running the parent's destructors.
        unsafe {
            libc::_exit(if e == libc::EAGAIN || e == libc::EACCES {
                0
            } else {
                1
            })
        };
    }
    let mut status = 0;
    // SAFETY: waiting for the child forked above.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        return Err("a second process got the POSIX write lock".into());
    }
    Ok("flock+posix".into())
}

fn unix_socket_cmd(path: &str) -> Result<String, String> {
    let l = std::os::unix::net::UnixListener::bind(path).map_err(|e| format!("bind: {e}"))?;
    let md = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !md.file_type().is_socket() {
        return Err("not a socket".into());
    }
    let mut c =
        std::os::unix::net::UnixStream::connect(path).map_err(|e| format!("connect: {e}"))?;
    let (mut s, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    c.write_all(b"ping").map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    s.read_exact(&mut buf).map_err(|e| e.to_string())?;
    if &buf != b"ping" {
        return Err("wrong bytes".into());
    }
    Ok("exchanged".into())
}

fn xattr_cmd(path: &str, name: &str, value: &str) -> Result<String, String> {
    let p = CString::new(path).unwrap();
    let n = CString::new(name).unwrap();
    // SAFETY: all pointers are valid for the given lengths during the call.
    let rc = unsafe {
        libc::setxattr(
            p.as_ptr(),
            n.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if rc != 0 {
        return Err(format!("setxattr: errno {}", errno()));
    }
    let mut buf = vec![0u8; 4096];
    // SAFETY: the kernel writes at most buf.len() bytes into buf.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0 || &buf[..len as usize] != value.as_bytes() {
        return Err(format!("getxattr: {len}, errno {}", errno()));
    }
    // SAFETY: as above.
    let len = unsafe { libc::listxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if len < 0
        || !buf[..len as usize]
            .split(|b| *b == 0)
            .any(|s| s == name.as_bytes())
    {
        return Err(format!("listxattr: {len}, errno {}", errno()));
    }
    Ok("set+get+list".into())
}

#[repr(C)]
struct Handle {
    bytes: u32,
    kind: i32,
    f: [u8; 128],
}

fn open_by_handle_cmd(path: &str, mount: &str) -> Result<String, String> {
    let cpath = CString::new(path).unwrap();
    let mut h = Handle {
        bytes: 128,
        kind: 0,
        f: [0; 128],
    };
    let mut mount_id = 0;
    // SAFETY: the kernel writes at most h.bytes bytes of handle into `h` and the mount id.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            cpath.as_ptr(),
            &mut h as *mut Handle,
            &mut mount_id as *mut i32,
            0,
        )
    };
    // A kernel that refuses to make handles (EOPNOTSUPP) is still sent forged ones, in FUSE's
    // layout (type 0x81, 12 bytes): whatever opens must stay inside the mount. The caller
    // checks which case it was (`refused=`) and that something was tried and opened.
    let refused = if rc != 0 {
        let e = errno();
        if e != libc::EOPNOTSUPP {
            return Err(format!(
                "name_to_handle_at: errno {e} (expected EOPNOTSUPP)"
            ));
        }
        h.bytes = 12;
        h.kind = 0x81;
        "EOPNOTSUPP"
    } else {
        "no"
    };
    let mnt = std::fs::File::open(mount).map_err(|e| e.to_string())?;
    let mnt_dev = mnt.metadata().map_err(|e| e.to_string())?.dev();
    let (mut opened, mut escaped) = (0, 0);
    let mut try_node = |node: u64, h: &mut Handle| {
        // FUSE handles: [nodeid hi, nodeid lo, generation] as u32 words.
        h.f[0..4].copy_from_slice(&((node >> 32) as u32).to_ne_bytes());
        h.f[4..8].copy_from_slice(&(node as u32).to_ne_bytes());
        // SAFETY: `h` is a valid handle buffer; the returned fd is checked and closed below.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mnt.as_raw_fd(),
                h as *mut Handle,
                libc::O_RDONLY | libc::O_PATH,
            )
        } as i32;
        if fd >= 0 {
            opened += 1;
            let target = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap_or_default();
            let mut st: libc::stat = unsafe_zeroed_stat();
            // SAFETY: fstat writes only `st`.
            unsafe { libc::fstat(fd, &mut st) };
            if st.st_dev != mnt_dev || !target.as_os_str().as_bytes().starts_with(mount.as_bytes())
            {
                escaped += 1;
                println!(
                    "PROBE open-by-handle ESCAPE node={node} target={}",
                    target.display()
                );
            }
            // SAFETY: closing the fd opened above.
            unsafe { libc::close(fd) };
        }
    };
    let mut tried = 0;
    for node in (1..=4096u64).chain([1 << 32, u64::MAX, u64::MAX - 1, 0]) {
        try_node(node, &mut h);
        tried += 1;
    }
    if escaped != 0 {
        return Err(format!("opened={opened} escaped={escaped}"));
    }
    Ok(format!(
        "refused={refused} tried={tried} opened={opened} escaped=0"
    ))
}

fn unsafe_zeroed_stat() -> libc::stat {
    // SAFETY: `stat` is plain data; all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let a = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let (name, res) = match a(1) {
        "mmap" => ("mmap", mmap_cmd(a(2), a(3).parse().unwrap_or(0), a(4))),
        "locks" => ("locks", locks_cmd(a(2))),
        "unix-socket" => ("unix-socket", unix_socket_cmd(a(2))),
        "xattr" => ("xattr", xattr_cmd(a(2), a(3), a(4))),
        "open-by-handle" => ("open-by-handle", open_by_handle_cmd(a(2), a(3))),
        other => return fail("usage", format!("unknown subcommand {other:?}")),
    };
    match res {
        Ok(detail) => {
            println!("PROBE {name} ok {detail}");
            ExitCode::SUCCESS
        }
        Err(e) => fail(name, e),
    }
}
