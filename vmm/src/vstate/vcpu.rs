//! vCPUs: set-up (CPUID, MSRs, LAPIC, boot registers) and the run loop on one thread each.
//!
//! Pausing and stopping: the controller changes [`VcpuControl`]'s state and sends each vCPU
//! thread the kick signal. The signal handler sets `kvm_run.immediate_exit`, so KVM_RUN returns
//! EINTR whether the signal arrived during KVM_RUN or just before it; the thread then sees the
//! new state at the top of its loop.

use crate::sync::LockExt;
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_run, CpuId};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::Serialize;

use super::vm::Vm;
use crate::arch::x86_64::{cpuid, interrupts, msr, regs};
use crate::devices::bus::Bus;
use crate::devices::virtio::GuestMemory;
use crate::exit::{ExitReason, ExitState};

/// Errors setting up a vCPU.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {id}: {source}")]
    Create {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: {what} failed: {source}")]
    Kvm {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("vCPU {id}: {source}")]
    Msr {
        id: u8,
        #[source]
        source: msr::MsrError,
    },
    #[error("vCPU {id}: {source}")]
    Regs {
        id: u8,
        #[source]
        source: regs::RegsError,
    },
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(#[source] vmm_sys_util::errno::Error),
}

/// What the vCPUs should be doing (plain data shared with the API: `hull_vmm_api::RunState`).
pub use hull_vmm_api::RunState;

struct ControlInner {
    state: RunState,
    paused: usize,
}

/// Run/pause/stop control shared by the VMM and its vCPU threads.
pub struct VcpuControl {
    inner: Mutex<ControlInner>,
    cv: Condvar,
    /// True while the state is Running: the vCPUs' lock-free fast path on every VM exit.
    running: AtomicBool,
}

impl Default for VcpuControl {
    fn default() -> Self {
        VcpuControl {
            inner: Mutex::new(ControlInner {
                state: RunState::Running,
                paused: 0,
            }),
            cv: Condvar::new(),
            running: AtomicBool::new(true),
        }
    }
}

impl VcpuControl {
    fn lock(&self) -> std::sync::MutexGuard<'_, ControlInner> {
        self.inner.locked()
    }

    pub fn state(&self) -> RunState {
        self.lock().state
    }

    /// Sets the state and wakes waiting vCPUs (the caller kicks the running ones).
    pub fn set_state(&self, state: RunState) {
        let mut g = self.lock();
        if g.state != RunState::Stopping {
            g.state = state;
        }
        self.running
            .store(g.state == RunState::Running, Ordering::SeqCst);
        self.cv.notify_all();
    }

    /// Called by a vCPU thread before KVM_RUN: blocks while paused; false when it must stop.
    fn vcpu_checkpoint(&self) -> bool {
        // The controller stores the new state before kicking the thread, so a vCPU that misses
        // it here leaves KVM_RUN at once (immediate_exit) and sees it on the next pass.
        if self.running.load(Ordering::SeqCst) {
            return true;
        }
        let mut g = self.lock();
        if g.state == RunState::Paused {
            g.paused += 1;
            self.cv.notify_all();
            while g.state == RunState::Paused {
                g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
            g.paused -= 1;
        }
        g.state != RunState::Stopping
    }

    /// Waits until `n` vCPUs are parked, at most `timeout`.
    pub fn wait_paused(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        while g.paused < n && g.state == RunState::Paused {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        g.paused >= n
    }
}

/// VM exit counters (all vCPUs together).
#[derive(Default, Serialize)]
pub struct ExitCounters {
    pub io_in: AtomicU64,
    pub io_out: AtomicU64,
    pub mmio_read: AtomicU64,
    pub mmio_write: AtomicU64,
    pub other: AtomicU64,
}

impl ExitCounters {
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// What every vCPU thread shares.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub exit: Arc<ExitState>,
    pub control: Arc<VcpuControl>,
    pub counters: Arc<ExitCounters>,
    /// When hull-vmm began building the VM: the boot timeline's zero (debug log).
    pub started: std::time::Instant,
}

thread_local! {
    static KVM_RUN_PTR: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let p = KVM_RUN_PTR.with(|c| c.get());
    if !p.is_null() {
        // SAFETY: the pointer is this thread's own kvm_run mapping, set by `Vcpu::run` while
        // the VcpuFd (which owns the mapping) is alive and cleared before it is dropped, so the
        // field address is in bounds.
        let field = unsafe { std::ptr::addr_of_mut!((*p).immediate_exit) };
        // SAFETY: `field` points into the live kvm_run mapping (above); a volatile byte store is
        // async-signal-safe.
        unsafe { field.write_volatile(1) };
    }
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

/// Installs the kick signal handler (once per process).
pub fn register_kick_handler() -> Result<(), VcpuError> {
    vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick)
        .map_err(VcpuError::Signal)
}

/// One vCPU.
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
}

impl Vcpu {
    pub fn new(vm: &Vm, id: u8) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        Ok(Vcpu { id, fd })
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// CPUID, MSRs, FPU and LAPIC for every vCPU. The boot vCPU then gets its registers from
    /// [`Vcpu::set_boot_entry`]; the others wait for INIT/SIPI from it.
    pub fn configure(
        &self,
        base_cpuid: &CpuId,
        host: cpuid::HostFeatures,
        cpu_count: u8,
    ) -> Result<(), VcpuError> {
        let id = self.id;
        let kvm = |what: &'static str| move |source| VcpuError::Kvm { id, what, source };
        let mut c = base_cpuid.clone();
        cpuid::adjust(&mut c, id, cpu_count, host);
        self.fd.set_cpuid2(&c).map_err(kvm("KVM_SET_CPUID2"))?;
        msr::setup_msrs(&self.fd).map_err(|source| VcpuError::Msr { id, source })?;
        regs::setup_fpu(&self.fd).map_err(|source| VcpuError::Regs { id, source })?;
        interrupts::set_lint(&self.fd).map_err(kvm("KVM_SET_LAPIC"))?;
        Ok(())
    }

    /// The boot vCPU's registers: the kernel's entry point in the state its boot protocol
    /// wants (and the GDT and, for the 64-bit protocol, page tables in guest memory).
    pub fn set_boot_entry(
        &self,
        mem: &GuestMemory,
        protocol: regs::BootProtocol,
        entry: u64,
    ) -> Result<(), VcpuError> {
        regs::setup_boot_vcpu(&self.fd, mem, protocol, entry).map_err(|source| VcpuError::Regs {
            id: self.id,
            source,
        })
    }

    /// The vCPU thread's body: runs the guest until the VM stops.
    pub fn run(mut self, ctx: VcpuContext) {
        let run_ptr: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN_PTR.with(|c| c.set(run_ptr));
        tracing::debug!(
            "vCPU {}: first guest entry at {:?}",
            self.id,
            ctx.started.elapsed()
        );
        while ctx.control.vcpu_checkpoint() && !ctx.exit.is_requested() {
            match self.fd.run() {
                Ok(exit) => {
                    if let Some(reason) = handle_exit(self.id, exit, &ctx) {
                        ctx.exit.request(reason);
                    }
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    ExitCounters::bump(&ctx.counters.other);
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(e) => {
                    ctx.exit.request(ExitReason::Internal(format!(
                        "vCPU {}: KVM_RUN failed: {e}",
                        self.id
                    )));
                }
            }
        }
        KVM_RUN_PTR.with(|c| c.set(std::ptr::null_mut()));
    }
}

/// Whether a vCPU has written to a port yet (one VM per process).
static FIRST_IO_OUT: AtomicBool = AtomicBool::new(false);

/// Handles one VM exit; Some(reason) when the VM must stop.
fn handle_exit(id: u8, exit: VcpuExit<'_>, ctx: &VcpuContext) -> Option<ExitReason> {
    let c = &ctx.counters;
    match exit {
        VcpuExit::IoIn(port, data) => {
            ExitCounters::bump(&c.io_in);
            if !ctx.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            None
        }
        VcpuExit::IoOut(port, data) => {
            ExitCounters::bump(&c.io_out);
            if !FIRST_IO_OUT.load(Ordering::Relaxed) && !FIRST_IO_OUT.swap(true, Ordering::Relaxed)
            {
                // For the boot timeline (make bench): the guest's first port write is its serial
                // console being set up, right after its clock started.
                tracing::debug!(
                    "vCPU {id}: first port write ({port:#x}) at {:?}",
                    ctx.started.elapsed()
                );
            }
            ctx.pio.write(u64::from(port), data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            ExitCounters::bump(&c.mmio_read);
            if !ctx.mmio.read(addr, data) {
                data.fill(0);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            ExitCounters::bump(&c.mmio_write);
            ctx.mmio.write(addr, data);
            None
        }
        VcpuExit::Shutdown => {
            ctx.exit.triple_fault(id);
            None
        }
        VcpuExit::SystemEvent(kind, _) => match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Some(ExitReason::GuestPowerOff),
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                ctx.exit.guest_reset();
                None
            }
            kvm_bindings::KVM_SYSTEM_EVENT_CRASH => Some(ExitReason::GuestPanic(format!(
                "KVM crash event on vCPU {id}"
            ))),
            other => Some(ExitReason::Internal(format!(
                "vCPU {id}: unknown KVM system event {other}"
            ))),
        },
        VcpuExit::Intr => {
            ExitCounters::bump(&c.other);
            None
        }
        VcpuExit::Hlt => Some(ExitReason::Internal(format!(
            "vCPU {id} halted outside the in-kernel irqchip"
        ))),
        VcpuExit::FailEntry(reason, cpu) => Some(ExitReason::Internal(format!(
            "vCPU {id}: KVM entry failed (hardware reason {reason:#x}, cpu {cpu})"
        ))),
        VcpuExit::InternalError => Some(ExitReason::Internal(format!(
            "vCPU {id}: KVM internal error (emulation failure)"
        ))),
        other => Some(ExitReason::Internal(format!(
            "vCPU {id}: unexpected VM exit {other:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_resume_stop() {
        let ctl = Arc::new(VcpuControl::default());
        assert!(ctl.vcpu_checkpoint());
        ctl.set_state(RunState::Paused);
        let c2 = ctl.clone();
        let t = std::thread::spawn(move || c2.vcpu_checkpoint());
        assert!(ctl.wait_paused(1, Duration::from_secs(10)));
        ctl.set_state(RunState::Running);
        assert!(t.join().unwrap());
        ctl.set_state(RunState::Paused);
        let c3 = ctl.clone();
        let t = std::thread::spawn(move || c3.vcpu_checkpoint());
        assert!(ctl.wait_paused(1, Duration::from_secs(10)));
        ctl.set_state(RunState::Stopping);
        assert!(!t.join().unwrap());
        // Stopping is final.
        ctl.set_state(RunState::Running);
        assert_eq!(ctl.state(), RunState::Stopping);
        assert!(!ctl.wait_paused(1, Duration::from_millis(10)));
    }
}
