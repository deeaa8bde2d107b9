//! hull-vmm-api: what crosses the process boundary of `hull-vmm`, as plain data.
//!
//! - [`config`]: the VM configuration (`hull-vmm --config vm.json`), its shares and devices;
//! - [`api`]: the control socket's requests, responses and statistics;
//! - [`exit`]: why a VM stopped and the process exit status that tells it.
//!
//! **Owns**: the types, their JSON form, their defaults and the checks that need nothing but
//! the data itself (a share's tag, a `--fs` or `--net` flag's syntax).
//! **Must not**: touch the host (open files, bind sockets), know the VMM's internals or link
//! KVM or virtio crates. `hull-vmm` parses and validates these types against the host before
//! it builds a VM; the runtime (`hull-runtime`) builds them without linking the VMM. This is
//! the split Cloud Hypervisor makes between `vm_config.rs` and its parser, and the one the agent
//! protocol crate (`hull-agent-protocol`) makes for the guest agent.

pub mod api;
pub mod config;
pub mod exit;
pub mod fs;
pub mod net;

pub use api::{ApiRequest, ApiResponse, ExitCounts, RunState, VmStats};
pub use config::{
    BootProtocolConfig, ConfigFileError, MemoryBacking, SerialConfig, VmConfig, VsockConfig,
};
pub use exit::ExitReason;
pub use fs::{CachePolicy, FsConfig, FsSpecError};
pub use net::{MacAddr, NetBackend, NetConfig, NetSpecError};
