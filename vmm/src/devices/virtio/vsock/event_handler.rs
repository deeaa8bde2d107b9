//! The device's side of the VMM's event loop.
//!
//! Registered at init: the activate eventfd and the muxer's epoll fd. On activation (signalled
//! from the vCPU thread through the activate eventfd) the queue eventfds are added; on reset they
//! are removed again.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Vsock;

const ACTIVATE: u32 = 0;
const RXQ: u32 = 1;
const TXQ: u32 = 2;
const EVQ: u32 = 3;
const BACKEND: u32 = 4;

impl Vsock {
    fn sync_registrations(&mut self, ops: &mut EventOps) {
        for evt in self.stale_evts.drain(..) {
            let _ = ops.remove(Events::empty(&evt));
        }
        if let Some(active) = self.active.as_mut() {
            if !active.registered {
                for (evt, data) in active.queue_evts.iter().zip([RXQ, TXQ, EVQ]) {
                    if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                        tracing::error!(error = ?e, "vsock: cannot watch a queue eventfd");
                    }
                }
                active.registered = true;
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE,
            EventSet::IN,
        )) {
            tracing::error!(error = ?e, "vsock: cannot watch the activate eventfd");
        }
        let backend = self.muxer.as_raw_fd();
        if let Err(e) = ops.add(Events::with_data_raw(backend, BACKEND, EventSet::IN)) {
            tracing::error!(error = ?e, "vsock: cannot watch the muxer");
        }
        self.sync_registrations(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => {
                let _ = self.activate_evt.read();
                self.sync_registrations(ops);
                // Packets queued before activation (host CONNECTs) can go now.
                self.process_queues(true);
            }
            RXQ | TXQ | EVQ => {
                let idx = (events.data() - RXQ) as usize;
                if let Some(active) = self.active.as_ref() {
                    if let Some(evt) = active.queue_evts.get(idx) {
                        let _ = evt.read();
                    }
                }
                match events.data() {
                    RXQ => self.process_queues(false),
                    TXQ => self.process_queues(true),
                    // The only event the device sends is a restore's transport reset: the
                    // guest kicks this queue once it has handled it (see `reset_unacked`).
                    _ => self.check_reset_taken(),
                }
            }
            BACKEND => {
                self.muxer.notify();
                self.process_queues(false);
            }
            other => tracing::warn!(data = other, "vsock: unexpected event"),
        }
    }
}
