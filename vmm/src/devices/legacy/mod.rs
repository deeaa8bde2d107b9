//! Legacy ISA devices: the 8250 serial console, the i8042 keyboard controller and pvpanic.

pub mod i8042;
pub mod pvpanic;
pub mod serial;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line backed by an eventfd that KVM injects as an irqfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
