//! KVM state: the VM (memory, irqchip, PIT) and its vCPUs.

pub mod vcpu;
pub mod vm;
