//! The hybrid (Unix socket) host side of the device.

pub mod muxer;
