//! PID 1 duties in the guest: file systems, console, hostname, clock, power-off.
//!
//! The initramfs holds nothing but `/init` (this binary), so mount points are created here and
//! the console is opened from devtmpfs. The VM ends by `reboot(RB_AUTOBOOT)`: the kernel is
//! booted with `reboot=k`, and hull-vmm treats a guest reboot as the VM's end (without ACPI,
//! `RB_POWER_OFF` would only halt the CPU and leave a hung VM).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::time::Duration;

use hull_agent_protocol::{AgentError, ErrorKind};
use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};

/// One file system PID 1 mounts.
struct Mount {
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

fn mounts() -> [Mount; 7] {
    let nse = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    [
        Mount {
            target: "/proc",
            fstype: "proc",
            flags: nse,
            data: None,
        },
        Mount {
            target: "/sys",
            fstype: "sysfs",
            flags: nse,
            data: None,
        },
        Mount {
            target: "/dev",
            fstype: "devtmpfs",
            flags: MsFlags::MS_NOSUID,
            data: Some("mode=0755"),
        },
        Mount {
            target: "/dev/pts",
            fstype: "devpts",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            data: Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        },
        Mount {
            target: "/dev/shm",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=1777"),
        },
        Mount {
            target: "/run",
            fstype: "tmpfs",
            flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            data: Some("mode=0755"),
        },
        Mount {
            target: "/sys/fs/cgroup",
            fstype: "cgroup2",
            flags: nse,
            data: Some("nsdelegate"),
        },
    ]
}

/// Mounts everything and makes sure fds 0-2 are the console. Runs before logging is set up,
/// so problems are returned as text to log afterwards.
pub fn early() -> Vec<String> {
    let mut problems = Vec::new();
    for m in mounts() {
        if let Err(e) = std::fs::create_dir_all(m.target) {
            problems.push(format!("mkdir {}: {e}", m.target));
        }
        if let Err(e) = mount(Some(m.fstype), m.target, Some(m.fstype), m.flags, m.data) {
            if e == nix::errno::Errno::EBUSY {
                continue; // already mounted (e.g. devtmpfs by the kernel)
            }
            problems.push(format!("mount {} on {}: {e}", m.fstype, m.target));
        }
        if m.target == "/dev" {
            open_console(&mut problems);
        }
    }
    // /dev/ptmx from devtmpfs refers to the devpts instance mounted at /dev/pts; the symlink
    // form is what most distributions use, and works either way.
    let _ = std::fs::remove_file("/dev/ptmx");
    if let Err(e) = std::os::unix::fs::symlink("pts/ptmx", "/dev/ptmx") {
        problems.push(format!("symlink /dev/ptmx: {e}"));
    }
    problems
}

/// An initramfs without /dev/console starts init with no fds 0-2: open the console on them.
fn open_console(problems: &mut Vec<String>) {
    for fd in 0..3 {
        if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok() {
            continue;
        }
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console")
            .or_else(|_| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
            });
        match f {
            // SAFETY: dup2 onto a descriptor number that is not open (checked above).
            Ok(f) => unsafe {
                libc::dup2(f.as_raw_fd(), fd);
            },
            Err(e) => problems.push(format!("open /dev/console: {e}")),
        }
    }
}

/// Host mode: make sure fds 0-2 are open (on /dev/null), so pipes never land on them.
pub fn ensure_std_fds() {
    for fd in 0..3 {
        if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
            if let Ok(f) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                // SAFETY: dup2 onto a descriptor number that is not open (checked above).
                unsafe { libc::dup2(f.as_raw_fd(), fd) };
            }
        }
    }
}

/// `hull.*` parameters of the kernel command line.
pub fn cmdline_params() -> HashMap<String, String> {
    let text = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    parse_cmdline(&text)
}

pub fn parse_cmdline(text: &str) -> HashMap<String, String> {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix("hull."))
        .filter_map(|w| {
            w.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// The call policy the host chose (`hull.agent_calls=`, in `params` without its `hull.`).
pub fn call_policy(params: &HashMap<String, String>) -> hull_agent_protocol::CallPolicy {
    let key = hull_agent_protocol::CALL_POLICY_PARAM
        .strip_prefix("hull.")
        .unwrap_or(hull_agent_protocol::CALL_POLICY_PARAM);
    hull_agent_protocol::CallPolicy::from_param(params.get(key).map(String::as_str))
}

/// Hostname (`hull.hostname=`, default "hull") and clock (`hull.time=SECONDS[.FRACTION]`).
pub fn configure(params: &HashMap<String, String>) {
    let name = params.get("hostname").map(String::as_str).unwrap_or("hull");
    match nix::unistd::sethostname(name) {
        Ok(()) => tracing::info!("hostname {name}"),
        Err(e) => tracing::error!("sethostname {name:?}: {e}"),
    }
    if let Some(t) = params.get("time") {
        match parse_time(t) {
            Some((s, ns)) => match set_clock(s, ns) {
                Ok(()) => tracing::info!("clock set to {s}.{ns:09} from the command line"),
                Err(e) => tracing::error!("{}", e.message),
            },
            None => tracing::error!("hull.time={t:?} is not SECONDS[.FRACTION]"),
        }
    }
}

fn parse_time(t: &str) -> Option<(i64, u32)> {
    let (s, frac) = t.split_once('.').unwrap_or((t, ""));
    let secs = s.parse().ok()?;
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some((secs, nanos))
}

/// Checks a `set_identity` request before anything changes: a hostname the kernel takes
/// (1 to 64 bytes, no NUL or `/`), and between `MIN_IDENTITY_ENTROPY` and
/// `MAX_IDENTITY_ENTROPY` bytes of entropy.
pub fn check_identity(hostname: &str, entropy: &[u8]) -> Result<(), AgentError> {
    use hull_agent_protocol::{MAX_HOSTNAME, MAX_IDENTITY_ENTROPY, MIN_IDENTITY_ENTROPY};
    let bad = |m: String| Err(AgentError::new(ErrorKind::InvalidArgument, m));
    if hostname.is_empty() || hostname.len() > MAX_HOSTNAME || hostname.contains(['\0', '/']) {
        return bad(format!(
            "hostname {hostname:?}: 1 to {MAX_HOSTNAME} bytes, without NUL or '/'"
        ));
    }
    if !(MIN_IDENTITY_ENTROPY..=MAX_IDENTITY_ENTROPY).contains(&entropy.len()) {
        return bad(format!(
            "{} bytes of entropy: between {MIN_IDENTITY_ENTROPY} and {MAX_IDENTITY_ENTROPY} are taken",
            entropy.len()
        ));
    }
    Ok(())
}

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])` (linux/random.h).
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

/// Adds `entropy` to the kernel's input pool, credited in full (it comes from the host's
/// `getrandom`), then reseeds the CRNG from the pool at once: every number drawn afterwards
/// depends on it. A guest restored from a template shares the template's pool and CRNG state
/// until this runs.
pub fn reseed(entropy: &[u8]) -> Result<(), AgentError> {
    let io = |what: &str, e: std::io::Error| AgentError::new(ErrorKind::Io, format!("{what}: {e}"));
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(|e| io("open /dev/random", e))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let count =
        i32::try_from(entropy.len() * 8).map_err(|e| io("entropy", std::io::Error::other(e)))?;
    let size = i32::try_from(entropy.len()).map_err(|e| io("entropy", std::io::Error::other(e)))?;
    let mut info = Vec::with_capacity(8 + entropy.len() + 3);
    info.extend_from_slice(&count.to_ne_bytes());
    info.extend_from_slice(&size.to_ne_bytes());
    info.extend_from_slice(entropy);
    // buf[] is __u32: a whole number of words (the kernel reads buf_size bytes).
    while info.len() % 4 != 0 {
        info.push(0);
    }
    // The buffer as u32 words, so that its alignment is what the kernel's struct has.
    let words: Vec<u32> = info
        .chunks_exact(4)
        .map(|c| u32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    // SAFETY: RNDADDENTROPY reads a rand_pool_info: two ints and then buf_size bytes, all of
    // which `words` holds (8 + entropy.len() bytes, rounded up), alive for the call.
    let r = unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY, words.as_ptr()) };
    if r != 0 {
        return Err(io("RNDADDENTROPY", std::io::Error::last_os_error()));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    let r = unsafe { libc::ioctl(random.as_raw_fd(), RNDRESEEDCRNG) };
    if r != 0 {
        return Err(io("RNDRESEEDCRNG", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Sets CLOCK_REALTIME.
pub fn set_clock(seconds: i64, nanos: u32) -> Result<(), AgentError> {
    if seconds < 0 || nanos >= 1_000_000_000 {
        return Err(AgentError::new(
            ErrorKind::InvalidArgument,
            format!("{seconds}.{nanos:09} is not a valid time (seconds >= 0, nanos < 10^9)"),
        ));
    }
    let ts = nix::sys::time::TimeSpec::new(seconds, i64::from(nanos));
    nix::time::clock_settime(nix::time::ClockId::CLOCK_REALTIME, ts)
        .map_err(|e| AgentError::new(ErrorKind::Io, format!("clock_settime: {e}")))
}

/// Ends the VM: stops every process, syncs, reboots (which hull-vmm turns into its exit).
pub fn power_off(grace: Duration) -> ! {
    let all = nix::unistd::Pid::from_raw(-1);
    tracing::info!(target: crate::log::CONSOLE, "powering off: stopping all processes");
    let _ = nix::sys::signal::kill(all, nix::sys::signal::Signal::SIGTERM);
    let deadline = std::time::Instant::now() + grace;
    // The reaper is gone with the runtime: reap here until nothing is left or the grace ends.
    while std::time::Instant::now() < deadline {
        match nix::sys::wait::waitpid(None, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Err(nix::errno::Errno::ECHILD) => break,
            Ok(nix::sys::wait::WaitStatus::StillAlive) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => {}
        }
    }
    let _ = nix::sys::signal::kill(all, nix::sys::signal::Signal::SIGKILL);
    nix::unistd::sync();
    tracing::info!(target: crate::log::CONSOLE, "rebooting to end the VM");
    let err = reboot(RebootMode::RB_AUTOBOOT);
    // Only reached if reboot failed: PID 1 exiting panics the kernel, and `panic=-1` on the
    // command line turns that into a reboot too.
    tracing::error!("reboot: {err:?}; exiting PID 1");
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_policy_from_the_command_line() {
        use hull_agent_protocol::CallPolicy;
        let p = parse_cmdline("console=ttyS0 hull.hostname=sb hull.agent_calls=sandbox");
        assert_eq!(call_policy(&p), CallPolicy::Sandbox);
        let p = parse_cmdline("console=ttyS0 hull.hostname=sb");
        assert_eq!(call_policy(&p), CallPolicy::All);
        let p = parse_cmdline("hull.agent_calls=bogus");
        assert_eq!(call_policy(&p), CallPolicy::Sandbox);
    }

    #[test]
    fn cmdline_and_time() {
        let p = parse_cmdline("console=ttyS0 hull.hostname=pod-1 reboot=k hull.time=17.5 hull.x");
        assert_eq!(p.get("hostname").unwrap(), "pod-1");
        assert_eq!(p.get("time").unwrap(), "17.5");
        assert_eq!(p.len(), 2);
        assert_eq!(parse_time("17.5"), Some((17, 500_000_000)));
        assert_eq!(parse_time("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(parse_time("1.0000000001"), None);
        assert_eq!(parse_time("x"), None);
        assert!(set_clock(-1, 0).is_err());
        assert!(set_clock(0, 1_000_000_000).is_err());
    }

    #[test]
    fn an_identity_is_checked_whole() {
        let e = [7u8; 32];
        assert!(check_identity("pod-1", &e).is_ok());
        assert!(check_identity(&"h".repeat(64), &[0; 512]).is_ok());
        for (host, n) in [
            ("", 32),
            ("a/b", 32),
            ("a\0b", 32),
            (&"h".repeat(65)[..], 32),
            ("pod", 31),
            ("pod", 513),
        ] {
            let err = check_identity(host, &vec![1; n]).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidArgument, "{host:?} {n}");
        }
    }
}
