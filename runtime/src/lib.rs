//! hull-runtime: sandboxes (one microVM per pod) and the containers in them.

pub mod agent;
pub mod vmm;
