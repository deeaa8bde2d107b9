//! The pid-file process ("monitor"): a host process that stands for one container process (the
//! container's init, or an exec'd process) as runc's container process does, so that whatever
//! drives runc (containerd-shim-runc-v2, and so docker) can drive hull:
//!
//! * it lives exactly as long as the container process: it `wait`s on it through the agent
//!   and then exits with its status (the code, or 128 + the signal that killed it; 137 when the
//!   process can no longer be waited for because the VM or the container is gone);
//! * it forwards every catchable signal it receives to that process (the init through
//!   `kill_container`, an exec'd process through `signal`), except SIGCHLD and SIGWINCH
//!   (a terminal's resize, which it applies to the guest terminal);
//! * it carries the process's stdio: with pipes, its own fd 0 to the stdin stream (end of
//!   file closes the container's stdin) and the stdout/stderr streams to its fds 1 and 2. With a
//!   terminal and `--console-socket PATH`, it opens a host pty, sends the master to PATH (runc's
//!   protocol: one message whose payload is the pty's name and whose SCM_RIGHTS data is the
//!   master), makes the slave its controlling terminal and bridges the slave with the guest
//!   terminal, forwarding resizes; its own fds 0/1/2 then point at /dev/null, so that a caller
//!   capturing `hull create`/`hull exec`'s output is not held up. With a terminal and no console socket (foreground `run` and
//!   `exec -t`), it bridges its own fds 0/1 (in raw mode if fd 0 is a terminal).
//!
//! # How it is started, and readiness
//!
//! [`spawn`] re-executes the running `hull` as
//! `hull [--root R --log L --log-format F --debug] __monitor --sandbox S --container C
//! --process N [--exec] [--terminal] [--console-socket P]`, in a new session (`setsid`: never
//! the caller's controlling terminal), with fds 0/1/2 inherited and the write end of a pipe as
//! fd 3 ([`READY_FD`]). The monitor attaches the process's streams (so no output is lost) and
//! then writes one zero byte to fd 3 and closes it: ready. If it cannot, it writes its error
//! message (never starting with a zero byte) instead and exits 1. [`spawn`] reads fd 3 to its
//! end: a zero byte is success (it returns the monitor's pid), a message is the error, and
//! nothing at all means the monitor died (its exit status is reported).
//!
//! [`prespawn`] starts the monitor before its process exists (`hull create` starts it while the
//! VM and the container are made, so that starting a process on the host costs nothing on the
//! way to the first line): `--process-on-fd` instead of `--process N`, and the read end of a
//! second pipe as fd 4 ([`PROCESS_FD`]). The monitor blocks its signals, then reads fd 4 to its
//! end: the process's number in decimal ([`Pending::go`]), after which it goes on as above; end
//! of file with nothing (the create failed and dropped the [`Pending`]) makes it exit 1 at once,
//! having touched nothing.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use hull_runtime::agent::protocol::ProcessId;
use hull_runtime::agent::{AgentClient, Endpoint};
use hull_runtime::process::{ContainerProcess, Want};
use hull_runtime::sandbox::Sandbox;

/// The fd the monitor reports readiness on.
pub const READY_FD: RawFd = 3;
/// The fd a prespawned monitor reads its process's number from.
pub const PROCESS_FD: RawFd = 4;
/// Most bytes of that number (a u64 in decimal).
const PROCESS_NUMBER_MAX: usize = 20;
/// How long the output of an ended process is still copied, at most (as the shim's).
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// The hidden subcommand's name.
pub const SUBCOMMAND: &str = "__monitor";

/// The hidden `__monitor` subcommand's flags.
#[derive(clap::Args, Debug, Clone)]
pub struct MonitorArgs {
    /// The sandbox (its directory under --root).
    #[arg(long)]
    pub sandbox: String,
    /// The container's id in the guest.
    #[arg(long)]
    pub container: String,
    /// The agent's handle of the process.
    #[arg(long, required_unless_present = "process_on_fd")]
    pub process: Option<u64>,
    /// The handle comes on fd 4 once the process exists ([`prespawn`]).
    #[arg(long, conflicts_with = "process")]
    pub process_on_fd: bool,
    /// The process is an exec'd process (signals go to it), not the container's init.
    #[arg(long)]
    pub exec: bool,
    /// The process has a terminal.
    #[arg(long)]
    pub terminal: bool,
    /// Send the master of a new pty there (with --terminal).
    #[arg(long)]
    pub console_socket: Option<PathBuf>,
    /// Reach the agent on this plain Unix socket (`hull-agent --listen unix:PATH`, host mode:
    /// for tests) instead of the sandbox's VM.
    #[arg(long)]
    pub agent_socket: Option<PathBuf>,
}

impl MonitorArgs {
    /// The monitor's arguments after the subcommand.
    fn to_args(&self) -> Vec<String> {
        let mut v = vec![
            SUBCOMMAND.to_string(),
            "--sandbox".into(),
            self.sandbox.clone(),
            "--container".into(),
            self.container.clone(),
        ];
        match self.process {
            Some(p) => v.extend(["--process".into(), p.to_string()]),
            None => v.push("--process-on-fd".into()),
        }
        if self.exec {
            v.push("--exec".into());
        }
        if self.terminal {
            v.push("--terminal".into());
        }
        if let Some(p) = &self.console_socket {
            v.push("--console-socket".into());
            v.push(p.display().to_string());
        }
        if let Some(p) = &self.agent_socket {
            v.push("--agent-socket".into());
            v.push(p.display().to_string());
        }
        v
    }
}

/// The global flags a monitor is started with (so that it logs where its command logs).
#[derive(Debug, Clone, Default)]
pub struct Globals {
    pub root: PathBuf,
    pub log: Option<PathBuf>,
    pub log_format: Option<String>,
    pub debug: bool,
}

impl Globals {
    fn to_args(&self) -> Vec<String> {
        let mut v = vec!["--root".to_string(), self.root.display().to_string()];
        if let Some(l) = &self.log {
            v.push("--log".into());
            v.push(l.display().to_string());
        }
        if let Some(f) = &self.log_format {
            v.push("--log-format".into());
            v.push(f.clone());
        }
        if self.debug {
            v.push("--debug".into());
        }
        v
    }
}

/// A started monitor.
#[derive(Debug)]
pub struct Started {
    pub pid: u32,
    pub child: std::process::Child,
}

/// Starts a monitor for `args` and waits until it is ready (see the module docs).
pub fn spawn(globals: &Globals, args: &MonitorArgs) -> anyhow::Result<Started> {
    let (child, ready_r) = start(globals, args, None)?;
    await_ready(child, ready_r)
}

/// A monitor started before its process exists (see the module docs): [`Pending::go`] gives it
/// the process; dropped instead, it ends the monitor.
#[derive(Debug)]
pub struct Pending {
    child: Option<std::process::Child>,
    ready_r: Option<OwnedFd>,
    process_w: Option<OwnedFd>,
}

/// Starts a monitor for `args` (whose `process` is `None`) that waits for its process's number.
pub fn prespawn(globals: &Globals, args: &MonitorArgs) -> anyhow::Result<Pending> {
    let (process_r, process_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("cannot create the monitor's process pipe")?;
    let mut args = args.clone();
    args.process = None;
    let (child, ready_r) = start(globals, &args, Some(process_r))?;
    Ok(Pending {
        child: Some(child),
        ready_r: Some(ready_r),
        process_w: Some(process_w),
    })
}

impl Pending {
    /// Gives the monitor its process and waits until it is ready, as [`spawn`] does.
    pub fn go(mut self, process: u64) -> anyhow::Result<Started> {
        let (Some(child), Some(ready_r), Some(w)) = (
            self.child.take(),
            self.ready_r.take(),
            self.process_w.take(),
        ) else {
            bail!("the monitor was already given its process");
        };
        let sent = std::fs::File::from(w).write_all(process.to_string().as_bytes());
        // Whatever the write did, the pipe is closed now: the monitor reads to its end.
        if let Err(e) = sent {
            tracing::debug!("the monitor's process pipe: {e}");
        }
        await_ready(child, ready_r)
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Closing the pipe first ends the monitor on its own; kill it anyway, then reap it.
        self.process_w.take();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Starts `hull __monitor` with the readiness pipe's write end as fd 3 and, for a prespawned
/// monitor, `process_r` as fd 4. Returns the child and the readiness pipe's read end.
fn start(
    globals: &Globals,
    args: &MonitorArgs,
    process_r: Option<OwnedFd>,
) -> anyhow::Result<(std::process::Child, OwnedFd)> {
    use std::os::unix::process::CommandExt;

    let exe = std::env::current_exe().context("cannot find the hull executable")?;
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .context("cannot create the monitor's readiness pipe")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(globals.to_args()).args(args.to_args());
    let w = ready_w.as_raw_fd();
    let p = process_r.as_ref().map(|f| f.as_raw_fd());
    let pre_exec = move || {
        // SAFETY: setsid takes no arguments and is async-signal-safe.
        if unsafe { libc::setsid() } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Each end is first copied above fd 9, so that placing one cannot overwrite the other
        // (a pipe's end may itself be fd 3 or 4); the copies close at exec. Fixed arrays:
        // nothing here allocates.
        let pairs: [(RawFd, RawFd); 2] = [(w, READY_FD), (p.unwrap_or(-1), PROCESS_FD)];
        let mut copies: [RawFd; 2] = [-1; 2];
        for (copy, &(fd, _)) in copies.iter_mut().zip(&pairs) {
            if fd < 0 {
                continue;
            }
            // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an integer fd; async-signal-safe.
            *copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10) };
            if *copy < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        for (&copy, &(_, target)) in copies.iter().zip(&pairs) {
            if copy < 0 {
                continue;
            }
            // dup2 clears close-on-exec on the target.
            // SAFETY: dup2 on integer fds; async-signal-safe.
            if unsafe { libc::dup2(copy, target) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure runs in the child between fork and exec; it allocates nothing, takes
    // no lock and only makes async-signal-safe system calls (setsid, fcntl, dup2) on plain
    // integers.
    unsafe { cmd.pre_exec(pre_exec) };
    let child = cmd.spawn().context("cannot start the monitor process")?;
    drop(ready_w);
    drop(process_r);
    Ok((child, ready_r))
}

/// Reads the readiness pipe to its end (see the module docs).
fn await_ready(mut child: std::process::Child, ready_r: OwnedFd) -> anyhow::Result<Started> {
    let mut reply = Vec::new();
    let read = std::fs::File::from(ready_r).read_to_end(&mut reply);
    let pid = child.id();
    match (read, reply.first()) {
        (_, Some(0)) => Ok(Started { pid, child }),
        (_, Some(_)) => {
            let _ = child.wait();
            bail!("{}", String::from_utf8_lossy(&reply).trim_end())
        }
        (r, None) => {
            let status = child.wait();
            let why = match (r, status) {
                (Err(e), _) => format!("its readiness pipe failed: {e}"),
                (_, Ok(s)) => format!("it exited ({s})"),
                (_, Err(e)) => format!("{e}"),
            };
            bail!("the monitor process failed before it was ready: {why}")
        }
    }
}

/// Sends a readiness report once.
struct Ready(Option<std::fs::File>);

impl Ready {
    fn take() -> anyhow::Result<Ready> {
        // SAFETY: F_GETFD only queries the descriptor table.
        if unsafe { libc::fcntl(READY_FD, libc::F_GETFD) } < 0 {
            bail!("fd {READY_FD} (the readiness pipe) is not open: the monitor is started by hull");
        }
        // SAFETY: fd 3 is open (checked above) and was given to this process for it alone;
        // nothing else in this process uses it.
        let fd = unsafe { OwnedFd::from_raw_fd(READY_FD) };
        let _ = nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
        Ok(Ready(Some(fd.into())))
    }

    fn ok(&mut self) {
        if let Some(mut f) = self.0.take() {
            let _ = f.write_all(&[0]);
        }
    }

    fn fail(&mut self, e: &anyhow::Error) {
        if let Some(mut f) = self.0.take() {
            let msg = format!("{e:#}");
            let msg = if msg.is_empty() { "failed".into() } else { msg };
            let _ = f.write_all(msg.trim_start_matches('\0').as_bytes());
        }
    }
}

/// The `__monitor` subcommand.
pub fn main(root: &Path, args: &MonitorArgs) -> ExitCode {
    let mut ready = match Ready::take() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hull: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // A prespawned monitor's process pipe is claimed before anything else opens an fd (fd 4
    // is then what hull gave it, or nothing).
    let process_pipe = if args.process.is_none() {
        match claim_process_pipe() {
            Ok(f) => Some(f),
            Err(e) => {
                ready.fail(&e);
                return ExitCode::FAILURE;
            }
        }
    } else {
        None
    };
    let _ = std::env::set_current_dir("/");
    // Signals are blocked (in this, the only thread so far, so in every thread the runtime
    // starts) and read from a signalfd.
    let signals = match Signals::block_and_open(&forwarded_signals()) {
        Ok(s) => s,
        Err(e) => {
            ready.fail(&e);
            return ExitCode::FAILURE;
        }
    };
    // A prespawned monitor learns its process now (signals that come meanwhile wait in the
    // signalfd). Nothing on the pipe: the create it was started for failed.
    let mut args = args.clone();
    if let Some(pipe) = process_pipe {
        match read_process_number(pipe) {
            Ok(Some(p)) => args.process = Some(p),
            Ok(None) => return ExitCode::FAILURE,
            Err(e) => {
                ready.fail(&e);
                return ExitCode::FAILURE;
            }
        }
    }
    let args = &args;
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            ready.fail(&anyhow!("cannot start the async runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(monitor(root, args, signals, &mut ready));
    match code {
        Ok(c) => {
            // The stdin copy may still block on a read: do not wait for it.
            std::process::exit(i32::from(c));
        }
        Err(e) => {
            tracing::error!(
                "monitor of container {} process {:?}: {e:#}",
                args.container,
                args.process
            );
            ready.fail(&e);
            ExitCode::FAILURE
        }
    }
}

/// Takes fd 4 ([`PROCESS_FD`]), which must be a pipe.
fn claim_process_pipe() -> anyhow::Result<std::fs::File> {
    // SAFETY: F_GETFD only queries the descriptor table.
    if unsafe { libc::fcntl(PROCESS_FD, libc::F_GETFD) } < 0 {
        bail!("fd {PROCESS_FD} (the process pipe) is not open: the monitor is started by hull");
    }
    // SAFETY: fd 4 is open (checked above); this runs before the monitor opens any fd of its
    // own besides fd 3's claim, so fd 4 is what the monitor was started with, and nothing
    // else in this process uses it.
    let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(PROCESS_FD) });
    let _ = nix::fcntl::fcntl(
        f.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    use std::os::unix::fs::FileTypeExt;
    let is_pipe = f.metadata().is_ok_and(|m| m.file_type().is_fifo());
    if !is_pipe {
        bail!("fd {PROCESS_FD} (the process pipe) is not a pipe: the monitor is started by hull");
    }
    Ok(f)
}

/// Reads the process pipe to its end: the process's number, or `None` if nothing came.
fn read_process_number(f: std::fs::File) -> anyhow::Result<Option<u64>> {
    let mut text = String::new();
    f.take(PROCESS_NUMBER_MAX as u64 + 1)
        .read_to_string(&mut text)
        .context("the process pipe")?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| anyhow!("the process pipe gave {text:?}, not a process number"))
}

/// The signals a monitor handles: every catchable standard and real-time signal but SIGPIPE
/// (ignored, so that writing to a closed pipe is an error, not a signal) and the synchronous
/// fault signals.
pub fn forwarded_signals() -> Vec<i32> {
    let skip = [
        libc::SIGKILL,
        libc::SIGSTOP,
        libc::SIGPIPE,
        libc::SIGSEGV,
        libc::SIGBUS,
        libc::SIGILL,
        libc::SIGFPE,
        libc::SIGTRAP,
        libc::SIGSYS,
    ];
    (1..=crate::signal::SIGRTMAX)
        .filter(|s| !skip.contains(s) && !(32..crate::signal::SIGRTMIN).contains(s))
        .collect()
}

/// Signals blocked in this thread and readable from a signalfd.
pub struct Signals {
    fd: OwnedFd,
}

impl Signals {
    /// Blocks `sigs` in the calling thread and opens a non-blocking signalfd for them.
    pub fn block_and_open(sigs: &[i32]) -> anyhow::Result<Signals> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t owned by this frame.
        unsafe { libc::sigemptyset(&mut set) };
        for &s in sigs {
            // SAFETY: as above; an invalid signal number only makes sigaddset fail.
            unsafe { libc::sigaddset(&mut set, s) };
        }
        // SAFETY: `set` is initialised; the old mask is not asked for.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            bail!(
                "cannot block signals: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor, which is owned below.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            bail!(
                "cannot open a signalfd: {}",
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: signalfd returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Signals { fd })
    }

    /// The next pending signal, if any (non-blocking).
    pub fn next(&self) -> std::io::Result<Option<i32>> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`, which is that big.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        if n as usize != size {
            return Err(std::io::Error::other("short read from the signalfd"));
        }
        Ok(Some(info.ssi_signo as i32))
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

async fn forward(agent: &AgentClient, process: &ContainerProcess, signal: i32) {
    let r = process.signal(agent, signal).await;
    match r {
        Ok(()) => tracing::debug!("forwarded {}", crate::signal::signal_name(signal)),
        Err(e) => tracing::warn!(
            "cannot forward {} to the container: {e}",
            crate::signal::signal_name(signal)
        ),
    }
}

/// The terminal whose size is the guest terminal's.
struct HostTerminal {
    fd: OwnedFd,
    /// Its settings before raw mode, restored on drop.
    saved: Option<nix::sys::termios::Termios>,
}

impl Drop for HostTerminal {
    fn drop(&mut self) {
        if let Some(t) = &self.saved {
            let _ = nix::sys::termios::tcsetattr(&self.fd, nix::sys::termios::SetArg::TCSANOW, t);
        }
    }
}

/// Puts a terminal in raw mode (bytes pass unchanged: the guest's terminal does the line
/// discipline); returns the settings before.
pub fn make_raw(fd: BorrowedFd<'_>) -> nix::Result<nix::sys::termios::Termios> {
    use nix::sys::termios;
    let saved = termios::tcgetattr(fd)?;
    let mut raw = saved.clone();
    termios::cfmakeraw(&mut raw);
    termios::tcsetattr(fd, termios::SetArg::TCSANOW, &raw)?;
    Ok(saved)
}

/// What the agent sets up for a new process: pipes, or a terminal whose size is the caller's
/// own terminal's when the process runs in the foreground (no console socket), else the
/// process's `consoleSize`, else 24x80 ([`hull_runtime::process::terminal_size`]).
pub fn stdio_spec(
    terminal: bool,
    console_socket: bool,
    process: Option<&oci_spec::runtime::Process>,
) -> hull_runtime::agent::protocol::StdioSpec {
    use hull_runtime::agent::protocol::{Redirect, StdioSpec};
    if !terminal {
        return StdioSpec::Pipes {
            stdin: Redirect::Pipe,
            stdout: Redirect::Pipe,
            stderr: Redirect::Pipe,
        };
    }
    let host = if console_socket {
        None
    } else {
        window_size(std::io::stdin().as_fd())
    };
    let (rows, cols) = hull_runtime::process::terminal_size(host, process);
    StdioSpec::Terminal { rows, cols }
}

/// A terminal's size (rows, cols), if it has one.
pub fn window_size(fd: BorrowedFd<'_>) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize to the pointer, which points at `ws`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// A new host pty: (master, slave, the slave's path).
pub fn open_pty() -> anyhow::Result<(OwnedFd, OwnedFd, PathBuf)> {
    let pty = nix::pty::openpty(None, None).context("cannot open a pty")?;
    let name = nix::unistd::ttyname(&pty.slave).context("cannot name the pty")?;
    Ok((pty.master, pty.slave, name))
}

/// runc's console socket protocol: connects to the Unix socket at `path` and sends one message
/// whose payload is `name` and whose SCM_RIGHTS data is `master`.
pub fn send_console(path: &Path, master: BorrowedFd<'_>, name: &str) -> anyhow::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let sock = UnixStream::connect(path)
        .with_context(|| format!("cannot connect to the console socket {}", path.display()))?;
    let fds = [master.as_raw_fd()];
    let iov = [std::io::IoSlice::new(name.as_bytes())];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .with_context(|| {
        format!(
            "cannot send the pty to the console socket {}",
            path.display()
        )
    })?;
    Ok(())
}

/// Copies `from` to `to` until `from` ends; returns the bytes read. If `to` fails (its reader
/// went away), the rest is read and discarded, so that the container never blocks on a
/// stream nobody drains. A terminal's EIO (its other side closed) is an end.
pub fn copy_out(mut from: impl Read, mut to: impl Write) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    let mut sink_ok = true;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(total),
            Err(e) => return Err(e),
        };
        total += n as u64;
        if sink_ok {
            if let Err(e) = to.write_all(&buf[..n]).and_then(|()| to.flush()) {
                tracing::debug!("output stopped ({e}); discarding the rest");
                sink_ok = false;
            }
        }
    }
}

/// Copies `from` to `to` until `from` ends; returns the bytes copied, which the caller gives
/// the agent with [`ContainerProcess::input_ended`]. Stops early if `to` fails (the process's
/// stdin is gone).
pub fn copy_in<R: Read, W: Write>(mut from: R, mut to: W) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.raw_os_error() == Some(libc::EIO) => break,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
    Ok(total)
}

/// Points fds 0, 1 and 2 at /dev/null.
fn release_stdio() -> anyhow::Result<()> {
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("cannot open /dev/null")?;
    for fd in 0..=2 {
        // SAFETY: dup2 onto a standard fd; the descriptor it closes is not owned by any Rust
        // object in this process (std's handles for 0/1/2 only borrow them).
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            bail!(
                "cannot redirect fd {fd}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// A std stream from an attached tokio stream (blocking, for a copy thread).
fn blocking(s: tokio::net::UnixStream) -> anyhow::Result<UnixStream> {
    let s = s
        .into_std()
        .context("cannot take a stream out of the runtime")?;
    s.set_nonblocking(false)?;
    Ok(s)
}

fn dup_std(fd: BorrowedFd<'_>) -> anyhow::Result<std::fs::File> {
    Ok(fd
        .try_clone_to_owned()
        .context("cannot duplicate a standard fd")?
        .into())
}

async fn monitor(
    root: &Path,
    args: &MonitorArgs,
    signals: Signals,
    ready: &mut Ready,
) -> anyhow::Result<u8> {
    let id = ProcessId(
        args.process
            .context("the monitor has no process (neither --process nor its fd)")?,
    );
    let process = if args.exec {
        ContainerProcess::exec(&args.container, id, args.terminal)
    } else {
        ContainerProcess::init(&args.container, id, args.terminal)
    };
    // The agent's endpoint without the sandbox's lock: this process lives as long as the
    // container process, and every other command on the sandbox takes the lock.
    let endpoint = match &args.agent_socket {
        Some(p) => Endpoint::unix(p),
        None => Sandbox::agent_endpoint(root, &args.sandbox)?,
    };
    let agent = AgentClient::connect(endpoint, Duration::from_secs(30))
        .await
        .with_context(|| format!("cannot reach the guest agent of sandbox {}", args.sandbox))?;
    // Every stream is attached before readiness is reported (and before `wait`).
    let streams = process.attach(&agent, Want::ALL).await?;
    let stdout = blocking(streams.stdout.context("no stdout stream")?)?;
    let input = blocking(streams.stdin.context("no stdin stream")?)?;
    let mut outputs = Vec::new();
    // Kept open for the process's life: for a terminal, the end of its input is not a reason
    // to hang up the guest terminal.
    let mut keep = Vec::new();
    let mut terminal: Option<HostTerminal> = None;
    // Where the stdin copy reports the bytes it copied, once its source ended.
    let (sent_tx, sent_rx) = tokio::sync::oneshot::channel::<Option<u64>>();
    if args.terminal {
        keep.push(input.try_clone()?);
        let (term_in, term_out): (std::fs::File, std::fs::File) = match &args.console_socket {
            Some(path) => {
                let (master, slave, name) = open_pty()?;
                // Already a session leader (spawn's setsid); then the slave becomes the
                // controlling terminal, so resizes of the master reach this process.
                let _ = nix::unistd::setsid();
                // SAFETY: TIOCSCTTY takes an integer argument (0: do not steal).
                let rc = unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) };
                if rc != 0 {
                    tracing::warn!(
                        "cannot make the pty the monitor's controlling terminal: {}",
                        std::io::Error::last_os_error()
                    );
                }
                // The slave is this process's alone: its old settings need no restoring.
                make_raw(slave.as_fd()).context("cannot set up the pty")?;
                send_console(path, master.as_fd(), &name.display().to_string())?;
                drop(master);
                // The pty carries the stdio: let go of the caller's fds 0/1/2, which a caller
                // that captures `hull create`'s or `hull exec`'s output (go-runc does, with a
                // console socket) reads until every copy is closed.
                release_stdio()?;
                let t_in = dup_std(slave.as_fd())?;
                let t_out = dup_std(slave.as_fd())?;
                terminal = Some(HostTerminal {
                    fd: slave,
                    saved: None,
                });
                (t_in, t_out)
            }
            None => {
                let stdin = std::io::stdin();
                let stdout = std::io::stdout();
                let fd = if nix::unistd::isatty(stdin.as_raw_fd()).unwrap_or(false) {
                    Some(stdin.as_fd())
                } else if nix::unistd::isatty(stdout.as_raw_fd()).unwrap_or(false) {
                    Some(stdout.as_fd())
                } else {
                    None
                };
                if let Some(fd) = fd {
                    let saved = if fd.as_raw_fd() == 0 {
                        make_raw(fd).ok()
                    } else {
                        None
                    };
                    terminal = Some(HostTerminal {
                        fd: fd.try_clone_to_owned()?,
                        saved,
                    });
                }
                (dup_std(stdin.as_fd())?, dup_std(stdout.as_fd())?)
            }
        };
        if let Some((rows, cols)) = terminal.as_ref().and_then(|t| window_size(t.fd.as_fd())) {
            if let Err(e) = process.resize(&agent, rows, cols).await {
                tracing::warn!("cannot set the terminal size: {e}");
            }
        }
        outputs.push(std::thread::spawn(move || copy_out(stdout, term_out)));
        std::thread::spawn(move || {
            let r = copy_in(term_in, input);
            let _ = sent_tx.send(r.ok());
        });
    } else {
        let stderr = blocking(streams.stderr.context("no stderr stream")?)?;
        let (fd1, fd2) = (
            dup_std(std::io::stdout().as_fd())?,
            dup_std(std::io::stderr().as_fd())?,
        );
        let fd0 = dup_std(std::io::stdin().as_fd())?;
        outputs.push(std::thread::spawn(move || copy_out(stdout, fd1)));
        outputs.push(std::thread::spawn(move || copy_out(stderr, fd2)));
        std::thread::spawn(move || {
            let r = copy_in(fd0, input);
            if let Err(e) = &r {
                tracing::debug!("copying stdin: {e}");
            }
            let _ = sent_tx.send(r.ok());
        });
    }
    ready.ok();
    tracing::debug!("monitor of {} ready", process.name());

    let owned = signals.fd().try_clone_to_owned()?;
    // SAFETY: `owned` is an OwnedFd moved into the AsyncFd: it stays open and is the same
    // descriptor for the AsyncFd's whole life.
    let sigfd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    }
    .map_err(|e| anyhow!("cannot watch the signalfd: {e}"))?;
    // The VM's end is known from the agent's connection (a wait that fails is the VM gone).
    let wait = process.wait(&agent, std::future::pending());
    tokio::pin!(wait);
    let mut sent_rx = Some(sent_rx);
    let exit = loop {
        tokio::select! {
            exit = &mut wait => break exit,
            sent = async { sent_rx.as_mut().expect("polled only while set").await }, if sent_rx.is_some() => {
                sent_rx = None;
                // The caller's input ended: the process reads what was copied, then its end.
                if let Err(e) = process.input_ended(&agent, sent.ok().flatten()).await {
                    tracing::debug!("closing stdin: {e}");
                }
            }
            g = sigfd.readable() => {
                let mut g = g.context("signalfd")?;
                while let Some(sig) = signals.next()? {
                    match sig {
                        libc::SIGCHLD => {}
                        libc::SIGWINCH => {
                            if let Some((rows, cols)) =
                                terminal.as_ref().and_then(|t| window_size(t.fd.as_fd()))
                            {
                                if let Err(e) = process.resize(&agent, rows, cols).await {
                                    tracing::debug!("resize: {e}");
                                }
                            }
                        }
                        s => forward(&agent, &process, s).await,
                    }
                }
                g.clear_ready();
            }
        }
    };
    if !exit.vm_gone {
        // The output is in the socket buffers, followed by end-of-file, unless something in the
        // guest still holds the stream open (a child the process left behind, or a guest that
        // never closes it): copied for at most DRAIN_LIMIT, then the status is reported anyway.
        let deadline = std::time::Instant::now() + DRAIN_LIMIT;
        for o in outputs {
            while !o.is_finished() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if !o.is_finished() {
                tracing::warn!(
                    "{}: its output is still open {DRAIN_LIMIT:?} after it ended; exiting",
                    process.name()
                );
                break;
            }
            match o.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!("copying the container's output: {e}"),
                Err(_) => tracing::warn!("an output copy thread panicked"),
            }
        }
    }
    tracing::debug!("{} ended with {}", process.name(), exit.code);
    drop(terminal);
    drop(keep);
    Ok(exit.code_u8())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn console_socket_receives_the_pty_master() {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let (master, slave, name) = open_pty().unwrap();
        send_console(&path, master.as_fd(), &name.display().to_string()).unwrap();
        drop(master);
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut fds = Vec::new();
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(f) = c {
                fds.extend(f);
            }
        }
        let n = msg.bytes;
        assert_eq!(fds.len(), 1);
        assert_eq!(&buf[..n], name.display().to_string().as_bytes());
        // SAFETY: the fd just arrived with SCM_RIGHTS and belongs to this test alone.
        let received = unsafe { OwnedFd::from_raw_fd(fds[0]) };
        // It is the master of `slave`: what is written to the master is read on the slave.
        make_raw(slave.as_fd()).unwrap();
        let mut m = std::fs::File::from(received);
        m.write_all(b"hello\n").unwrap();
        let mut s = std::fs::File::from(slave);
        let mut got = [0u8; 6];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello\n");
        // And the size set on the master is the slave's.
        let ws = libc::winsize {
            ws_row: 33,
            ws_col: 101,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
        let rc = unsafe { libc::ioctl(m.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0);
        assert_eq!(window_size(s.as_fd()), Some((33, 101)));
    }

    #[test]
    fn a_missing_console_socket_is_named() {
        let (master, _slave, name) = open_pty().unwrap();
        let e = send_console(
            Path::new("/nonexistent/console.sock"),
            master.as_fd(),
            &name.display().to_string(),
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("/nonexistent/console.sock"),
            "{e:#}"
        );
    }

    #[test]
    fn stdin_copy_delivers_everything_then_end_of_file() {
        // host fd 0 -> the agent's stdin stream; the far ends stand for the caller and agent.
        let (mut caller, fd0) = UnixStream::pair().unwrap();
        let (stream, mut agent) = UnixStream::pair().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let data = data.clone();
            std::thread::spawn(move || {
                caller.write_all(&data).unwrap();
            })
        };
        // The copy counts the bytes (for the agent's close_stdin) and lets go of the stream.
        let copier = std::thread::spawn(move || copy_in(fd0, stream));
        let mut got = Vec::new();
        agent.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(copier.join().unwrap().unwrap(), data.len() as u64);
        assert_eq!(got, data);
    }

    #[test]
    fn output_copy_delivers_everything_and_drains_after_the_reader_left() {
        let (mut agent, stream) = UnixStream::pair().unwrap();
        let (fd1, mut caller) = UnixStream::pair().unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 13) as u8).collect();
        let copier = std::thread::spawn(move || copy_out(stream, fd1));
        agent.write_all(&data).unwrap();
        drop(agent);
        let mut got = Vec::new();
        caller.read_to_end(&mut got).unwrap();
        assert_eq!(copier.join().unwrap().unwrap(), data.len() as u64);
        assert_eq!(got, data);

        // The reader of fd 1 is gone: the stream is still drained to its end.
        let (mut agent, stream) = UnixStream::pair().unwrap();
        let (fd1, caller) = UnixStream::pair().unwrap();
        drop(caller);
        let copier = std::thread::spawn(move || copy_out(stream, fd1));
        agent.write_all(&data).unwrap();
        drop(agent);
        assert_eq!(copier.join().unwrap().unwrap(), data.len() as u64);
    }

    #[test]
    fn terminal_input_ends_at_eio() {
        // The master closes: reading the slave gives EIO, which ends the copy.
        let (master, slave, _) = open_pty().unwrap();
        make_raw(slave.as_fd()).unwrap();
        let mut m = std::fs::File::from(master);
        m.write_all(b"ls\r").unwrap();
        let (stream, mut agent) = UnixStream::pair().unwrap();
        let s = std::fs::File::from(slave);
        let copier = std::thread::spawn(move || copy_in(s, stream));
        let mut got = [0u8; 3];
        agent.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ls\r");
        drop(m);
        assert_eq!(copier.join().unwrap().unwrap(), 3);
    }

    #[test]
    fn forwarded_signals_are_the_catchable_ones() {
        let s = forwarded_signals();
        for must in [
            libc::SIGTERM,
            libc::SIGINT,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGWINCH,
            34,
            64,
        ] {
            assert!(s.contains(&must), "{must}");
        }
        for never in [
            libc::SIGKILL,
            libc::SIGSTOP,
            libc::SIGPIPE,
            libc::SIGSEGV,
            32,
            33,
        ] {
            assert!(!s.contains(&never), "{never}");
        }
    }

    #[test]
    fn arguments_round_trip_through_the_command_line() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(subcommand)]
            c: C,
        }
        #[derive(clap::Subcommand)]
        enum C {
            #[command(name = "__monitor")]
            M(MonitorArgs),
        }
        let a = MonitorArgs {
            sandbox: "s".into(),
            container: "c".into(),
            process: Some(7),
            process_on_fd: false,
            exec: true,
            terminal: true,
            console_socket: Some("/tmp/x.sock".into()),
            agent_socket: None,
        };
        let mut argv = vec!["hull".to_string()];
        argv.extend(a.to_args());
        let T { c: C::M(b) } = T::parse_from(argv);
        assert_eq!(b.sandbox, "s");
        assert_eq!(b.process, Some(7));
        assert!(b.exec && b.terminal);
        assert_eq!(b.console_socket.as_deref(), Some(Path::new("/tmp/x.sock")));
        // A prespawned monitor: no process on the command line, and one is required otherwise.
        let pre = MonitorArgs { process: None, ..a };
        let mut argv = vec!["hull".to_string()];
        argv.extend(pre.to_args());
        assert!(argv.contains(&"--process-on-fd".to_string()), "{argv:?}");
        let T { c: C::M(b) } = T::parse_from(argv);
        assert_eq!(b.process, None);
        assert!(b.process_on_fd);
        assert!(
            T::try_parse_from(["hull", "__monitor", "--sandbox", "s", "--container", "c"]).is_err()
        );
    }
}
