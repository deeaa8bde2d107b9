//! Building and running one VM: [`run`] validates the configuration, creates the VM, its
//! devices and vCPU threads, runs the event loop until the VM stops, and cleans up.

use crate::sync::LockExt;
use std::fs::{File, OpenOptions};
use std::io::LineWriter;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::IoEventAddress;
use linux_loader::loader::Cmdline;
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::signal::Killable;
use vmm_sys_util::timerfd::TimerFd;

use crate::api::{self, ApiServer, ExitCounts, VmController, VmStats};
use crate::arch::x86_64::{boot, layout, mptable};
use crate::config::{BootProtocolConfig, ConfigError, SerialConfig, VmConfig};
use crate::devices::bus::Bus;
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::serial::{SerialDevice, SerialOut, SerialSink};
use crate::devices::legacy::EventFdTrigger;
use crate::devices::virtio::mmio::{MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::{GuestMemory, VirtioDevice};
use crate::exit::{ExitReason, ExitState};
use crate::vstate::vcpu::{self, ExitCounters, RunState, Vcpu, VcpuContext, VcpuControl};
use crate::vstate::vm::{self, Vm};

/// How long pause waits for every vCPU to park.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors building or running a VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error(transparent)]
    Vcpu(#[from] vcpu::VcpuError),
    #[error(transparent)]
    Boot(#[from] boot::BootError),
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error("virtio device: {0}")]
    Mmio(#[from] crate::devices::virtio::mmio::MmioError),
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    #[error(
        "too many virtio devices (at most {})",
        layout::VIRTIO_MMIO_MAX_DEVICES
    )]
    TooManyDevices,
    #[error("cannot open {what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("device bus: {0}")]
    Bus(#[from] crate::devices::bus::BusError),
    #[error("signals: {0}")]
    Signals(#[source] nix::Error),
    #[error("event loop: {0:?}")]
    EventLoop(event_manager::Error),
    #[error("vsock: {0}")]
    Vsock(String),
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Removes the sockets the VMM created, however `run` ends.
#[derive(Default)]
struct SocketCleanup(Vec<PathBuf>);

impl Drop for SocketCleanup {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Err(e) = std::fs::remove_file(p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!("cannot remove {}: {e}", p.display());
                }
            }
        }
    }
}

/// The vCPU threads, kept behind a mutex so that kicking and joining never race.
#[derive(Default)]
struct VcpuThreads(Mutex<Vec<JoinHandle<()>>>);

impl VcpuThreads {
    fn kick_all(&self) {
        let g = self.0.locked();
        for h in g.iter() {
            if let Err(e) = h.kill(vcpu::kick_signal()) {
                tracing::warn!("cannot kick a vCPU thread: {e}");
            }
        }
    }

    fn join_all(&self) {
        let handles: Vec<_> = std::mem::take(&mut *self.0.locked());
        for h in handles {
            if h.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
    }
}

/// What the API (and the event loop) control the VM through.
struct VmmHandle {
    vcpus: u32,
    memory_mib: u64,
    start: Instant,
    control: Arc<VcpuControl>,
    threads: Arc<VcpuThreads>,
    counters: Arc<ExitCounters>,
    exit: Arc<ExitState>,
    i8042: Arc<Mutex<I8042>>,
    shutdown_timer: Arc<Mutex<TimerFd>>,
}

impl VmController for VmmHandle {
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
struct ControlSubscriber {
    exit: Arc<ExitState>,
    signals: SignalFd,
    timer: Arc<Mutex<TimerFd>>,
    timer_fd: i32,
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
fn signal_fd() -> Result<SignalFd, VmmError> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), None)
        .map_err(VmmError::Signals)?;
    SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(VmmError::Signals)
}

fn serial_sink(cfg: &SerialConfig) -> Result<SerialSink, VmmError> {
    Ok(match cfg {
        SerialConfig::Stdout => SerialSink::Stdout,
        SerialConfig::Off => SerialSink::Off,
        SerialConfig::File(p) => {
            let f = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(p)
                .map_err(|source| VmmError::Open {
                    what: "serial output file",
                    path: p.clone(),
                    source,
                })?;
            SerialSink::File(LineWriter::new(f))
        }
    })
}

fn irqfd(vm: &Vm, evt: &EventFd, gsi: u32) -> Result<(), VmmError> {
    vm.fd()
        .register_irqfd(evt, gsi)
        .map_err(|source| VmmError::Kvm {
            what: "KVM_IRQFD",
            source,
        })
}

/// The virtio devices of a VM being built.
struct VirtioDevices<'a> {
    vm: &'a Vm,
    mem: &'a GuestMemory,
    mmio_bus: &'a mut Bus,
    cmdline_params: Vec<(u64, u32)>,
    subscribers: Vec<Subscriber>,
}

impl VirtioDevices<'_> {
    /// Puts `device` behind a virtio-mmio transport at the next free window and IRQ, wires its
    /// irqfd and per-queue ioeventfds, and queues it for the event loop.
    fn add<T>(&mut self, device: T) -> Result<(), VmmError>
    where
        T: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let index = self.cmdline_params.len();
        if index >= layout::VIRTIO_MMIO_MAX_DEVICES {
            return Err(VmmError::TooManyDevices);
        }
        let base = layout::VIRTIO_MMIO_START + index as u64 * layout::VIRTIO_MMIO_SIZE;
        let irq = layout::VIRTIO_IRQ_BASE + index as u32;
        let device = Arc::new(Mutex::new(device));
        let as_virtio: Arc<Mutex<dyn VirtioDevice>> = device.clone();
        let transport = MmioTransport::new(self.mem.clone(), as_virtio)?;
        irqfd(self.vm, transport.interrupt().eventfd(), irq)?;
        for (i, evt) in transport.queue_evts().iter().enumerate() {
            self.vm
                .fd()
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + REG_QUEUE_NOTIFY),
                    i as u32,
                )
                .map_err(|source| VmmError::Kvm {
                    what: "KVM_IOEVENTFD",
                    source,
                })?;
        }
        self.mmio_bus.insert(
            base,
            layout::VIRTIO_MMIO_SIZE,
            Arc::new(Mutex::new(transport)),
        )?;
        self.cmdline_params.push((base, irq));
        self.subscribers.push(device);
        Ok(())
    }
}

/// Creates the vsock device (it binds `uds_path`).
fn add_vsock(
    devs: &mut VirtioDevices<'_>,
    cfg: &crate::config::VsockConfig,
) -> Result<(), VmmError> {
    let dev = crate::devices::virtio::vsock::Vsock::new(cfg.guest_cid, cfg.uds_path.clone())
        .map_err(|e| VmmError::Vsock(e.to_string()))?;
    devs.add(dev)
}

/// Creates one virtio-fs device (it checks the shared directory).
fn add_fs(devs: &mut VirtioDevices<'_>, cfg: &crate::config::FsConfig) -> Result<(), VmmError> {
    let dev = crate::devices::virtio::fs::Fs::new(cfg.clone())
        .map_err(crate::config::ConfigError::from)?;
    devs.add(dev)
}

/// Validates `config`, boots the VM and runs it until it stops. Returns why it stopped; every
/// socket the VMM created is gone when this returns.
pub fn run(config: &VmConfig) -> Result<ExitReason, VmmError> {
    Ok(Vmm::build(config)?.run())
}

/// A VM built and ready to run: guest memory loaded, devices wired, vCPUs configured, sockets
/// bound; no guest instruction has run yet. Dropping it instead of running it releases
/// everything and removes the sockets.
pub struct Vmm {
    start: Instant,
    exit: Arc<ExitState>,
    control: Arc<VcpuControl>,
    threads: Arc<VcpuThreads>,
    ctx: VcpuContext,
    vcpus: Vec<Vcpu>,
    em: EventManager<Subscriber>,
    serial: Arc<Mutex<SerialDevice>>,
    // Dropped in this order: the VM, then its memory, then the sockets (after the event loop,
    // which owns the listeners, is gone).
    _vm: Vm,
    _mem: GuestMemory,
    _sockets: SocketCleanup,
}

impl Vmm {
    /// Validates `config` and builds the VM (see [`Vmm`]).
    pub fn build(config: &VmConfig) -> Result<Vmm, VmmError> {
        build(config)
    }

    /// Runs the guest until the VM stops; returns why. The sockets are removed when this
    /// returns.
    pub fn run(self) -> ExitReason {
        let Vmm {
            start,
            exit,
            control,
            threads,
            ctx,
            vcpus,
            mut em,
            serial,
            _vm,
            _mem,
            _sockets,
        } = self;
        for v in vcpus {
            let ctx = ctx.clone();
            let h = std::thread::Builder::new()
                .name(format!("vcpu{}", v.id()))
                .spawn(move || v.run(ctx));
            match h {
                Ok(h) => threads.0.locked().push(h),
                Err(e) => {
                    exit.request(ExitReason::Internal(format!(
                        "cannot start a vCPU thread: {e}"
                    )));
                    break;
                }
            }
        }
        tracing::debug!("VM started {:?} after hull-vmm began", start.elapsed());

        while !exit.is_requested() {
            if let Err(e) = em.run() {
                exit.request(ExitReason::Internal(format!("event loop: {e:?}")));
            }
        }

        control.set_state(RunState::Stopping);
        threads.kick_all();
        threads.join_all();
        serial.locked().flush();
        drop(em);
        drop(ctx);
        drop(_vm);
        drop(_mem);
        drop(_sockets);
        exit.reason()
            .unwrap_or(ExitReason::Internal("stopped without a reason".into()))
    }
}

fn build(config: &VmConfig) -> Result<Vmm, VmmError> {
    let start = Instant::now();
    config.validate()?;
    let signals = signal_fd()?;
    let mut sockets = SocketCleanup::default();

    let exit = Arc::new(ExitState::new().map_err(|source| VmmError::Io {
        what: "exit eventfd",
        source,
    })?);
    let vcpus = config.vcpus;
    let vcpu_count = u8::try_from(vcpus).map_err(|_| ConfigError::Vcpus(vcpus))?;
    let mem_size = config.memory_bytes();

    // Memory and VM.
    let phase = |what: &str| tracing::debug!("build: {what} done at {:?}", start.elapsed());
    phase("config validation");
    let mem = vm::create_guest_memory(mem_size, config.memory_backing)?;
    let vm = Vm::new(vcpus)?;
    vm.register_memory(&mem)?;
    phase("guest memory and KVM VM");

    // Kernel and initramfs.
    let open = |what, path: &PathBuf| {
        File::open(path).map_err(|source| VmmError::Open {
            what,
            path: path.clone(),
            source,
        })
    };
    let allow_pvh = config.boot_protocol == BootProtocolConfig::Auto;
    let entry = boot::load_kernel(&mem, &mut open("kernel", &config.kernel)?, allow_pvh)?;
    tracing::debug!("kernel entry: {:?} at {:#x}", entry.protocol, entry.entry);
    phase("kernel load");
    let initrd = match &config.initrd {
        Some(p) => Some(boot::load_initrd(
            &mem,
            mem_size,
            &entry,
            &mut open("initrd", p)?,
        )?),
        None => None,
    };

    phase("initramfs load");

    // Legacy devices.
    let mut pio_bus = Bus::new();
    let mut mmio_bus = Bus::new();
    let new_evt = || {
        EventFd::new(EFD_NONBLOCK).map_err(|source| VmmError::Io {
            what: "eventfd",
            source,
        })
    };
    let serial_irq = new_evt()?;
    irqfd(&vm, &serial_irq, layout::COM1_IRQ)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        EventFdTrigger(serial_irq),
        SerialOut::new(serial_sink(&config.serial)?, exit.clone()),
    )));
    pio_bus.insert(u64::from(layout::COM1_PORT), 8, serial.clone())?;
    let kbd_irq = new_evt()?;
    irqfd(&vm, &kbd_irq, layout::I8042_IRQ)?;
    let i8042 = Arc::new(Mutex::new(I8042::new(
        EventFdTrigger(kbd_irq),
        exit.clone(),
    )));
    pio_bus.insert(
        u64::from(layout::I8042_DATA_PORT),
        u64::from(layout::I8042_COMMAND_PORT - layout::I8042_DATA_PORT) + 1,
        i8042.clone(),
    )?;

    // Virtio devices.
    let mut devs = VirtioDevices {
        vm: &vm,
        mem: &mem,
        mmio_bus: &mut mmio_bus,
        cmdline_params: Vec::new(),
        subscribers: Vec::new(),
    };
    if let Some(v) = &config.vsock {
        // The device binds the socket: it is ours to remove from here on.
        sockets.0.push(v.uds_path.clone());
        add_vsock(&mut devs, v)?;
    }
    for share in &config.fs {
        add_fs(&mut devs, share)?;
    }
    let VirtioDevices {
        cmdline_params,
        subscribers: device_subscribers,
        ..
    } = devs;

    // Command line and boot information.
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE)?;
    cmdline.insert_str(config.cmdline_prefix())?;
    for (base, irq) in &cmdline_params {
        cmdline.add_virtio_mmio_device(
            layout::VIRTIO_MMIO_SIZE,
            GuestAddress(*base),
            *irq,
            None,
        )?;
    }
    if !config.cmdline.trim().is_empty() {
        cmdline.insert_str(config.cmdline.trim())?;
    }
    let cmdline_len = cmdline.as_cstring()?.as_bytes().len();
    tracing::debug!("kernel command line: {:?}", cmdline.as_cstring()?);
    boot::write_cmdline(&mem, &cmdline)?;
    boot::write_boot_info(&mem, mem_size, &entry, cmdline_len, initrd)?;
    mptable::setup(&mem, vcpu_count)?;
    phase("devices and boot information");

    // vCPUs.
    let base_cpuid = vm.supported_cpuid()?;
    let host = vm.host_features();
    tracing::debug!("host features beyond the supported CPUID: {host:?}");
    let mut vcpu_list = Vec::with_capacity(vcpus as usize);
    for id in 0..vcpu_count {
        let v = Vcpu::new(&vm, id)?;
        let boot_regs = (id == 0).then_some((entry.protocol, entry.entry));
        v.configure(&base_cpuid, host, vcpu_count, &mem, boot_regs)?;
        vcpu_list.push(v);
    }

    phase("vCPU set-up");

    // Control plane.
    let control = Arc::new(VcpuControl::default());
    let threads = Arc::new(VcpuThreads::default());
    let counters = Arc::new(ExitCounters::default());
    let timer = TimerFd::new().map_err(|e| VmmError::Io {
        what: "timerfd",
        source: std::io::Error::from_raw_os_error(e.errno()),
    })?;
    let timer_fd = timer.as_raw_fd();
    let timer = Arc::new(Mutex::new(timer));
    let handle = Arc::new(VmmHandle {
        vcpus,
        memory_mib: config.memory_mib,
        start,
        control: control.clone(),
        threads: threads.clone(),
        counters: counters.clone(),
        exit: exit.clone(),
        i8042,
        shutdown_timer: timer.clone(),
    });

    let mut em = EventManager::<Subscriber>::new().map_err(VmmError::EventLoop)?;
    em.add_subscriber(Arc::new(Mutex::new(ControlSubscriber {
        exit: exit.clone(),
        signals,
        timer,
        timer_fd,
    })));
    if let Some(path) = &config.api_socket {
        let server = ApiServer::bind(path, handle.clone())?;
        sockets.0.push(path.clone());
        em.add_subscriber(Arc::new(Mutex::new(server)));
    }
    for s in device_subscribers {
        em.add_subscriber(s);
    }

    vcpu::register_kick_handler()?;
    let ctx = VcpuContext {
        pio: Arc::new(pio_bus),
        mmio: Arc::new(mmio_bus),
        exit: exit.clone(),
        control: control.clone(),
        counters,
    };
    Ok(Vmm {
        start,
        exit,
        control,
        threads,
        ctx,
        vcpus: vcpu_list,
        em,
        serial,
        _vm: vm,
        _mem: mem,
        _sockets: sockets,
    })
}
