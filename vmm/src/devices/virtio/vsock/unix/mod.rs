//! The hybrid (Unix socket) host side of the device.

pub mod muxer;
mod muxer_killq;
mod muxer_rxq;
