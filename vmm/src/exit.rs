//! Why a VM stopped: [`ExitState`] collects the reason from vCPUs, devices and the event loop.
//! The reasons and their exit statuses are plain data in `hull_vmm_api::exit`:
//!
//! | exit status | meaning |
//! |---|---|
//! | 0 | the guest rebooted or powered off (a guest `reboot`, or a guest-completed API shutdown) |
//! | 0 | API shutdown whose grace period expired: the VMM stopped the guest (stderr says so) |
//! | 1 | bad configuration or set-up failure (before or while creating the VM) |
//! | 2 | guest kernel panic (reported by the guest kernel through pvpanic, or KVM_SYSTEM_EVENT_CRASH) |
//! | 3 | guest triple fault (KVM_EXIT_SHUTDOWN) |
//! | 4 | VMM or KVM internal error |
//! | 128+N | stopped by signal N (SIGTERM, SIGINT) |

use crate::sync::LockExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use hull_vmm_api::exit::*;

/// Shared by the vCPUs, devices and the event loop: the first reason recorded wins and wakes
/// the event loop.
pub struct ExitState {
    requested: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    api_shutdown: AtomicBool,
    evt: EventFd,
}

impl ExitState {
    pub fn new() -> std::io::Result<ExitState> {
        Ok(ExitState {
            requested: AtomicBool::new(false),
            reason: Mutex::new(None),
            api_shutdown: AtomicBool::new(false),
            evt: EventFd::new(EFD_NONBLOCK)?,
        })
    }

    /// Records `reason` unless one is already recorded; wakes the event loop.
    pub fn request(&self, reason: ExitReason) {
        {
            let mut r = self.reason.locked();
            if r.is_some() {
                return;
            }
            *r = Some(reason);
        }
        self.requested.store(true, Ordering::SeqCst);
        if let Err(e) = self.evt.write(1) {
            tracing::error!("cannot wake the event loop to stop the VM: {e}");
        }
    }

    /// The API asked the guest to shut down: its reset is the answer.
    pub fn note_api_shutdown(&self) {
        self.api_shutdown.store(true, Ordering::SeqCst);
    }

    /// The guest reset the machine: a reboot or the guest's answer to an API shutdown. (A
    /// panic's reset comes after pvpanic has recorded the panic, which wins.)
    pub fn guest_reset(&self) {
        if self.api_shutdown.load(Ordering::SeqCst) {
            self.request(ExitReason::ApiShutdown { forced: false })
        } else {
            self.request(ExitReason::GuestReboot)
        }
    }

    /// A vCPU triple-faulted.
    pub fn triple_fault(&self, vcpu: u8) {
        self.request(ExitReason::TripleFault { vcpu })
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.locked().clone()
    }

    /// Readable once a reason is recorded.
    pub fn eventfd(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitState::new().unwrap();
        assert!(!s.is_requested());
        s.request(ExitReason::GuestReboot);
        s.request(ExitReason::Internal("x".into()));
        assert_eq!(s.reason(), Some(ExitReason::GuestReboot));
        assert_eq!(s.eventfd().read().unwrap(), 1);
    }

    #[test]
    fn triple_fault_after_a_panic_is_a_panic() {
        let s = ExitState::new().unwrap();
        s.request(ExitReason::GuestPanic("pvpanic".into()));
        s.triple_fault(1);
        assert_eq!(s.reason().unwrap().exit_code(), 2);
    }
}
