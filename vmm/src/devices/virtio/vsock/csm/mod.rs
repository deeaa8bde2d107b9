//! The connection state machine: one [`connection::VsockConnection`] per guest<->host stream.

pub mod connection;
pub mod txbuf;
