//! Signal names and numbers as runc's `kill` takes them.

/// The standard Linux signals by name (without `SIG`), in number order.
const NAMES: &[(&str, i32)] = &[
    ("HUP", libc::SIGHUP),
    ("INT", libc::SIGINT),
    ("QUIT", libc::SIGQUIT),
    ("ILL", libc::SIGILL),
    ("TRAP", libc::SIGTRAP),
    ("ABRT", libc::SIGABRT),
    ("IOT", libc::SIGIOT),
    ("BUS", libc::SIGBUS),
    ("FPE", libc::SIGFPE),
    ("KILL", libc::SIGKILL),
    ("USR1", libc::SIGUSR1),
    ("SEGV", libc::SIGSEGV),
    ("USR2", libc::SIGUSR2),
    ("PIPE", libc::SIGPIPE),
    ("ALRM", libc::SIGALRM),
    ("TERM", libc::SIGTERM),
    ("STKFLT", libc::SIGSTKFLT),
    ("CHLD", libc::SIGCHLD),
    ("CLD", libc::SIGCHLD),
    ("CONT", libc::SIGCONT),
    ("STOP", libc::SIGSTOP),
    ("TSTP", libc::SIGTSTP),
    ("TTIN", libc::SIGTTIN),
    ("TTOU", libc::SIGTTOU),
    ("URG", libc::SIGURG),
    ("XCPU", libc::SIGXCPU),
    ("XFSZ", libc::SIGXFSZ),
    ("VTALRM", libc::SIGVTALRM),
    ("PROF", libc::SIGPROF),
    ("WINCH", libc::SIGWINCH),
    ("IO", libc::SIGIO),
    ("POLL", libc::SIGPOLL),
    ("PWR", libc::SIGPWR),
    ("SYS", libc::SIGSYS),
];

/// Lowest and highest real-time signal on Linux (glibc and musl reserve the first few of the
/// kernel's 32..=64 for themselves; a container's program may use any of them).
pub const SIGRTMIN: i32 = 34;
pub const SIGRTMAX: i32 = 64;

/// Parses a signal as runc's `kill` does: a number (`9`), a name (`KILL`, `SIGKILL`, any
/// case), or a real-time signal (`RTMIN`, `RTMIN+3`, `RTMAX-1`).
pub fn parse_signal(s: &str) -> Result<i32, String> {
    let bad = || format!("unknown signal {s:?}");
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=SIGRTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(format!(
                "invalid signal number {n}: it must be 1 to {SIGRTMAX}"
            ))
        };
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    if let Some(&(_, n)) = NAMES.iter().find(|(k, _)| *k == name) {
        return Ok(n);
    }
    let rt = |base: i32, rest: &str| -> Result<i32, String> {
        let n = match rest {
            "" => base,
            r if r.starts_with('+') => base + r[1..].parse::<i32>().map_err(|_| bad())?,
            r if r.starts_with('-') => base - r[1..].parse::<i32>().map_err(|_| bad())?,
            _ => return Err(bad()),
        };
        if (SIGRTMIN..=SIGRTMAX).contains(&n) {
            Ok(n)
        } else {
            Err(bad())
        }
    };
    if let Some(rest) = name.strip_prefix("RTMIN") {
        return rt(SIGRTMIN, rest);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        return rt(SIGRTMAX, rest);
    }
    Err(bad())
}

/// The name of signal `n` with its `SIG` prefix, or its number.
pub fn signal_name(n: i32) -> String {
    match NAMES.iter().find(|(_, v)| *v == n) {
        Some((k, _)) => format!("SIG{k}"),
        None => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_real_time_signals() {
        for (s, n) in [
            ("KILL", 9),
            ("SIGKILL", 9),
            ("kill", 9),
            ("sigterm", 15),
            ("9", 9),
            ("15", 15),
            ("HUP", 1),
            ("WINCH", 28),
            ("USR1", 10),
            ("SIGUSR2", 12),
            ("CHLD", 17),
            ("RTMIN", 34),
            ("RTMIN+3", 37),
            ("SIGRTMAX-2", 62),
            ("RTMAX", 64),
            ("64", 64),
        ] {
            assert_eq!(parse_signal(s), Ok(n), "{s}");
        }
        for bad in [
            "", "FOO", "SIG", "0", "65", "-1", "RTMIN+40", "RTMAX+1", "RTMINx", "9x",
        ] {
            let e = parse_signal(bad).unwrap_err();
            assert!(e.contains(bad) || e.contains("1 to 64"), "{bad}: {e}");
        }
        assert_eq!(signal_name(15), "SIGTERM");
        assert_eq!(signal_name(40), "40");
    }
}
