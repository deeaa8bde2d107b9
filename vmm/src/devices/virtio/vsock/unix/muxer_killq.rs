//! The muxer's kill queue: the connections that must end by a deadline (one shutting down,
//! waiting for the guest's RST or for its buffered bytes to drain, `CONN_SHUTDOWN_TIMEOUT`; a
//! host connection request the guest has not answered, `CONN_REQUEST_TIMEOUT`), and the one
//! timerfd that fires at the earliest deadline, host clients' `CONNECT` line deadlines included.
//! Each connection keeps its own deadline (`VsockConnection::expiry`): the kill queue finds the
//! expired ones when the timer fires, so no second copy of a deadline has to be kept in sync.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use vmm_sys_util::timerfd::TimerFd;

use super::muxer::{set_nonblocking, ConnKey};
use crate::devices::virtio::vsock::csm::connection::VsockConnection;
use crate::devices::virtio::vsock::VsockError;

pub(super) struct MuxerKillQ {
    timer: TimerFd,
    /// What the timer is armed for.
    deadline: Option<Instant>,
}

impl MuxerKillQ {
    pub fn new() -> Result<MuxerKillQ, VsockError> {
        let timer = TimerFd::new().map_err(|e| VsockError::Setup("timerfd", e.into()))?;
        // Non-blocking, so that reading a timer that was re-armed meanwhile cannot stall.
        set_nonblocking(timer.as_raw_fd())
            .map_err(|e| VsockError::Setup("timerfd O_NONBLOCK", e))?;
        Ok(MuxerKillQ {
            timer,
            deadline: None,
        })
    }

    /// The timerfd, for the muxer's epoll.
    pub fn as_raw_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// The timer fired: clears its expiration and returns the time to judge deadlines by.
    pub fn fired(&mut self) -> Instant {
        // Non-blocking read: clears the expiration (or fails harmlessly if it was re-armed).
        let _ = self.timer.wait();
        self.deadline = None;
        Instant::now()
    }

    /// The connections whose deadline passed by `now`.
    pub fn expired(conns: &HashMap<ConnKey, VsockConnection>, now: Instant) -> Vec<ConnKey> {
        conns
            .iter()
            .filter(|(_, c)| c.expiry().is_some_and(|e| e <= now))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Arms the timer for the earliest deadline (or disarms it).
    pub fn rearm(&mut self, earliest: Option<Instant>) {
        if earliest == self.deadline {
            return;
        }
        self.deadline = earliest;
        let res = match earliest {
            Some(t) => {
                // A zero duration would disarm the timer: fire in 1 ms at the earliest.
                let d = t
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1));
                self.timer.reset(d, None)
            }
            None => self.timer.clear(),
        };
        if let Err(e) = res {
            tracing::warn!(error = %e, "vsock: cannot arm the timer");
        }
    }
}
