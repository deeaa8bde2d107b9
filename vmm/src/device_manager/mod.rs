//! Device managers: where devices sit on the VM's buses and how their interrupts and
//! notifications are wired (Firecracker's `device_manager`). `mmio` places virtio devices.

pub mod mmio;
