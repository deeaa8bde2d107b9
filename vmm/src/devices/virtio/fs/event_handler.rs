//! The device's side of the VMM's event loop.
//!
//! Only the activate eventfd is registered: `activate` runs on a vCPU thread and signals it;
//! `process` (event loop thread) then starts the worker threads, which wait on the queue
//! eventfds themselves. No file system call ever runs on the event loop.

use event_manager::{EventOps, Events, MutEventSubscriber};
use vmm_sys_util::epoll::EventSet;

use super::device::Fs;

const ACTIVATE: u32 = 0;

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(
            &self.activate_evt,
            ACTIVATE,
            EventSet::IN,
        )) {
            tracing::error!(error = ?e, "virtio-fs: cannot watch the activate eventfd");
        }
        // An activation before the loop ran (a restored VM's, made while hull-vmm is built)
        // left the activate eventfd readable: `process` starts the workers on the loop's first
        // pass, inside the jail. Starting them here would make threads before the jail.
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            ACTIVATE => {
                let _ = self.activate_evt.read();
                self.start_workers();
            }
            other => tracing::warn!(data = other, "virtio-fs: unexpected event"),
        }
    }
}
