//! The device's side of the VMM's event loop.
//!
//! Registered at init: the activate eventfd, the RX-continue eventfd and the tap's fd
//! (edge-triggered: the RX path reads the tap until it has no frame, or stops with a frame
//! waiting for guest buffers and resumes on the RX queue's event, or stops for fairness and
//! resumes on the RX-continue eventfd). On activation (signalled from the vCPU thread through
//! the activate eventfd) the queue eventfds are added; on reset they are removed again.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Net;

const ACTIVATE: u32 = 0;
const RXQ: u32 = 1;
const TXQ: u32 = 2;
const TAP: u32 = 3;
const RX_CONTINUE: u32 = 4;

impl Net {
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        for evt in self.stale_evts.drain(..) {
            let _ = ops.remove(Events::empty(&evt));
        }
        if let Some(active) = self.active.as_mut() {
            if !active.registered {
                for (evt, data) in active.queue_evts.iter().zip([RXQ, TXQ]) {
                    if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                        tracing::error!(error = ?e, "virtio-net: cannot watch a queue eventfd");
                    }
                }
                active.registered = true;
            }
        }
    }

    fn read_queue_evt(&self, idx: usize) {
        if let Some(evt) = self.active.as_ref().and_then(|a| a.queue_evts.get(idx)) {
            let _ = evt.read();
        }
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        for (evt, data) in [
            (&self.activate_evt, ACTIVATE),
            (&self.rx_continue_evt, RX_CONTINUE),
        ] {
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                tracing::error!(error = ?e, "virtio-net: cannot watch an eventfd");
            }
        }
        let tap = self.tap.raw_fd();
        if let Err(e) = ops.add(Events::with_data_raw(
            tap,
            TAP,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        )) {
            tracing::error!(error = ?e, tap = %self.tap_name(), "virtio-net: cannot watch the tap");
        }
        self.sync_registrations(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => {
                let _ = self.activate_evt.read();
                self.sync_registrations(ops);
                // Frames the tap or the guest queued before activation can go now.
                self.process_tx();
                self.process_rx();
            }
            RXQ => {
                self.read_queue_evt(super::RXQ_INDEX);
                // New RX buffers: a waiting frame may fit now, and the tap may be read again.
                self.process_rx();
            }
            TXQ => {
                self.read_queue_evt(super::TXQ_INDEX);
                self.process_tx();
            }
            TAP => {
                self.process_rx();
            }
            RX_CONTINUE => {
                let _ = self.rx_continue_evt.read();
                self.process_rx();
            }
            other => tracing::warn!(data = other, "virtio-net: unexpected event"),
        }
    }
}
