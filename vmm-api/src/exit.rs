//! Why a VM stopped, and the process exit status of hull-vmm that tells it.
//!
//! | exit status | meaning |
//! |---|---|
//! | 0 | the guest rebooted or powered off (a guest `reboot`, or a guest-completed API shutdown) |
//! | 0 | API shutdown whose grace period expired: the VMM stopped the guest (stderr says so) |
//! | 0 | a template run's `snapshot` was written and the VM stopped |
//! | 1 | bad configuration or set-up failure (before or while creating the VM) |
//! | 2 | guest kernel panic (the guest kernel reported it through pvpanic) |
//! | 3 | guest triple fault (KVM_EXIT_SHUTDOWN) |
//! | 4 | VMM or KVM internal error |
//! | 5 | a hull-vmm thread made a system call outside its seccomp allowlist (stderr names it) |
//! | 6 | `restore_from`: the snapshot was refused (damaged, or not made for this hull-vmm, CPU or VM; stderr says why), before any VM existed |
//! | 128+N | stopped by signal N (SIGTERM, SIGINT) |

/// The guest stopped (reboot, power-off, API shutdown).
pub const EXIT_STOPPED: i32 = 0;
/// Bad configuration or set-up failure.
pub const EXIT_CONFIG: i32 = 1;
/// The guest kernel panicked.
pub const EXIT_GUEST_PANIC: i32 = 2;
/// A vCPU triple-faulted.
pub const EXIT_TRIPLE_FAULT: i32 = 3;
/// The VMM or KVM failed.
pub const EXIT_INTERNAL: i32 = 4;
/// A hull-vmm thread made a system call outside its seccomp allowlist.
pub const EXIT_SECCOMP: i32 = 5;
/// A snapshot to restore from was refused, before any VM existed.
pub const EXIT_SNAPSHOT_REFUSED: i32 = 6;
/// Stopped by signal N: exit status 128+N.
pub const EXIT_SIGNAL_BASE: i32 = 128;

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 reset with `reboot=k`) without having panicked.
    GuestReboot,
    /// The guest reported a power-off through KVM.
    GuestPowerOff,
    /// An API shutdown request; `forced` when the guest did not stop within the grace period.
    ApiShutdown { forced: bool },
    /// The guest kernel panicked (pvpanic, or KVM_SYSTEM_EVENT_CRASH); what the VMM knows of it.
    GuestPanic(String),
    /// A vCPU triple-faulted.
    TripleFault { vcpu: u8 },
    /// The VMM or KVM failed.
    Internal(String),
    /// SIGTERM or SIGINT.
    Signal(i32),
    /// A template run's `snapshot` request wrote the VM's state and stopped it.
    Snapshot,
}

impl ExitReason {
    /// The process exit status for this reason.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::GuestReboot
            | ExitReason::GuestPowerOff
            | ExitReason::ApiShutdown { .. }
            | ExitReason::Snapshot => EXIT_STOPPED,
            ExitReason::GuestPanic(_) => EXIT_GUEST_PANIC,
            ExitReason::TripleFault { .. } => EXIT_TRIPLE_FAULT,
            ExitReason::Internal(_) => EXIT_INTERNAL,
            ExitReason::Signal(n) => EXIT_SIGNAL_BASE + n,
        }
    }

    /// One line for stderr.
    pub fn describe(&self) -> String {
        match self {
            ExitReason::GuestReboot => "guest rebooted".into(),
            ExitReason::GuestPowerOff => "guest powered off".into(),
            ExitReason::ApiShutdown { forced: false } => "shut down on API request".into(),
            ExitReason::ApiShutdown { forced: true } => {
                "shut down on API request: the guest did not stop within the grace period, so \
                 the VMM stopped it"
                    .into()
            }
            ExitReason::GuestPanic(line) => format!("guest kernel panic: {line}"),
            ExitReason::TripleFault { vcpu } => {
                format!("guest triple fault on vCPU {vcpu} (KVM_EXIT_SHUTDOWN)")
            }
            ExitReason::Internal(e) => format!("internal error: {e}"),
            ExitReason::Signal(n) => format!("stopped by signal {n}"),
            ExitReason::Snapshot => "snapshot written, VM stopped".into(),
        }
    }
}

/// What an exit status of hull-vmm says, as a process that started it reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmmExit {
    /// Status 0: the guest stopped (reboot, power-off or API shutdown).
    Stopped,
    /// Status 1: the configuration was refused or the VM could not be set up (stderr says why).
    Config,
    /// Status 2: the guest kernel panicked.
    GuestPanic,
    /// Status 3: a vCPU triple-faulted.
    TripleFault,
    /// Status 4: the VMM or KVM failed.
    Internal,
    /// Status 5: a hull-vmm thread made a system call outside its seccomp allowlist.
    Seccomp,
    /// Status 6: the snapshot to restore from was refused (stderr says why).
    SnapshotRefused,
    /// Status 128+N: hull-vmm stopped on signal N (SIGTERM, SIGINT).
    Signal(i32),
    /// Killed by signal N without a chance to exit (SIGKILL); not a status hull-vmm returns.
    Killed(i32),
    /// Any other status: not one hull-vmm documents.
    Unknown(i32),
}

impl VmmExit {
    /// Reads a wait status: the exit code, or the signal that killed the process.
    pub fn from_wait(code: Option<i32>, signal: Option<i32>) -> VmmExit {
        match (code, signal) {
            (Some(EXIT_STOPPED), _) => VmmExit::Stopped,
            (Some(EXIT_CONFIG), _) => VmmExit::Config,
            (Some(EXIT_GUEST_PANIC), _) => VmmExit::GuestPanic,
            (Some(EXIT_TRIPLE_FAULT), _) => VmmExit::TripleFault,
            (Some(EXIT_INTERNAL), _) => VmmExit::Internal,
            (Some(EXIT_SECCOMP), _) => VmmExit::Seccomp,
            (Some(EXIT_SNAPSHOT_REFUSED), _) => VmmExit::SnapshotRefused,
            (Some(c), _) if c > EXIT_SIGNAL_BASE && c < EXIT_SIGNAL_BASE + 65 => {
                VmmExit::Signal(c - EXIT_SIGNAL_BASE)
            }
            (Some(c), _) => VmmExit::Unknown(c),
            (None, Some(s)) => VmmExit::Killed(s),
            (None, None) => VmmExit::Unknown(-1),
        }
    }
}

impl std::fmt::Display for VmmExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VmmExit::Stopped => f.write_str("the guest stopped"),
            VmmExit::Config => {
                f.write_str("hull-vmm refused the configuration or could not set up the VM")
            }
            VmmExit::GuestPanic => f.write_str("the guest kernel panicked"),
            VmmExit::TripleFault => f.write_str("a guest vCPU triple-faulted"),
            VmmExit::Internal => f.write_str("hull-vmm or KVM failed"),
            VmmExit::Seccomp => f.write_str(
                "hull-vmm made a system call outside its seccomp allowlist and was stopped \
                 (its log names the call; see docs/security.md)",
            ),
            VmmExit::SnapshotRefused => {
                f.write_str("hull-vmm refused the snapshot it was to restore from")
            }
            VmmExit::Signal(n) => write!(f, "hull-vmm stopped on signal {n}"),
            VmmExit::Killed(n) => write!(f, "hull-vmm was killed by signal {n}"),
            VmmExit::Unknown(c) => write!(f, "hull-vmm exited with undocumented status {c}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_round_trip() {
        for (r, e) in [
            (ExitReason::GuestReboot, VmmExit::Stopped),
            (ExitReason::ApiShutdown { forced: true }, VmmExit::Stopped),
            (ExitReason::GuestPanic("x".into()), VmmExit::GuestPanic),
            (ExitReason::TripleFault { vcpu: 0 }, VmmExit::TripleFault),
            (ExitReason::Internal(String::new()), VmmExit::Internal),
            (ExitReason::Signal(15), VmmExit::Signal(15)),
            (ExitReason::Snapshot, VmmExit::Stopped),
        ] {
            assert_eq!(VmmExit::from_wait(Some(r.exit_code()), None), e, "{r:?}");
        }
        assert_eq!(ExitReason::Signal(15).exit_code(), 143);
        assert_eq!(VmmExit::from_wait(Some(1), None), VmmExit::Config);
        assert_eq!(
            VmmExit::from_wait(Some(EXIT_SECCOMP), None),
            VmmExit::Seccomp
        );
        assert!(VmmExit::Seccomp.to_string().contains("seccomp allowlist"));
        assert_eq!(VmmExit::from_wait(Some(6), None), VmmExit::SnapshotRefused);
        assert_eq!(VmmExit::from_wait(None, Some(9)), VmmExit::Killed(9));
        assert_eq!(VmmExit::from_wait(Some(77), None), VmmExit::Unknown(77));
    }
}
