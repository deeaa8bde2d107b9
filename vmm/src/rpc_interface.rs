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
use crate::devices::legacy::serial::SerialDevice;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::GuestMemory;
use crate::exit::{ExitReason, ExitState};
use crate::snapshot::{HostIdentity, SnapshotTarget, VmSnapshot};
use crate::sync::LockExt;
use crate::vmm::{VcpuThreads, VmmError};
use crate::vstate::vcpu::{ExitCounters, RunState, VcpuControl};
use crate::vstate::vm::{self, Vm};

/// How long pause waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a snapshot waits for the parked vCPUs to save their state.
const SAVE_TIMEOUT: Duration = Duration::from_secs(30);

/// What a template run's snapshot reads and where it writes (taken by the one `snapshot`).
pub(crate) struct SnapshotParts {
    pub target: SnapshotTarget,
    pub vm: Arc<Vm>,
    pub mem: GuestMemory,
    pub transports: Vec<Arc<Mutex<MmioTransport>>>,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub host: HostIdentity,
}

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
    /// A template run's snapshot (None: not a template run; Some(None): already taken).
    pub snapshot: Option<Mutex<Option<SnapshotParts>>>,
}

impl VmmHandle {
    /// Saves the paused VM into the template's files; the VM then stops.
    fn write_snapshot(&self, p: &SnapshotParts) -> Result<String, String> {
        let started = Instant::now();
        let vcpu_states = self.control.save_all(self.vcpus as usize, SAVE_TIMEOUT)?;
        let vm_state = p.vm.save_state().map_err(|e| e.to_string())?;
        let devices = p
            .transports
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.locked()
                    .save_state()
                    .map_err(|e| format!("virtio device {i}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let snapshot = VmSnapshot {
            vmm_version: env!("CARGO_PKG_VERSION").into(),
            host: p.host.clone(),
            vcpus: self.vcpus,
            memory_mib: self.memory_mib,
            vm: vm_state,
            vcpu_states,
            serial: p.serial.locked().state(),
            i8042: self.i8042.locked().state(),
            devices,
        };
        let mem_bytes = vm::save_memory(&p.mem, &p.target.memory).map_err(|e| e.to_string())?;
        let state_bytes = p.target.write_state(&snapshot).map_err(|e| e.to_string())?;
        Ok(format!(
            "snapshot in {}: state {state_bytes} bytes, memory {} MiB written of {} MiB, {} ms",
            p.target.dir.display(),
            mem_bytes >> 20,
            self.memory_mib,
            started.elapsed().as_millis()
        ))
    }
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

    fn snapshot(&self) -> Result<(), String> {
        let Some(slot) = &self.snapshot else {
            return Err("this VM was not started as a template (snapshot_to)".into());
        };
        let Some(parts) = slot.locked().take() else {
            return Err("the snapshot was taken already".into());
        };
        self.pause()?;
        match self.write_snapshot(&parts) {
            Ok(summary) => {
                tracing::info!("{summary}");
                self.exit.request(ExitReason::Snapshot);
                Ok(())
            }
            Err(e) => {
                // A half-written template is of no use: the VM stops, the caller removes it.
                self.exit
                    .request(ExitReason::Internal(format!("snapshot failed: {e}")));
                Err(format!("snapshot failed: {e}"))
            }
        }
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
