//! Architecture-specific set-up: guest memory layout, boot protocols, vCPU registers, CPUID,
//! MSRs and the MP table. hull only runs x86_64 guests.

pub mod x86_64;
