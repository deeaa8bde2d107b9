//! hull-vmm: the KVM microVM monitor that runs one hull sandbox.
//!
//! **Owns**: KVM, guest memory, the vCPUs, the devices and everything the guest can touch from
//! inside the VM (virtqueues, MMIO and port I/O, FUSE requests: all hostile input, never trusted,
//! never a panic). **Must not**: know about containers, pods or OCI (that is the runtime's and
//! the agent's), or be linked by the runtime or the front ends: they start the `hull-vmm` binary
//! and speak `hull-vmm-api` to it.
//!
//! One process per VM. [`VmConfig`] (plain data: JSON or command-line flags) describes the VM;
//! [`run`] validates it, boots the guest and returns the [`ExitReason`] when the VM stops
//! (whose [`ExitReason::exit_code`] is the process exit status).
//!
//! Layout (Firecracker / Cloud Hypervisor style):
//! - `arch::x86_64`: memory layout, PVH and 64-bit Linux boot, registers, CPUID, MSRs, LAPIC,
//!   MP table;
//! - `vstate`: the KVM VM (memory, irqchip, PIT) and vCPU threads;
//! - `devices`: port-I/O/MMIO buses, legacy serial and i8042, virtio-mmio transport and devices;
//! - `api`: the control socket; `config`: the configuration; `exit`: why a VM stopped;
//! - `jail`: how hull-vmm confines itself before the guest runs (namespaces, capabilities,
//!   seccomp per thread kind);
//! - `snapshot`: a template run's snapshot and the restore that starts a VM from it.

pub mod api;
pub mod arch;
mod builder;
pub mod config;
pub mod device_manager;
pub mod devices;
pub mod exit;
pub mod jail;
pub mod logger;
mod rpc_interface;
pub mod snapshot;
pub mod sync;
pub mod vmm;
pub mod vstate;

pub use config::VmConfig;
pub use exit::ExitReason;
pub use vmm::{run, Vmm, VmmError};
