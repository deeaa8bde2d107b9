//! Building a VM from its configuration: guest memory and the KVM VM, the kernel and initramfs,
//! the legacy devices (COM1, i8042), the virtio devices (vsock, fs, net; through the MMIO device
//! manager), the command line and boot information, the vCPUs, and the control plane. What comes out is a
//! [`Vmm`] ready to run: no guest instruction has run yet.

use std::fs::{File, OpenOptions};
use std::io::LineWriter;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use event_manager::{EventManager, SubscriberOps};
use linux_loader::loader::Cmdline;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::api::ApiServer;
use crate::arch::x86_64::{boot, layout, mptable};
use crate::config::{BootProtocolConfig, ConfigError, SerialConfig, Validate, VmConfig};
use crate::device_manager::mmio::{MmioDeviceManager, Subscriber};
use crate::devices::bus::Bus;
use crate::devices::legacy::i8042::I8042;
use crate::devices::legacy::pvpanic::PvPanic;
use crate::devices::legacy::serial::{CappedFile, SerialDevice, SerialOut, SerialSink};
use crate::devices::legacy::EventFdTrigger;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::net::Net;
use crate::devices::virtio::vsock::Vsock;
use crate::exit::ExitState;
use crate::jail::{self, JailPaths};
use crate::rpc_interface::{signal_fd, ControlSubscriber, VmmHandle};
use crate::vmm::{SocketCleanup, VcpuThreads, Vmm, VmmError};
use crate::vstate::vcpu::{self, ExitCounters, Vcpu, VcpuContext, VcpuControl};
use crate::vstate::vm::{self, Vm};

fn serial_sink(cfg: &SerialConfig, max_bytes: u64) -> Result<SerialSink, VmmError> {
    Ok(match cfg {
        SerialConfig::Stdout => SerialSink::Stdout,
        SerialConfig::Off => SerialSink::Off,
        SerialConfig::File(p) => {
            // The guest's console is its owner's alone, whatever the process's umask (the
            // virtio-fs passthrough clears it).
            let f = OpenOptions::new()
                .mode(0o600)
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .open(p)
                .map_err(|source| VmmError::Open {
                    what: "serial output file",
                    path: p.clone(),
                    source,
                })?;
            SerialSink::File(LineWriter::new(CappedFile::new(f, max_bytes)))
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

pub(crate) fn build(config: &VmConfig) -> Result<Vmm, VmmError> {
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
    // The kernel and the initramfs are each copied by a thread of their own while the devices
    // and vCPUs are set up (the copies are most of what hull-vmm does before the guest runs:
    // every page they write is freshly faulted in); both are waited for before the vCPUs start.
    let allow_pvh = config.boot_protocol == BootProtocolConfig::Auto;
    let kernel_load = boot::KernelLoad::start(&mem, open("kernel", &config.kernel)?, allow_pvh)?;
    let initrd_load = match &config.initrd {
        Some(p) => Some(boot::InitrdLoad::start(&mem, mem_size, open("initrd", p)?)?),
        None => None,
    };

    // Legacy devices.
    let mut pio_bus = Bus::new();
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
        SerialOut::new(serial_sink(&config.serial, config.serial_max_bytes)?),
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

    // pvpanic: how the guest kernel reports a panic (the guest finds it through the command
    // line's pvpanic_mmio.ioport=, see CMDLINE_PREFIX).
    pio_bus.insert(
        u64::from(layout::PVPANIC_PORT),
        1,
        Arc::new(Mutex::new(PvPanic::new(exit.clone()))),
    )?;

    // Virtio devices.
    let mut devices = MmioDeviceManager::new();
    if let Some(v) = &config.vsock {
        // The device binds the socket: it is ours to remove from here on.
        sockets.push(&v.uds_path)?;
        devices.add(&vm, &mem, Vsock::new(v.guest_cid, v.uds_path.clone())?)?;
    }
    let mut fs_workers = Vec::new();
    for share in &config.fs {
        // Fs::new checks and opens the shared directory.
        let fs = Fs::new(share.clone())?;
        fs_workers.push(fs.workers());
        devices.add(&vm, &mem, fs)?;
    }
    for net in &config.net {
        // Net::new opens the tap; an error names it.
        devices.add(&vm, &mem, Net::new(net)?)?;
    }

    // Command line and boot information.
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE)?;
    cmdline.insert_str(config.cmdline_prefix())?;
    devices.add_to_cmdline(&mut cmdline)?;
    let (mmio_bus, device_subscribers) = devices.into_parts();
    if !config.cmdline.trim().is_empty() {
        cmdline.insert_str(config.cmdline.trim())?;
    }
    let cmdline_len = cmdline.as_cstring()?.as_bytes().len();
    tracing::debug!("kernel command line: {:?}", cmdline.as_cstring()?);
    boot::write_cmdline(&mem, &cmdline)?;
    mptable::setup(&mem, vcpu_count)?;
    phase("devices and command line");

    // vCPUs.
    let base_cpuid = vm.supported_cpuid()?;
    let host = vm.host_features();
    tracing::debug!("host features beyond the supported CPUID: {host:?}");
    let mut vcpu_list = Vec::with_capacity(vcpus as usize);
    for id in 0..vcpu_count {
        let v = Vcpu::new(&vm, id)?;
        v.configure(&base_cpuid, host, vcpu_count)?;
        vcpu_list.push(v);
    }
    phase("vCPU set-up");

    // The kernel, then where the initramfs goes above it, then the boot information.
    let entry = kernel_load.wait()?;
    tracing::debug!("kernel entry: {:?} at {:#x}", entry.protocol, entry.entry);
    phase("kernel load (from its own thread)");
    let (initrd, initrd_load) = match initrd_load {
        Some(Ok(load)) => {
            let load = load.place(&mem, mem_size, &entry)?;
            (Some(load.info()), Some(load))
        }
        // Too big for the top of low RAM: load_initrd names the error.
        Some(Err(mut file)) => (
            Some(boot::load_initrd(&mem, mem_size, &entry, &mut file)?),
            None,
        ),
        None => (None, None),
    };
    boot::write_boot_info(&mem, mem_size, &entry, cmdline_len, initrd)?;
    if let Some(boot_vcpu) = vcpu_list.first() {
        boot_vcpu.set_boot_entry(&mem, entry.protocol, entry.entry)?;
    }
    if let Some(load) = initrd_load {
        load.wait()?;
        phase("initramfs load (from its own thread)");
    }

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
        test_hooks: config.test_hooks,
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
        sockets.push(path)?;
        em.add_subscriber(Arc::new(Mutex::new(server)));
    }
    for s in device_subscribers {
        em.add_subscriber(s);
    }

    vcpu::register_kick_handler()?;

    // Confinement: the VM is built, hull-vmm has one thread again (the loaders are done), and
    // no guest instruction has run. The virtio-fs workers start now, inside the jail and before
    // the event loop installs its own filter (see `jail`).
    let (socket_dirs, socket_dirfds) = sockets.dirs();
    let paths = JailPaths {
        socket_dirs,
        xattr: config.fs.iter().any(|f| f.xattr),
    };
    let summary = jail::enter(&config.jail, &paths, &socket_dirfds)?;
    tracing::info!("jail: {summary}");
    for w in &fs_workers {
        w.spawn().map_err(|source| VmmError::Io {
            what: "virtio-fs worker thread",
            source,
        })?;
    }
    phase("jail");
    let ctx = VcpuContext {
        pio: Arc::new(pio_bus),
        mmio: Arc::new(mmio_bus),
        exit: exit.clone(),
        control: control.clone(),
        counters,
        started: start,
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
