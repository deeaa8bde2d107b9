//! The VM's controller: what the API socket drives ([`VmmHandle`], the `VmController` of the
//! API server) and the event loop's own events ([`ControlSubscriber`]: the exit eventfd,
//! SIGTERM/SIGINT, the shutdown grace timer). Firecracker calls this `rpc_interface`.

use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vmm_sys_util::timerfd::TimerFd;

use crate::api::{ExitCounts, VmController, VmStats};
use crate::devices::legacy::i8042::I8042;
use crate::exit::{ExitReason, ExitState};
use crate::sync::LockExt;
use crate::vmm::{VcpuThreads, VmmError};
use crate::vstate::vcpu::{ExitCounters, RunState, VcpuControl};

/// How long pause waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the API (and the event loop) control the VM through.
pub(crate) struct VmmHandle {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub start: Instant,
    pub control: Arc<VcpuControl>,
    pub threads: Arc<VcpuThreads>,
    pub counters: Arc<ExitCounters>,
    pub exit: Arc<ExitState>,
    pub i8042: Arc<Mutex<I8042>>,
    pub shutdown_timer: Arc<Mutex<TimerFd>>,
    /// `VmConfig::test_hooks`.
    pub test_hooks: bool,
}

impl VmController for VmmHandle {
    fn seccomp_probe(&self) -> Result<(), String> {
        if !self.test_hooks {
            return Err("seccomp_probe is a test hook this VM was not configured with".into());
        }
        tracing::warn!("test hook: a system call outside the event loop's allowlist");
        // SAFETY: syslog(SYSLOG_ACTION_SIZE_BUFFER): reads a size, no pointer is passed. No
        // allowlist has it: under seccomp the process ends here with exit status 5.
        let n = unsafe { libc::syscall(libc::SYS_syslog, 10, 0, 0) };
        Err(format!(
            "the call ran (returned {n}): this thread is not under seccomp"
        ))
    }

    fn pause(&self) -> Result<(), String> {
        match self.control.state() {
            RunState::Paused => return Ok(()),
            RunState::Stopping => return Err("the VM is stopping".into()),
            RunState::Running => {}
        }
        self.control.set_state(RunState::Paused);
        self.threads.kick_all();
        if self.control.wait_paused(self.vcpus as usize, PAUSE_TIMEOUT) {
            Ok(())
        } else {
            self.control.set_state(RunState::Running);
            Err(format!(
                "the vCPUs did not pause within {} s",
                PAUSE_TIMEOUT.as_secs()
            ))
        }
    }

    fn resume(&self) -> Result<(), String> {
        match self.control.state() {
            RunState::Stopping => Err("the VM is stopping".into()),
            _ => {
                self.control.set_state(RunState::Running);
                Ok(())
            }
        }
    }

    fn shutdown(&self, timeout_ms: u64) -> Result<(), String> {
        if self.control.state() == RunState::Stopping {
            return Ok(());
        }
        self.exit.note_api_shutdown();
        if timeout_ms == 0 {
            self.exit.request(ExitReason::ApiShutdown { forced: true });
            return Ok(());
        }
        // A paused guest cannot react: let it run.
        self.control.set_state(RunState::Running);
        let sent = self.i8042.locked().send_ctrl_alt_del();
        if !sent {
            tracing::warn!("shutdown: the guest is not reading its keyboard");
        }
        self.shutdown_timer
            .locked()
            .reset(Duration::from_millis(timeout_ms), None)
            .map_err(|e| format!("cannot arm the shutdown timer: {e}"))
    }

    fn stats(&self) -> VmStats {
        let c = &self.counters;
        let l = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        VmStats {
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            uptime_ms: self.start.elapsed().as_millis() as u64,
            state: self.control.state(),
            exits: ExitCounts {
                io_in: l(&c.io_in),
                io_out: l(&c.io_out),
                mmio_read: l(&c.mmio_read),
                mmio_write: l(&c.mmio_write),
                other: l(&c.other),
            },
        }
    }

    fn state(&self) -> RunState {
        self.control.state()
    }
}

/// The event loop's own events: the exit eventfd, SIGTERM/SIGINT, the shutdown grace timer.
pub(crate) struct ControlSubscriber {
    pub exit: Arc<ExitState>,
    pub signals: SignalFd,
    pub timer: Arc<Mutex<TimerFd>>,
    pub timer_fd: i32,
}

impl MutEventSubscriber for ControlSubscriber {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.exit.eventfd().as_raw_fd() {
            let _ = self.exit.eventfd().read();
        } else if fd == self.signals.as_raw_fd() {
            if let Ok(Some(info)) = self.signals.read_signal() {
                self.exit.request(ExitReason::Signal(info.ssi_signo as i32));
            }
        } else if fd == self.timer_fd {
            let _ = self.timer.locked().wait();
            self.exit.request(ExitReason::ApiShutdown { forced: true });
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        for fd in [
            self.exit.eventfd().as_raw_fd(),
            self.signals.as_raw_fd(),
            self.timer_fd,
        ] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                tracing::error!("cannot watch a control fd: {e:?}");
            }
        }
    }
}

/// Blocks SIGTERM and SIGINT in this thread (and so in every thread it starts) and returns a
/// signalfd that receives them.
pub(crate) fn signal_fd() -> Result<SignalFd, VmmError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(VmmError::Signals)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(VmmError::Signals)
}
