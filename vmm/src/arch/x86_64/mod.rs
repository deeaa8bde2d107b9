//! x86_64: memory layout, boot protocols (PVH and 64-bit Linux), registers, CPUID, MSRs, LAPIC
//! and the MP table.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
