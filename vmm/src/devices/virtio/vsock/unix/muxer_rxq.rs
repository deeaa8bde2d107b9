//! The muxer's RX queue: what waits for a guest RX buffer, with explicit bounds:
//! - connections with something to send, each present at most once (the connection's `in_rxq`
//!   flag says whether it is queued), so at most `MAX_CONNECTIONS`; the packet itself is built
//!   only when the buffer is there (data is read from the host stream straight into guest memory
//!   at that moment);
//! - RST replies to packets that match no connection, at most `MAX_PENDING_RST`; while that
//!   queue is full the device stops reading the TX queue (`VsockMuxer::can_accept_tx`).

use std::collections::VecDeque;

use super::muxer::ConnKey;
use crate::devices::virtio::vsock::MAX_PENDING_RST;

#[derive(Default)]
pub(super) struct MuxerRxQ {
    conns: VecDeque<ConnKey>,
    rsts: VecDeque<ConnKey>,
}

impl MuxerRxQ {
    /// Whether another RST can be queued.
    pub fn has_rst_room(&self) -> bool {
        self.rsts.len() < MAX_PENDING_RST
    }

    pub fn is_empty(&self) -> bool {
        self.rsts.is_empty() && self.conns.is_empty()
    }

    pub fn clear(&mut self) {
        self.conns.clear();
        self.rsts.clear();
    }

    /// Queues an RST for `key`; dropped (and logged) while the RST queue is full.
    pub fn push_rst(&mut self, key: ConnKey) {
        if self.has_rst_room() {
            self.rsts.push_back(key);
        } else {
            tracing::warn!(?key, "vsock: RST queue full; dropping an RST");
        }
    }

    pub fn pop_rst(&mut self) -> Option<ConnKey> {
        self.rsts.pop_front()
    }

    /// Queues a connection with something to send (the caller keeps it in at most once).
    pub fn push_conn(&mut self, key: ConnKey) {
        self.conns.push_back(key);
    }

    pub fn remove_conn(&mut self, key: ConnKey) {
        self.conns.retain(|k| *k != key);
    }

    pub fn pop_conn(&mut self) -> Option<ConnKey> {
        self.conns.pop_front()
    }

    /// How many connections are queued.
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }
}
