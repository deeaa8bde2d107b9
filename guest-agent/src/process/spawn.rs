//! Starting a process: validation, stdio set-up and fork/exec.
//!
//! We fork ourselves (rather than `std::process::Command`) because the child must turn exec
//! failures into a message on its own stderr and exit code 127/126, like a shell, and because
//! all waiting is done by the agent's reaper (`waitpid(-1)`), never per child. Everything the
//! child needs is prepared before `fork`; after it the child makes only async-signal-safe
//! system calls (no allocation, no locks) until `execve` or `_exit`.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use hull_agent_protocol::{
    check_path, AgentError, ErrorKind, Redirect, SpawnRequest, StdioSpec, MAX_ARGV, MAX_ENV,
    MAX_GROUPS,
};

/// PATH used to find a bare program name when the request's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn invalid(msg: String) -> AgentError {
    AgentError::new(ErrorKind::InvalidArgument, msg)
}

fn io_err(what: &str, e: impl std::fmt::Display) -> AgentError {
    AgentError::new(ErrorKind::Io, format!("{what}: {e}"))
}

fn cstring(what: &str, s: &str) -> Result<CString, AgentError> {
    CString::new(s).map_err(|_| invalid(format!("{what} {s:?} contains a NUL byte")))
}

/// A validated request, turned into what `execve` takes.
pub struct Prepared {
    argv: Vec<CString>,
    env: Vec<CString>,
    /// Paths to try in order (one for an absolute program, one per PATH entry for a bare name).
    candidates: Vec<CString>,
    cwd: CString,
    /// Directory to chroot into before `cwd` and the program are resolved.
    root: Option<CString>,
    user: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)>,
    /// `hull-agent: <argv0>: ` for error messages written by the child.
    err_prefix: Vec<u8>,
}

/// Checks a spawn request and prepares it; bad input gets an error naming what is wrong.
pub fn prepare(req: &SpawnRequest) -> Result<Prepared, AgentError> {
    let program = req
        .argv
        .first()
        .ok_or_else(|| invalid("argv is empty: name the program to run".into()))?;
    if program.is_empty() {
        return Err(invalid("argv[0] is empty: name the program to run".into()));
    }
    if req.argv.len() > MAX_ARGV {
        return Err(invalid(format!(
            "argv has {} entries, at most {MAX_ARGV} are allowed",
            req.argv.len()
        )));
    }
    if req.env.len() > MAX_ENV {
        return Err(invalid(format!(
            "env has {} entries, at most {MAX_ENV} are allowed",
            req.env.len()
        )));
    }
    if program.contains('/') && !program.starts_with('/') {
        return Err(invalid(format!(
            "program path {program:?} is relative: use an absolute path, or a bare name to \
             look up in PATH"
        )));
    }
    let argv = req
        .argv
        .iter()
        .map(|a| cstring("argument", a))
        .collect::<Result<Vec<_>, _>>()?;
    let mut path_var = None;
    let mut env = Vec::with_capacity(req.env.len());
    for e in &req.env {
        match e.split_once('=') {
            Some((k, v)) if !k.is_empty() => {
                if k == "PATH" {
                    path_var = Some(v);
                }
            }
            _ => return Err(invalid(format!("environment entry {e:?} is not KEY=VALUE"))),
        }
        env.push(cstring("environment entry", e)?);
    }

    if !req.cwd.starts_with('/') {
        return Err(invalid(format!(
            "working directory {:?} is not an absolute path",
            req.cwd
        )));
    }
    let root = match &req.root {
        None => None,
        Some(r) => {
            check_path("root", r)?;
            match std::fs::metadata(r) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(invalid(format!("root {r:?} is not a directory"))),
                Err(e) => return Err(invalid(format!("root {r:?} is not usable: {e}"))),
            }
            Some(cstring("root", r)?)
        }
    };
    let cwd_check = match &root {
        None => std::fs::metadata(&req.cwd),
        Some(r) => metadata_in_root(r, &req.cwd),
    };
    let in_root = match &req.root {
        Some(r) => format!(" (inside root {r:?})"),
        None => String::new(),
    };
    match cwd_check {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(invalid(format!(
                "working directory {:?}{in_root} is not a directory",
                req.cwd
            )))
        }
        Err(e) => {
            return Err(invalid(format!(
                "working directory {:?}{in_root} is not usable: {e}",
                req.cwd
            )))
        }
    }
    let cwd = cstring("working directory", &req.cwd)?;

    let candidates = if program.starts_with('/') {
        vec![cstring("program", program)?]
    } else {
        path_var
            .unwrap_or(DEFAULT_PATH)
            .split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| {
                let p = Path::new(d).join(program);
                CString::new(p.as_os_str().as_bytes())
                    .map_err(|_| invalid(format!("PATH entry {d:?} contains a NUL byte")))
            })
            .collect::<Result<Vec<_>, _>>()?
    };

    let user = match &req.user {
        None => None,
        Some(u) => {
            if u.groups.len() > MAX_GROUPS {
                return Err(invalid(format!(
                    "{} supplementary groups given, at most {MAX_GROUPS} are allowed",
                    u.groups.len()
                )));
            }
            Some((u.uid, u.gid, u.groups.clone()))
        }
    };

    let mut err_prefix = b"hull-agent: ".to_vec();
    err_prefix.extend_from_slice(OsStr::new(program).as_bytes());
    err_prefix.extend_from_slice(b": ");
    Ok(Prepared {
        argv,
        env,
        candidates,
        cwd,
        root,
        user,
        err_prefix,
    })
}

/// Metadata of `path` resolved as if `root` were `/` (symlinks and `..` cannot leave it), the
/// way the child will see it after chroot: openat2(RESOLVE_IN_ROOT).
fn metadata_in_root(root: &CString, path: &str) -> std::io::Result<std::fs::Metadata> {
    let open =
        |p: &CString, dirfd: RawFd, how: Option<&libc::open_how>| -> std::io::Result<OwnedFd> {
            let fd = match how {
                // SAFETY: `p` is NUL-terminated and `how` points at a valid open_how of the size
                // passed; openat2 returns a new descriptor or -1.
                Some(how) => unsafe {
                    libc::syscall(
                        libc::SYS_openat2,
                        dirfd,
                        p.as_ptr(),
                        how as *const libc::open_how,
                        std::mem::size_of::<libc::open_how>(),
                    ) as libc::c_int
                },
                // SAFETY: `p` is NUL-terminated; open returns a new descriptor or -1.
                None => unsafe {
                    libc::open(
                        p.as_ptr(),
                        libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
                    )
                },
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: a fresh descriptor that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
    let rootfd = open(root, libc::AT_FDCWD, None)?;
    let rel = CString::new(path.trim_start_matches('/'))
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let rel = if rel.as_bytes().is_empty() {
        c".".to_owned()
    } else {
        rel
    };
    // SAFETY: open_how is plain data; all-zero is valid, then the fields we need are set.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT;
    let fd = open(&rel, rootfd.as_raw_fd(), Some(&how))?;
    std::fs::File::from(fd).metadata()
}

/// The child's ends of its standard streams.
pub enum ChildEnds {
    /// stdin, stdout, stderr.
    Pipes([OwnedFd; 3]),
    /// The terminal's slave side.
    Terminal(OwnedFd),
}

/// The agent's ends (non-blocking, close-on-exec).
pub enum ParentEnds {
    Pipes {
        stdin: Option<OwnedFd>,
        stdout: Option<OwnedFd>,
        stderr: Option<OwnedFd>,
    },
    Terminal {
        master: OwnedFd,
    },
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), AgentError> {
    // SAFETY: fcntl on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io_err("fcntl(F_GETFL)", std::io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io_err("fcntl(F_SETFL)", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `(read end, write end)`, both close-on-exec.
fn pipe() -> Result<(OwnedFd, OwnedFd), AgentError> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass, which has room for two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io_err("pipe2", std::io::Error::last_os_error()));
    }
    // SAFETY: pipe2 succeeded, so this is a fresh descriptor that nothing else owns.
    let r = unsafe { OwnedFd::from_raw_fd(fds[0]) };
    // SAFETY: as above.
    let w = unsafe { OwnedFd::from_raw_fd(fds[1]) };
    Ok((r, w))
}

/// Output pipes get 1 MiB (the default maximum for unprivileged users) instead of 64 KiB: fewer
/// wake-ups per byte when a process writes a lot. Best effort.
const OUTPUT_PIPE_SIZE: libc::c_int = 1 << 20;

fn grow_pipe(fd: &OwnedFd) {
    // SAFETY: fcntl on a descriptor we own, with an integer argument.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, OUTPUT_PIPE_SIZE) };
}

fn open_cloexec(path: &str, flags: libc::c_int) -> Result<OwnedFd, AgentError> {
    let c = CString::new(path).map_err(|_| invalid(format!("{path:?}")))?;
    // SAFETY: `c` is a NUL-terminated path that lives across the call.
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io_err(
            &format!("open {path}"),
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: open succeeded; the descriptor is ours alone.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the pipes, /dev/null or the terminal the request asks for.
pub fn open_stdio(spec: &StdioSpec) -> Result<(ChildEnds, ParentEnds), AgentError> {
    match *spec {
        StdioSpec::Pipes {
            stdin,
            stdout,
            stderr,
        } => {
            let null = || open_cloexec("/dev/null", libc::O_RDWR);
            let (child_in, parent_in) = match stdin {
                Redirect::Null => (null()?, None),
                Redirect::Pipe => {
                    let (r, w) = pipe()?;
                    set_nonblocking(&w)?;
                    (r, Some(w))
                }
            };
            let out = |r: Redirect| -> Result<(OwnedFd, Option<OwnedFd>), AgentError> {
                match r {
                    Redirect::Null => Ok((null()?, None)),
                    Redirect::Pipe => {
                        let (r, w) = pipe()?;
                        set_nonblocking(&r)?;
                        grow_pipe(&r);
                        Ok((w, Some(r)))
                    }
                }
            };
            let (child_out, parent_out) = out(stdout)?;
            let (child_err, parent_err) = out(stderr)?;
            Ok((
                ChildEnds::Pipes([child_in, child_out, child_err]),
                ParentEnds::Pipes {
                    stdin: parent_in,
                    stdout: parent_out,
                    stderr: parent_err,
                },
            ))
        }
        StdioSpec::Terminal { rows, cols } => {
            let master = open_cloexec("/dev/ptmx", libc::O_RDWR | libc::O_NOCTTY)?;
            let mut unlock: libc::c_int = 0;
            // SAFETY: TIOCSPTLCK reads one int from the pointer, which points at `unlock`.
            if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &mut unlock) } < 0 {
                return Err(io_err("unlockpt", std::io::Error::last_os_error()));
            }
            // TIOCGPTPEER opens the slave through the master: no path lookup, no race.
            // SAFETY: the ioctl takes open flags by value and returns a new descriptor.
            let slave = unsafe {
                libc::ioctl(
                    master.as_raw_fd(),
                    libc::TIOCGPTPEER,
                    libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
                )
            };
            if slave < 0 {
                return Err(io_err(
                    "open terminal slave (TIOCGPTPEER)",
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: the ioctl returned a fresh descriptor that nothing else owns.
            let slave = unsafe { OwnedFd::from_raw_fd(slave) };
            set_winsize(&master, rows, cols)?;
            set_nonblocking(&master)?;
            Ok((ChildEnds::Terminal(slave), ParentEnds::Terminal { master }))
        }
    }
}

/// Sets a terminal's size (the kernel sends SIGWINCH to its foreground process group).
pub fn set_winsize(fd: &impl AsRawFd, rows: u16, cols: u16) -> Result<(), AgentError> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer, which points at `ws`.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io_err(
            "set terminal size (TIOCSWINSZ)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Forks and execs; returns the child's pid. The caller must hold the process-table lock so
/// the reaper cannot dispatch the child's exit before it is registered.
pub fn fork_exec(p: &Prepared, ends: &ChildEnds) -> Result<libc::pid_t, AgentError> {
    // Pointer arrays are built here, right before fork, so the child allocates nothing.
    let mut argv: Vec<*const libc::c_char> = p.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = p.env.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let stdio: [RawFd; 3] = match ends {
        ChildEnds::Pipes(fds) => [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()],
        ChildEnds::Terminal(s) => [s.as_raw_fd(); 3],
    };
    let terminal = matches!(ends, ChildEnds::Terminal(_));

    // Block every signal around fork: a signal that reached the child before it reset its
    // dispositions would run the agent's handler there and be lost to the program. Blocked, it
    // stays pending until the child unblocks with default dispositions.
    // SAFETY: sigset_t is plain data; all-zero is a valid value to initialise it from.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `all` is a valid sigset_t we own.
    unsafe { libc::sigfillset(&mut all) };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: both sets are valid; this changes only the calling thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    // SAFETY: fork has no memory-safety preconditions; in the child we only run `child`, which
    // makes async-signal-safe calls on memory prepared before the fork and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: we are the freshly forked child; see `child`.
        unsafe { child(p, &argv, &envp, stdio, terminal) }
    }
    let fork_err = std::io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(io_err("fork", fork_err));
    }
    Ok(pid)
}

/// Human text for the errno values exec and its set-up produce (no allocation: strerror is not
/// async-signal-safe).
fn errno_text(e: libc::c_int) -> &'static [u8] {
    match e {
        libc::ENOENT => b"No such file or directory",
        libc::EACCES => b"Permission denied",
        libc::ENOEXEC => b"Exec format error",
        libc::ENOTDIR => b"Not a directory",
        libc::EISDIR => b"Is a directory",
        libc::ELOOP => b"Too many levels of symbolic links",
        libc::ENAMETOOLONG => b"File name too long",
        libc::E2BIG => b"Argument list too long",
        libc::ENOMEM => b"Cannot allocate memory",
        libc::ETXTBSY => b"Text file busy",
        libc::EPERM => b"Operation not permitted",
        libc::EINVAL => b"Invalid argument",
        libc::EIO => b"Input/output error",
        libc::ELIBBAD => b"Accessing a corrupted shared library",
        _ => b"error",
    }
}

/// Writes `prefix step: text (errno N)\n` to fd 2 and exits with `code`.
///
/// # Safety
/// Only to be called in the forked child.
unsafe fn die(prefix: &[u8], step: &[u8], errno: libc::c_int, code: libc::c_int) -> ! {
    let mut num = [0u8; 12];
    let mut i = num.len();
    let mut n = errno.unsigned_abs();
    loop {
        i -= 1;
        num[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    let parts: [&[u8]; 6] = [
        prefix,
        step,
        errno_text(errno),
        b" (errno ",
        &num[i..],
        b")\n",
    ];
    for part in parts {
        // SAFETY: write(2) is async-signal-safe; the slice is valid for its length. A failed
        // write has nowhere to be reported.
        unsafe { libc::write(2, part.as_ptr().cast(), part.len()) };
    }
    // SAFETY: _exit is async-signal-safe and ends the child without running atexit handlers.
    unsafe { libc::_exit(code) }
}

fn errno() -> libc::c_int {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The child side of [`fork_exec`].
///
/// # Safety
/// Must only run in a freshly forked child of the agent. Every call below is an
/// async-signal-safe system call wrapper, made on descriptors and memory the parent prepared
/// before fork.
unsafe fn child(
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    stdio: [RawFd; 3],
    terminal: bool,
) -> ! {
    let pre = &p.err_prefix[..];
    // Signals (all blocked since before fork): the agent's handlers and ignored signals (Rust
    // ignores SIGPIPE) must not leak into the program. Reset every disposition, then unblock
    // everything; signals sent meanwhile are delivered now, with default dispositions.
    for sig in 1..=libc::SIGRTMAX() {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            // SAFETY: setting a default disposition; async-signal-safe.
            unsafe { libc::signal(sig, libc::SIG_DFL) };
        }
    }
    // SAFETY: sigset_t is plain data; all-zero is a valid value to initialise it from.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t we own.
    unsafe { libc::sigemptyset(&mut set) };
    // SAFETY: `set` is valid; the old mask is not requested (null).
    unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    // Own session and process group: group signals, and a terminal can become ours.
    // SAFETY: no arguments; async-signal-safe.
    if unsafe { libc::setsid() } < 0 {
        // SAFETY: we are the forked child.
        unsafe { die(pre, b"setsid: ", errno(), 126) };
    }
    // SAFETY: TIOCSCTTY takes an int argument by value; stdio[0] is the terminal's slave.
    if terminal && unsafe { libc::ioctl(stdio[0], libc::TIOCSCTTY, 0) } < 0 {
        // SAFETY: we are the forked child.
        unsafe { die(pre, b"set controlling terminal: ", errno(), 126) };
    }
    for (target, fd) in stdio.into_iter().enumerate() {
        let target = target as RawFd;
        if fd == target {
            // dup2 onto itself would keep close-on-exec set.
            // SAFETY: fcntl on a descriptor the parent opened for us.
            unsafe { libc::fcntl(fd, libc::F_SETFD, 0) };
        // SAFETY: dup2 between descriptors the parent opened for us.
        } else if unsafe { libc::dup2(fd, target) } < 0 {
            // SAFETY: we are the forked child.
            unsafe { die(pre, b"dup2: ", errno(), 126) };
        }
    }
    // Nothing else of the agent's reaches the program (descriptors are close-on-exec anyway;
    // this also covers any a library opened without the flag). Failure (old kernel) is harmless.
    // SAFETY: close_range takes plain integers.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if let Some(root) = &p.root {
        // Before dropping privileges: chroot needs CAP_SYS_CHROOT.
        // SAFETY: `root` is a NUL-terminated string prepared before fork.
        if unsafe { libc::chroot(root.as_ptr()) } < 0 {
            let e = errno();
            let code = if e == libc::ENOENT { 127 } else { 126 };
            // SAFETY: we are the forked child.
            unsafe { die(pre, b"chroot: ", e, code) };
        }
        // SAFETY: a static NUL-terminated path.
        if unsafe { libc::chdir(c"/".as_ptr()) } < 0 {
            // SAFETY: we are the forked child.
            unsafe { die(pre, b"chdir to the new root: ", errno(), 126) };
        }
    }
    if let Some((uid, gid, groups)) = &p.user {
        // SAFETY: the pointer and length describe the `groups` vector prepared before fork.
        if unsafe { libc::setgroups(groups.len(), groups.as_ptr()) } < 0 {
            // SAFETY: we are the forked child.
            unsafe { die(pre, b"setgroups: ", errno(), 126) };
        }
        // SAFETY: plain integer argument.
        if unsafe { libc::setgid(*gid) } < 0 {
            // SAFETY: we are the forked child.
            unsafe { die(pre, b"setgid: ", errno(), 126) };
        }
        // SAFETY: plain integer argument.
        if unsafe { libc::setuid(*uid) } < 0 {
            // SAFETY: we are the forked child.
            unsafe { die(pre, b"setuid: ", errno(), 126) };
        }
    }
    // SAFETY: `cwd` is a NUL-terminated string prepared before fork.
    if unsafe { libc::chdir(p.cwd.as_ptr()) } < 0 {
        let e = errno();
        let code = if e == libc::ENOENT { 127 } else { 126 };
        // SAFETY: we are the forked child.
        unsafe { die(pre, b"chdir: ", e, code) };
    }
    // Like execvp: a name not found in one PATH entry is tried in the next; a file found but
    // not executable is remembered (126) unless a later entry works.
    let mut found_unexecutable = false;
    let mut last = libc::ENOENT;
    for cand in &p.candidates {
        // SAFETY: NUL-terminated path; argv and envp are null-terminated arrays of pointers to
        // NUL-terminated strings, all prepared before fork and alive here.
        unsafe { libc::execve(cand.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
        match errno() {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => found_unexecutable = true,
            e => {
                last = e;
                break;
            }
        }
    }
    let e = if last != libc::ENOENT {
        last
    } else if found_unexecutable {
        libc::EACCES
    } else {
        libc::ENOENT
    };
    let code = if e == libc::ENOENT { 127 } else { 126 };
    // SAFETY: we are the forked child.
    unsafe { die(pre, b"", e, code) }
}
