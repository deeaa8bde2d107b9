//! Client for hull-agent (see the `hull-agent-protocol` crate docs for the protocol).
//!
//! The agent is reached through an [`Endpoint`]: hull-vmm's hybrid vsock Unix socket (the
//! client writes `CONNECT 1024\n` and expects `OK <port>\n`), or a plain Unix socket where
//! `hull-agent --listen unix:PATH` serves in host mode (tests).
//!
//! Waiting for a booting guest: [`AgentClient::connect_retry`] retries the whole connect +
//! handshake + hello with exponential backoff (10 ms doubling to 250 ms) until a deadline, as
//! long as the failure means "not up yet" (no socket yet, connection refused, the VMM closed the
//! connection because nothing listens on the guest port yet). A version mismatch or any other
//! error ends the wait at once.
//!
//! One [`AgentClient`] is one control connection; calls on it run concurrently (each has an id)
//! and each has a timeout ([`AgentClient::set_call_timeout`]), except `wait`, which waits as long
//! as the process runs unless given a limit. Standard streams are separate connections
//! ([`AgentClient::open_stream`]).

mod client;
mod endpoint;
mod error;

pub use client::{AgentClient, ProcessOutput, Spawned};
pub use endpoint::Endpoint;
pub use error::Error;
pub use hull_agent_protocol as protocol;

#[cfg(test)]
pub(crate) mod tests;
