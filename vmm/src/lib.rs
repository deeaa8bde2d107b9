//! hull-vmm: the KVM microVM monitor that runs one hull sandbox.
//!
//! The VMM is being built (see the hull-vmm issue); until it boots guests, the binary refuses
//! to run rather than pretend.

pub mod devices;
