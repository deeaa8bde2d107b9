//! Waiting in the foreground for a monitor (`run` without --detach, `exec` without --detach):
//! every signal this process receives is passed to the monitor, which passes it to the
//! container process; the monitor's exit status is the command's.
//!
//! Signals are caught by handlers (process-wide, so whichever thread receives one) that write
//! the signal's number to a pipe; this thread reads the pipe. SIGCHLD means the monitor may
//! have exited.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Child;
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Context;

static PIPE_W: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    let errno_ptr = unsafe { libc::__errno_location() };
    // SAFETY: as above; errno is saved here and restored after the write.
    let errno = unsafe { *errno_ptr };
    let b = sig as u8;
    // SAFETY: write is async-signal-safe; the buffer is a local byte.
    unsafe { libc::write(PIPE_W.load(Ordering::Relaxed), (&b as *const u8).cast(), 1) };
    // SAFETY: as above.
    unsafe { *errno_ptr = errno };
}

/// Waits for `child` (a monitor), forwarding signals to it; returns its exit code.
pub fn wait(mut child: Child) -> anyhow::Result<u8> {
    let (r, w): (OwnedFd, OwnedFd) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .context("cannot create a signal pipe")?;
    PIPE_W.store(w.as_raw_fd(), Ordering::Relaxed);
    let sigs = crate::monitor::forwarded_signals();
    for &s in &sigs {
        // SAFETY: sigaction is plain data; every field used is set below.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_signal as *const () as usize;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: sa_mask is a sigset_t inside `sa`.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: `sa` is fully set up; the handler only makes async-signal-safe calls.
        unsafe { libc::sigaction(s, &sa, std::ptr::null_mut()) };
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let result = loop {
        if let Some(status) = child.try_wait().context("waiting for the monitor")? {
            break Ok(hull_runtime::process::host_exit_code(status) as u8);
        }
        let mut fds = [nix::poll::PollFd::new(
            std::os::fd::AsFd::as_fd(&r),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => break Err(anyhow::anyhow!("poll: {e}")),
        }
        let mut buf = [0u8; 64];
        while let Ok(n) = nix::unistd::read(r.as_raw_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            for &s in &buf[..n] {
                let s = i32::from(s);
                if s == libc::SIGCHLD {
                    continue;
                }
                if let Ok(sig) = nix::sys::signal::Signal::try_from(s) {
                    let _ = nix::sys::signal::kill(pid, sig);
                } else {
                    // SAFETY: kill with a real-time signal number; no memory involved.
                    unsafe { libc::kill(pid.as_raw(), s) };
                }
            }
        }
    };
    for &s in &sigs {
        // SAFETY: restores the default action; no memory involved.
        unsafe { libc::signal(s, libc::SIG_DFL) };
    }
    PIPE_W.store(-1, Ordering::Relaxed);
    drop(w);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_childs_code_or_its_signal_becomes_the_exit_code() {
        let c = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        assert_eq!(wait(c).unwrap(), 7);
        let c = std::process::Command::new("sh")
            .args(["-c", "kill -TERM $$"])
            .spawn()
            .unwrap();
        assert_eq!(wait(c).unwrap(), 143);
    }
}
