//! hull-runtime: sandboxes (one microVM per pod) and the containers in them. The `hull` CLI and
//! the containerd shim are thin front ends over this library.
//!
//! **Owns**: launching and driving `hull-vmm` processes ([`vmm`]: the config file, the process,
//! its API socket and exit reasons), the client of the guest agent ([`agent`]), and the sandbox
//! and container lifecycles ([`sandbox`], [`container`]) with their state on disk.
//! **Must not**: link the VMM (it builds `hull-vmm-api` plain data; `cargo tree -p hull-runtime`
//! has no kvm-ioctls or fuse-backend-rs), parse command lines or speak ttrpc (the front ends do),
//! or trust anything the guest sends (every agent reply is checked and bounded).

pub mod agent;
pub mod config;
pub mod container;
pub mod forward;
pub mod host_cgroup;
pub mod mount;
pub mod network;
pub mod process;
pub mod sandbox;
pub mod share;
pub mod template;
pub mod vmm;
