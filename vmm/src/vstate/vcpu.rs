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

use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_run, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use serde::{Deserialize, Serialize};

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
    #[error("vCPU {id}: {what}")]
    State { id: u8, what: String },
}

/// What the vCPUs should be doing (plain data shared with the API: `hull_vmm_api::RunState`).
pub use hull_vmm_api::RunState;

struct ControlInner {
    state: RunState,
    paused: usize,
    /// Bumped by [`VcpuControl::save_all`]: every parked vCPU saves its state once per value.
    save_generation: u64,
    /// What the parked vCPUs saved for the current generation.
    saved: Vec<Result<VcpuState, String>>,
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
                save_generation: 0,
                saved: Vec::new(),
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
    /// While parked, the thread runs `save` once for each [`VcpuControl::save_all`].
    fn vcpu_checkpoint(&self, save: &mut dyn FnMut() -> Result<VcpuState, String>) -> bool {
        // The controller stores the new state before kicking the thread, so a vCPU that misses
        // it here leaves KVM_RUN at once (immediate_exit) and sees it on the next pass.
        if self.running.load(Ordering::SeqCst) {
            return true;
        }
        let mut g = self.lock();
        if g.state == RunState::Paused {
            g.paused += 1;
            self.cv.notify_all();
            let mut seen = g.save_generation;
            while g.state == RunState::Paused {
                if g.save_generation != seen {
                    seen = g.save_generation;
                    drop(g);
                    let r = save();
                    g = self.lock();
                    if g.save_generation == seen {
                        g.saved.push(r);
                        self.cv.notify_all();
                    }
                    continue;
                }
                g = self.cv.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
            g.paused -= 1;
        }
        g.state != RunState::Stopping
    }

    /// Has each of the `n` parked vCPUs save its state (on its own thread, which owns its vCPU
    /// fd), waiting at most `timeout`; the states come back ordered by vCPU id. The vCPUs must
    /// all be paused (`wait_paused`).
    pub fn save_all(&self, n: usize, timeout: Duration) -> Result<Vec<VcpuState>, String> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        if g.state != RunState::Paused || g.paused < n {
            return Err("the vCPUs are not all paused".into());
        }
        g.save_generation += 1;
        g.saved.clear();
        self.cv.notify_all();
        while g.saved.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || g.state != RunState::Paused {
                return Err(format!(
                    "{} of {n} vCPUs saved their state within {} s",
                    g.saved.len(),
                    timeout.as_secs()
                ));
            }
            g = self
                .cv
                .wait_timeout(g, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        let mut states = std::mem::take(&mut g.saved)
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;
        states.sort_by_key(|s| s.id);
        Ok(states)
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
    /// A template run: the MSRs a vCPU saves (KVM_GET_MSR_INDEX_LIST). None: this VM is never
    /// snapshotted.
    pub msr_list: Option<Arc<[u32]>>,
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

/// MSRs read or written per KVM_GET_MSRS / KVM_SET_MSRS call (below KVM's limit of 256).
const MSR_CHUNK: usize = 128;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

/// MSRs a snapshot keeps beyond KVM_GET_MSR_INDEX_LIST, which leaves out the MTRRs (QEMU and
/// Firecracker save them too): the default type (0x2ff, set at boot: MTRRs on, write-back),
/// the fixed ranges, and the variable ranges' base/mask pairs.
pub fn snapshot_msr_list(kvm_list: &[u32]) -> Vec<u32> {
    let mtrrs = [0x2ff, 0x250, 0x258, 0x259]
        .into_iter()
        .chain(0x268..=0x26f)
        .chain(0x200..=0x20f);
    let mut all: Vec<u32> = kvm_list.to_vec();
    for m in mtrrs {
        if !all.contains(&m) {
            all.push(m);
        }
    }
    all
}

/// Everything KVM holds of one vCPU, as a snapshot keeps it (Firecracker's `VcpuState`): what
/// `KVM_GET_*` return, in the order `restore` gives them back.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub id: u8,
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub msrs: Vec<kvm_msr_entry>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub mp_state: kvm_mp_state,
    pub events: kvm_vcpu_events,
    /// The guest TSC's frequency, when KVM tells it.
    pub tsc_khz: Option<u32>,
}

/// `msr_list` reordered for a restore: the TSC first and the TSC deadline last (a deadline is
/// read against the TSC, so it must be set after it, as Firecracker does).
pub fn msr_restore_order(mut msrs: Vec<kvm_msr_entry>) -> Vec<kvm_msr_entry> {
    let rank = |i: u32| match i {
        MSR_IA32_TSC => 0,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 1,
    };
    msrs.sort_by_key(|e| rank(e.index));
    msrs
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

    /// Reads the vCPU's whole state (see [`VcpuState`]). `msr_list` is what KVM can save
    /// (KVM_GET_MSR_INDEX_LIST); an MSR KVM then refuses to read is left out and logged. The
    /// vCPU must not be running, and a pending MMIO or port exit must have been completed first
    /// (see `complete_pending_exit`).
    pub fn save_state(&self, msr_list: &[u32]) -> Result<VcpuState, VcpuError> {
        let id = self.id;
        let kvm = |what: &'static str| {
            move |e: kvm_ioctls::Error| VcpuError::State {
                id,
                what: format!("{what} failed: {e}"),
            }
        };
        let cpuid = self
            .fd
            .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_CPUID2"))?
            .as_slice()
            .to_vec();
        let mut msrs = Vec::with_capacity(msr_list.len());
        let mut skipped = Vec::new();
        let mut rest: Vec<u32> = msr_list.to_vec();
        while !rest.is_empty() {
            let n = rest.len().min(MSR_CHUNK);
            let entries: Vec<kvm_msr_entry> = rest[..n]
                .iter()
                .map(|&index| kvm_msr_entry {
                    index,
                    ..Default::default()
                })
                .collect();
            let mut buf = Msrs::from_entries(&entries).map_err(|e| VcpuError::State {
                id,
                what: format!("MSR list: {e:?}"),
            })?;
            let read = self.fd.get_msrs(&mut buf).map_err(kvm("KVM_GET_MSRS"))?;
            msrs.extend_from_slice(&buf.as_slice()[..read.min(n)]);
            // KVM stops at the first MSR it cannot read: skip that one.
            let next = if read < n {
                skipped.push(rest[read]);
                read + 1
            } else {
                n
            };
            rest.drain(..next);
        }
        if !skipped.is_empty() {
            tracing::debug!("vCPU {id}: MSRs KVM lists but does not read: {skipped:x?}");
        }
        let tsc_khz = match self.fd.get_tsc_khz() {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::debug!("vCPU {id}: KVM_GET_TSC_KHZ: {e}");
                None
            }
        };
        Ok(VcpuState {
            id,
            cpuid,
            msrs: msr_restore_order(msrs),
            regs: self.fd.get_regs().map_err(kvm("KVM_GET_REGS"))?,
            sregs: self.fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?,
            xsave: self.fd.get_xsave().map_err(kvm("KVM_GET_XSAVE"))?,
            xcrs: self.fd.get_xcrs().map_err(kvm("KVM_GET_XCRS"))?,
            debugregs: self.fd.get_debug_regs().map_err(kvm("KVM_GET_DEBUGREGS"))?,
            lapic: self.fd.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?,
            mp_state: self.fd.get_mp_state().map_err(kvm("KVM_GET_MP_STATE"))?,
            events: self
                .fd
                .get_vcpu_events()
                .map_err(kvm("KVM_GET_VCPU_EVENTS"))?,
            tsc_khz,
        })
    }

    /// Gives a new vCPU the state `s` (Firecracker's order: TSC rate, CPUID, registers,
    /// FPU/XSAVE, XCRs, debug registers, LAPIC, MSRs, MP state, pending events). Every MSR must
    /// be taken.
    pub fn restore_state(&self, s: &VcpuState) -> Result<(), VcpuError> {
        let id = self.id;
        let kvm = |what: &'static str| {
            move |e: kvm_ioctls::Error| VcpuError::State {
                id,
                what: format!("{what} failed: {e}"),
            }
        };
        if let Some(khz) = s.tsc_khz {
            let here = self.fd.get_tsc_khz().ok();
            if here != Some(khz) {
                // A host whose TSC runs at another rate: KVM scales the guest's when it can.
                self.fd.set_tsc_khz(khz).map_err(|e| VcpuError::State {
                    id,
                    what: format!(
                        "the snapshot's TSC runs at {khz} kHz, this host's at {here:?} kHz, and                          KVM cannot scale it: {e}"
                    ),
                })?;
            }
        }
        let cpuid = CpuId::from_entries(&s.cpuid).map_err(|e| VcpuError::State {
            id,
            what: format!("CPUID: {e:?}"),
        })?;
        self.fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
        self.fd.set_regs(&s.regs).map_err(kvm("KVM_SET_REGS"))?;
        self.fd.set_sregs(&s.sregs).map_err(kvm("KVM_SET_SREGS"))?;
        // SAFETY: `s.xsave` is a whole `kvm_xsave` (4 KiB), what KVM_SET_XSAVE reads; the
        // snapshot's CPUID (set above) is this host's (checked before the restore), so its
        // XSAVE layout is one KVM accepts for this vCPU.
        unsafe { self.fd.set_xsave(&s.xsave) }.map_err(kvm("KVM_SET_XSAVE"))?;
        self.fd.set_xcrs(&s.xcrs).map_err(kvm("KVM_SET_XCRS"))?;
        self.fd
            .set_debug_regs(&s.debugregs)
            .map_err(kvm("KVM_SET_DEBUGREGS"))?;
        self.fd.set_lapic(&s.lapic).map_err(kvm("KVM_SET_LAPIC"))?;
        // After the LAPIC: KVM takes a TSC deadline only while the LAPIC timer is in
        // TSC-deadline mode, so set before it, the deadline is dropped and the guest's timer
        // never fires again.
        for chunk in s.msrs.chunks(MSR_CHUNK) {
            let msrs = Msrs::from_entries(chunk).map_err(|e| VcpuError::State {
                id,
                what: format!("MSRs: {e:?}"),
            })?;
            let set = self.fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
            if set < chunk.len() {
                return Err(VcpuError::State {
                    id,
                    what: format!("KVM refused MSR {:#x}", chunk[set].index),
                });
            }
        }
        self.fd
            .set_mp_state(s.mp_state)
            .map_err(kvm("KVM_SET_MP_STATE"))?;
        self.fd
            .set_vcpu_events(&s.events)
            .map_err(kvm("KVM_SET_VCPU_EVENTS"))?;
        Ok(())
    }

    /// Lets KVM finish the instruction of the last MMIO or port exit (its result is written
    /// to the guest's registers only on the next KVM_RUN): one KVM_RUN that returns at once
    /// (`immediate_exit`), as the KVM API asks before the state is read.
    fn complete_pending_exit(&mut self) -> Result<(), VcpuError> {
        self.fd.set_kvm_immediate_exit(1);
        let r = match self.fd.run() {
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Ok(()),
            Err(e) => Err(format!("KVM_RUN to complete an exit: {e}")),
            // A new exit (the rest of a split access, a string I/O): the instruction is not
            // complete, and a snapshot now would resume it half done.
            Ok(exit) => Err(format!(
                "KVM_RUN with immediate_exit returned an exit ({exit:?}): an instruction is \
                 half done"
            )),
        };
        self.fd.set_kvm_immediate_exit(0);
        r.map_err(|what| VcpuError::State { id: self.id, what })
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
        let msr_list = ctx.msr_list.clone();
        let control = ctx.control.clone();
        loop {
            let mut save = || match &msr_list {
                Some(list) => self
                    .complete_pending_exit()
                    .and_then(|()| self.save_state(list))
                    .map_err(|e| e.to_string()),
                None => Err("this VM was not started as a template (snapshot_to)".to_string()),
            };
            if !control.vcpu_checkpoint(&mut save) || ctx.exit.is_requested() {
                break;
            }
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

    fn no_save() -> Result<VcpuState, String> {
        Err("no vCPU here".into())
    }

    #[test]
    fn pause_resume_stop() {
        let ctl = Arc::new(VcpuControl::default());
        assert!(ctl.vcpu_checkpoint(&mut no_save));
        ctl.set_state(RunState::Paused);
        let c2 = ctl.clone();
        let t = std::thread::spawn(move || c2.vcpu_checkpoint(&mut no_save));
        assert!(ctl.wait_paused(1, Duration::from_secs(10)));
        ctl.set_state(RunState::Running);
        assert!(t.join().unwrap());
        ctl.set_state(RunState::Paused);
        let c3 = ctl.clone();
        let t = std::thread::spawn(move || c3.vcpu_checkpoint(&mut no_save));
        assert!(ctl.wait_paused(1, Duration::from_secs(10)));
        ctl.set_state(RunState::Stopping);
        assert!(!t.join().unwrap());
        // Stopping is final.
        ctl.set_state(RunState::Running);
        assert_eq!(ctl.state(), RunState::Stopping);
        assert!(!ctl.wait_paused(1, Duration::from_millis(10)));
    }

    fn state(id: u8) -> VcpuState {
        VcpuState {
            id,
            cpuid: Vec::new(),
            msrs: Vec::new(),
            regs: Default::default(),
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debugregs: Default::default(),
            lapic: Default::default(),
            mp_state: Default::default(),
            events: Default::default(),
            tsc_khz: Some(1000),
        }
    }

    #[test]
    fn parked_vcpus_each_save_once_per_request() {
        let ctl = Arc::new(VcpuControl::default());
        assert!(
            ctl.save_all(1, Duration::from_millis(10)).is_err(),
            "running vCPUs"
        );
        ctl.set_state(RunState::Paused);
        let saves = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = [1u8, 0]
            .into_iter()
            .map(|id| {
                let (c, n) = (ctl.clone(), saves.clone());
                std::thread::spawn(move || {
                    c.vcpu_checkpoint(&mut || {
                        n.fetch_add(1, Ordering::SeqCst);
                        Ok(state(id))
                    })
                })
            })
            .collect();
        assert!(ctl.wait_paused(2, Duration::from_secs(10)));
        let s = ctl.save_all(2, Duration::from_secs(10)).unwrap();
        assert_eq!(s.iter().map(|s| s.id).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(saves.load(Ordering::SeqCst), 2);
        let again = ctl.save_all(2, Duration::from_secs(10)).unwrap();
        assert_eq!(again.len(), 2);
        assert_eq!(saves.load(Ordering::SeqCst), 4);
        ctl.set_state(RunState::Stopping);
        for t in threads {
            assert!(!t.join().unwrap());
        }
    }

    #[test]
    fn a_vcpu_that_cannot_save_fails_the_request_and_one_that_never_parks_times_out() {
        let ctl = Arc::new(VcpuControl::default());
        ctl.set_state(RunState::Paused);
        let c = ctl.clone();
        let t = std::thread::spawn(move || c.vcpu_checkpoint(&mut no_save));
        assert!(ctl.wait_paused(1, Duration::from_secs(10)));
        let e = ctl.save_all(1, Duration::from_secs(10)).unwrap_err();
        assert_eq!(e, "no vCPU here");
        let e = ctl.save_all(2, Duration::from_millis(50)).unwrap_err();
        assert!(e.contains("not all paused"), "{e}");
        ctl.set_state(RunState::Stopping);
        assert!(!t.join().unwrap());
    }

    #[test]
    fn the_mtrrs_are_saved_with_what_kvm_lists() {
        let l = snapshot_msr_list(&[0x10, 0x2ff, 0x174]);
        assert_eq!(&l[..3], &[0x10, 0x2ff, 0x174]);
        assert_eq!(l.iter().filter(|&&m| m == 0x2ff).count(), 1);
        for m in [0x250, 0x258, 0x259, 0x268, 0x26f, 0x200, 0x20f] {
            assert!(l.contains(&m), "{m:#x}");
        }
    }

    #[test]
    fn the_tsc_is_restored_first_and_its_deadline_last() {
        let e = |index| kvm_msr_entry {
            index,
            ..Default::default()
        };
        let order: Vec<u32> = msr_restore_order(vec![
            e(MSR_IA32_TSC_DEADLINE),
            e(0x174),
            e(MSR_IA32_TSC),
            e(0xc000_0082),
        ])
        .iter()
        .map(|m| m.index)
        .collect();
        assert_eq!(
            order,
            vec![MSR_IA32_TSC, 0x174, 0xc000_0082, MSR_IA32_TSC_DEADLINE]
        );
    }

    #[test]
    fn a_vcpu_state_survives_serialization() {
        let mut s = state(3);
        s.regs.rip = 0xffff_ffff_8100_0000;
        s.xsave.region[7] = 0xdead_beef;
        s.lapic.regs[0x20] = 5;
        let back: VcpuState = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(back.regs.rip, s.regs.rip);
        assert_eq!(back.xsave.region[7], 0xdead_beef);
        assert_eq!(back.lapic.regs[0x20], 5);
        assert_eq!((back.id, back.tsc_khz), (3, Some(1000)));
    }
}
