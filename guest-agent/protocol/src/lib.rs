//! The protocol spoken between hull's runtime (host) and hull-agent (guest) over vsock.

/// Version of the agent protocol; both ends must agree.
pub const PROTOCOL_VERSION: u32 = 1;
