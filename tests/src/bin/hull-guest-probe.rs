//! `hull-guest-probe`: a static test program that runs inside a test guest (busybox has no
//! AF_VSOCK). Built fully static:
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build --release \
//!     --target x86_64-unknown-linux-gnu -p hull-tests --bin hull-guest-probe
//! ```
//!
//! Subcommands:
//! - `vsock-listen PORT [--count N] [--echo]`: listens on vsock PORT and serves N connections
//!   (0: forever) concurrently. Default mode: read until EOF, then reply `<bytes> <fnv1a64 hex>\n`
//!   and close. `--echo`: write back every byte, then shut down the write side at EOF. Prints
//!   `LISTENING <port>` once ready and `SERVED <bytes> <checksum>` per connection.
//! - `vsock-send CID PORT BYTES [--conns N] [--seed S]`: opens N connections at once to CID:PORT;
//!   connection i sends BYTES bytes of `Pattern::new(S + i)`, shuts down its write side, reads
//!   the peer's reply line and checks it against its own count and checksum. Prints
//!   `SENT <i> <bytes> <checksum> OK|MISMATCH <reply>`; exits 0 only if every reply matched.
//! - `kill-init`: ends the guest's PID 1 (hull's agent), which no signal sent from inside the
//!   guest can do (the kernel ignores SIGKILL and SIGSTOP sent to the global init): it seizes
//!   PID 1 with ptrace, waits for its next system call and turns that call into
//!   `exit_group(9)`. Needs CAP_SYS_PTRACE in the guest's pid namespace. Prints `KILLING-INIT`
//!   just before; the guest kernel then panics ("Attempted to kill init").

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use hull_tests::stream_check::{reply_line, Checksum, Pattern};

const CHUNK: usize = 64 * 1024;

fn vsock_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked and owned right after.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain data; all-zero is valid.
    let mut a: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    a.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    a.svm_cid = cid;
    a.svm_port = port;
    a
}

const SOCKADDR_VM_LEN: libc::socklen_t =
    std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

fn listen(port: u32) -> io::Result<OwnedFd> {
    let s = vsock_socket()?;
    let a = sockaddr(libc::VMADDR_CID_ANY, port);
    // SAFETY: `a` is a valid sockaddr_vm of the given length.
    if unsafe {
        libc::bind(
            s.as_raw_fd(),
            std::ptr::addr_of!(a).cast::<libc::sockaddr>(),
            SOCKADDR_VM_LEN,
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain syscall on an owned socket.
    if unsafe { libc::listen(s.as_raw_fd(), 128) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

fn accept(l: &OwnedFd) -> io::Result<File> {
    loop {
        // SAFETY: null address pointers are allowed by accept4.
        let fd = unsafe {
            libc::accept4(
                l.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: `fd` is a fresh socket nothing else owns.
            return Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn connect(cid: u32, port: u32) -> io::Result<File> {
    // The host listener may appear a little later than the guest is ready: retry refusals.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = vsock_socket()?;
        let a = sockaddr(cid, port);
        // SAFETY: `a` is a valid sockaddr_vm of the given length.
        let r = unsafe {
            libc::connect(
                s.as_raw_fd(),
                std::ptr::addr_of!(a).cast::<libc::sockaddr>(),
                SOCKADDR_VM_LEN,
            )
        };
        if r == 0 {
            return Ok(File::from(s));
        }
        let e = io::Error::last_os_error();
        if Instant::now() > deadline
            || !matches!(
                e.raw_os_error(),
                Some(libc::ECONNREFUSED | libc::ECONNRESET | libc::EINTR | libc::ETIMEDOUT)
            )
        {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn shutdown_write(f: &File) {
    // SAFETY: plain syscall on an owned socket.
    unsafe { libc::shutdown(f.as_raw_fd(), libc::SHUT_WR) };
}

fn serve(mut s: File, echo: bool) -> io::Result<(u64, Checksum)> {
    let mut buf = vec![0u8; CHUNK];
    let mut sum = Checksum::default();
    let mut total = 0u64;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        sum.update(&buf[..n]);
        total += n as u64;
        if echo {
            s.write_all(&buf[..n])?;
        }
    }
    if echo {
        shutdown_write(&s);
    } else {
        s.write_all(reply_line(total, sum).as_bytes())?;
    }
    Ok((total, sum))
}

fn cmd_listen(args: &[String]) -> Result<(), String> {
    let port: u32 = args
        .first()
        .and_then(|p| p.parse().ok())
        .ok_or("vsock-listen PORT [--count N] [--echo]")?;
    let mut count = 0usize;
    let mut echo = false;
    let mut i = 1;
    while i < args.len() {
        match args[i].as_str() {
            "--count" => {
                count = args
                    .get(i + 1)
                    .and_then(|v| v.parse().ok())
                    .ok_or("--count N")?;
                i += 1;
            }
            "--echo" => echo = true,
            a => return Err(format!("unknown argument {a}")),
        }
        i += 1;
    }
    let l = listen(port).map_err(|e| format!("listen on vsock port {port}: {e}"))?;
    println!("LISTENING {port}");
    let _ = io::stdout().flush();
    let mut workers = Vec::new();
    let mut served = 0usize;
    while count == 0 || served < count {
        let s = accept(&l).map_err(|e| format!("accept: {e}"))?;
        served += 1;
        workers.push(std::thread::spawn(move || match serve(s, echo) {
            Ok((n, sum)) => println!("SERVED {n} {:016x}", sum.0),
            Err(e) => println!("SERVE-ERROR {e}"),
        }));
    }
    for w in workers {
        let _ = w.join();
    }
    println!("LISTEN-DONE {served}");
    Ok(())
}

fn send_one(cid: u32, port: u32, bytes: u64, seed: u64) -> Result<(Checksum, String), String> {
    let mut s = connect(cid, port).map_err(|e| format!("connect to {cid}:{port}: {e}"))?;
    let mut p = Pattern::new(seed);
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        p.fill(&mut buf[..n]);
        sum.update(&buf[..n]);
        s.write_all(&buf[..n]).map_err(|e| format!("send: {e}"))?;
        left -= n as u64;
    }
    shutdown_write(&s);
    let mut line = String::new();
    BufReader::new(&mut s)
        .read_line(&mut line)
        .map_err(|e| format!("reading the reply: {e}"))?;
    Ok((sum, line))
}

fn cmd_send(args: &[String]) -> Result<bool, String> {
    let usage = "vsock-send CID PORT BYTES [--conns N] [--seed S]";
    let cid: u32 = args.first().and_then(|v| v.parse().ok()).ok_or(usage)?;
    let port: u32 = args.get(1).and_then(|v| v.parse().ok()).ok_or(usage)?;
    let bytes: u64 = args.get(2).and_then(|v| v.parse().ok()).ok_or(usage)?;
    let mut conns = 1u64;
    let mut seed = 1u64;
    let mut i = 3;
    while i < args.len() {
        let v = args.get(i + 1).and_then(|v| v.parse().ok());
        match args[i].as_str() {
            "--conns" => conns = v.ok_or("--conns N")?,
            "--seed" => seed = v.ok_or("--seed S")?,
            a => return Err(format!("unknown argument {a}")),
        }
        i += 2;
    }
    let workers: Vec<_> = (0..conns)
        .map(|i| std::thread::spawn(move || (i, send_one(cid, port, bytes, seed + i))))
        .collect();
    let mut all_ok = true;
    for w in workers {
        let (i, r) = w.join().map_err(|_| "a sender thread panicked")?;
        match r {
            Ok((sum, reply)) => {
                let ok = reply == reply_line(bytes, sum);
                all_ok &= ok;
                println!(
                    "SENT {i} {bytes} {:016x} {} {}",
                    sum.0,
                    if ok { "OK" } else { "MISMATCH" },
                    reply.trim_end()
                );
            }
            Err(e) => {
                all_ok = false;
                println!("SEND-ERROR {i} {e}");
            }
        }
    }
    Ok(all_ok)
}

fn ptrace(req: libc::c_uint, pid: libc::pid_t, addr: usize, data: usize) -> io::Result<()> {
    // SAFETY: ptrace(2) on the tracee named; `addr` and `data` are integers or point at a live
    // `user_regs_struct` the caller owns for the requests that take one.
    let rc = unsafe { libc::ptrace(req, pid, addr, data) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn wait_stop(pid: libc::pid_t) -> io::Result<i32> {
    let mut status = 0;
    // SAFETY: waitpid(2) with a pointer to a local int.
    if unsafe { libc::waitpid(pid, &mut status, libc::__WALL) } == -1 {
        return Err(io::Error::last_os_error());
    }
    if !libc::WIFSTOPPED(status) {
        return Err(io::Error::other(format!(
            "pid {pid} did not stop: {status:#x}"
        )));
    }
    Ok(status)
}

fn cmd_kill_init() -> Result<bool, String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: io::Error| format!("{what}: {err}")
    };
    ptrace(
        libc::PTRACE_SEIZE,
        1,
        0,
        libc::PTRACE_O_TRACESYSGOOD as usize,
    )
    .map_err(e("PTRACE_SEIZE 1"))?;
    ptrace(libc::PTRACE_INTERRUPT, 1, 0, 0).map_err(e("PTRACE_INTERRUPT"))?;
    wait_stop(1).map_err(e("waitpid"))?;
    // From the interrupt stop, the next system-call stop is an entry.
    loop {
        ptrace(libc::PTRACE_SYSCALL, 1, 0, 0).map_err(e("PTRACE_SYSCALL"))?;
        let status = wait_stop(1).map_err(e("waitpid"))?;
        if libc::WSTOPSIG(status) == libc::SIGTRAP | 0x80 {
            break;
        }
    }
    // SAFETY: user_regs_struct is plain integers; all zeroes is a valid value.
    let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
    let at = |r: &mut libc::user_regs_struct| r as *mut libc::user_regs_struct as usize;
    ptrace(libc::PTRACE_GETREGS, 1, 0, at(&mut regs)).map_err(e("PTRACE_GETREGS"))?;
    regs.orig_rax = libc::SYS_exit_group as u64;
    regs.rdi = 9;
    ptrace(libc::PTRACE_SETREGS, 1, 0, at(&mut regs)).map_err(e("PTRACE_SETREGS"))?;
    println!("KILLING-INIT");
    let _ = io::stdout().flush();
    ptrace(libc::PTRACE_DETACH, 1, 0, 0).map_err(e("PTRACE_DETACH"))?;
    // The guest is going down; anything after this is a failure.
    std::thread::sleep(Duration::from_secs(60));
    Err("PID 1 is still alive 60 s later".into())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("vsock-listen") => cmd_listen(&args[1..]).map(|()| true),
        Some("vsock-send") => cmd_send(&args[1..]),
        Some("kill-init") => cmd_kill_init(),
        _ => Err(
            "usage: hull-guest-probe vsock-listen PORT [--count N] [--echo] | \
                  vsock-send CID PORT BYTES [--conns N] [--seed S] | kill-init"
                .to_string(),
        ),
    };
    let _ = io::stdout().flush();
    match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("hull-guest-probe: {e}");
            ExitCode::from(2)
        }
    }
}
