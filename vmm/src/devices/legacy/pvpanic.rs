//! pvpanic at I/O port 0x505: the guest kernel's panic notifier (`CONFIG_PVPANIC_MMIO`) writes
//! here when the guest kernel panics, so a panic is known from what the kernel did, never from
//! console text any guest process could print.
//!
//! The guest finds the device through `pvpanic_mmio.ioport=0x505` on its command line (hull's
//! kernel patch `kernel-config/patches/0001-pvpanic-mmio-ioport.patch`; without ACPI or a device
//! tree Linux has no other way to find it). QEMU's device model: a read returns the events the
//! device supports, a write reports events.

use std::sync::Arc;

use crate::devices::bus::BusDevice;
use crate::exit::{ExitReason, ExitState};

/// The guest kernel panicked (`PVPANIC_PANICKED`, include/uapi/misc/pvpanic.h).
pub const PVPANIC_PANICKED: u8 = 1 << 0;
/// The guest kernel panicked with a crash kernel loaded: it is about to kexec into it.
pub const PVPANIC_CRASH_LOADED: u8 = 1 << 1;

pub struct PvPanic {
    exit: Arc<ExitState>,
}

impl PvPanic {
    pub fn new(exit: Arc<ExitState>) -> PvPanic {
        PvPanic { exit }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 1 {
            data[0] = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        } else {
            data.fill(0xff);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.len() != 1 {
            return;
        }
        let events = data[0];
        if events & PVPANIC_PANICKED != 0 {
            // The kernel printed the reason before its panic notifiers ran: it is in the
            // console output.
            self.exit.request(ExitReason::GuestPanic(
                "reported by the guest kernel through pvpanic (the reason is in its console output)"
                    .into(),
            ));
        } else if events & PVPANIC_CRASH_LOADED != 0 {
            tracing::warn!("the guest kernel panicked and is starting its crash kernel (pvpanic)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_says_what_is_supported() {
        let exit = Arc::new(ExitState::new().unwrap());
        let mut d = PvPanic::new(exit);
        let mut b = [0u8; 1];
        d.read(0, &mut b);
        assert_eq!(b[0], PVPANIC_PANICKED | PVPANIC_CRASH_LOADED);
        let mut two = [0u8; 2];
        d.read(0, &mut two);
        assert_eq!(two, [0xff, 0xff]);
    }

    #[test]
    fn panicked_stops_the_vm_as_a_panic() {
        let exit = Arc::new(ExitState::new().unwrap());
        let mut d = PvPanic::new(exit.clone());
        d.write(0, &[PVPANIC_PANICKED]);
        assert_eq!(exit.reason().unwrap().exit_code(), 2);
        // The reset that follows the panic (panic=-1) does not change the reason.
        exit.guest_reset();
        assert!(matches!(exit.reason(), Some(ExitReason::GuestPanic(_))));
    }

    #[test]
    fn other_writes_stop_nothing() {
        let exit = Arc::new(ExitState::new().unwrap());
        let mut d = PvPanic::new(exit.clone());
        d.write(0, &[PVPANIC_CRASH_LOADED]);
        d.write(0, &[0]);
        d.write(1, &[PVPANIC_PANICKED]);
        d.write(0, &[PVPANIC_PANICKED, 0]);
        assert!(!exit.is_requested());
        exit.guest_reset();
        assert!(matches!(exit.reason(), Some(ExitReason::GuestReboot)));
    }
}
