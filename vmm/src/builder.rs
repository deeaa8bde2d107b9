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
use crate::devices::virtio::net::{Net, NetBackend, NetError, VhostNet};
use crate::devices::virtio::vsock::Vsock;
use crate::exit::ExitState;
use crate::jail::{self, JailPaths};
use crate::rpc_interface::SnapshotParts;
use crate::rpc_interface::{signal_fd, ControlSubscriber, VmmHandle};
use crate::snapshot::{self, HostIdentity, SnapshotError, SnapshotTarget};
use crate::sync::LockExt;
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

    // A template run's files, or the snapshot a restore starts from.
    let phase = |what: &str| tracing::debug!("build: {what} done at {:?}", start.elapsed());
    let snapshot_target = match &config.snapshot_to {
        Some(dir) => Some(SnapshotTarget::create(dir)?),
        None => None,
    };
    let restore = match &config.restore_from {
        Some(dir) => Some(snapshot::load(dir, vcpus, config.memory_mib)?),
        None => None,
    };
    phase("config validation");

    // Memory and VM.
    let mem = match &restore {
        Some(r) => vm::map_snapshot_memory(mem_size, &r.memory)
            .map_err(|e| SnapshotError::Mismatch(e.to_string()))?,
        None => vm::create_guest_memory(mem_size, config.memory_backing)?,
    };
    let vm = Arc::new(Vm::new(vcpus)?);
    vm.register_memory(&mem)?;
    let base_cpuid = vm.supported_cpuid()?;
    let host_identity = HostIdentity::from_supported_cpuid(base_cpuid.as_slice());
    if let Some(r) = &restore {
        if r.state.host != host_identity {
            return Err(SnapshotError::Mismatch(format!(
                "taken on a CPU {} (signature {:#x}, features {:#x}), this host's is {} \
                 (signature {:#x}, features {:#x})",
                r.state.host.cpu_vendor,
                r.state.host.cpu_signature,
                r.state.host.cpu_features_crc,
                host_identity.cpu_vendor,
                host_identity.cpu_signature,
                host_identity.cpu_features_crc
            ))
            .into());
        }
        if r.state.devices.len() != config.virtio_device_count() {
            return Err(SnapshotError::Mismatch(format!(
                "{} virtio devices in the snapshot, {} configured",
                r.state.devices.len(),
                config.virtio_device_count()
            ))
            .into());
        }
    }
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
    // A restored VM's memory holds them already.
    let allow_pvh = config.boot_protocol == BootProtocolConfig::Auto;
    let kernel_load = match &restore {
        None => Some(boot::KernelLoad::start(
            &mem,
            open("kernel", &config.kernel)?,
            allow_pvh,
        )?),
        Some(_) => None,
    };
    let initrd_load = match (&config.initrd, &restore) {
        (Some(p), None) => Some(boot::InitrdLoad::start(&mem, mem_size, open("initrd", p)?)?),
        _ => None,
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
    irqfd(vm.as_ref(), &serial_irq, layout::COM1_IRQ)?;
    // Raised again once a restored VM's vCPUs have their state (see below).
    let serial_kick = serial_irq.try_clone().map_err(|source| VmmError::Io {
        what: "eventfd",
        source,
    })?;
    let serial_out = SerialOut::new(serial_sink(&config.serial, config.serial_max_bytes)?);
    let serial = Arc::new(Mutex::new(match &restore {
        Some(r) => {
            SerialDevice::with_state(EventFdTrigger(serial_irq), serial_out, &r.state.serial)
                .map_err(SnapshotError::Mismatch)?
        }
        None => SerialDevice::new(EventFdTrigger(serial_irq), serial_out),
    }));
    pio_bus.insert(u64::from(layout::COM1_PORT), 8, serial.clone())?;
    let kbd_irq = new_evt()?;
    irqfd(vm.as_ref(), &kbd_irq, layout::I8042_IRQ)?;
    let mut kbd = I8042::new(EventFdTrigger(kbd_irq), exit.clone());
    if let Some(r) = &restore {
        kbd.restore(&r.state.i8042)
            .map_err(SnapshotError::Mismatch)?;
    }
    let i8042 = Arc::new(Mutex::new(kbd));
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
        devices.add(
            vm.as_ref(),
            &mem,
            Vsock::new(v.guest_cid, v.uds_path.clone())?,
        )?;
    }
    let mut fs_workers = Vec::new();
    for share in &config.fs {
        // Fs::new checks and opens the shared directory.
        let fs = Fs::new(share.clone())?;
        fs_workers.push(fs.workers());
        devices.add(vm.as_ref(), &mem, fs)?;
    }
    let mut uses_vhost = false;
    for net in &config.net {
        // Both open the tap; an error names it.
        // A template run is snapshotted, and a vhost-net device's queue positions are in the
        // host kernel: it gets hull-vmm's own device (`validate` refuses `vhost` there).
        let backend = match (net.backend, &config.snapshot_to) {
            (NetBackend::Auto, Some(_)) => NetBackend::Userspace,
            (b, _) => b,
        };
        let vhost = match backend {
            NetBackend::Userspace => None,
            NetBackend::Vhost => Some(VhostNet::new(net, &mem)?),
            NetBackend::Auto => match VhostNet::new(net, &mem) {
                Ok(d) => Some(d),
                Err(e @ NetError::Vhost(..)) => {
                    tracing::info!(tap = %net.tap, reason = %e, "virtio-net: vhost-net cannot serve the device; hull-vmm's own device does");
                    None
                }
                Err(e) => return Err(e.into()),
            },
        };
        match vhost {
            Some(d) => {
                tracing::debug!(tap = %net.tap, "virtio-net on vhost-net");
                uses_vhost = true;
                devices.add(vm.as_ref(), &mem, d)?
            }
            None => devices.add(vm.as_ref(), &mem, Net::new(net)?)?,
        };
    }

    // Command line and boot information (a restored guest booted with the template's).
    let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE)?;
    cmdline.insert_str(config.cmdline_prefix())?;
    devices.add_to_cmdline(&mut cmdline)?;
    let transports = devices.transports();
    let late = transports.clone();
    let (mmio_bus, device_subscribers) = devices.into_parts();
    if let Some(r) = &restore {
        for (i, (t, s)) in transports.iter().zip(&r.state.devices).enumerate() {
            t.locked()
                .restore_state(s)
                .map_err(|e| SnapshotError::Mismatch(format!("virtio device {i}: {e}")))?;
        }
    }
    if !config.cmdline.trim().is_empty() {
        cmdline.insert_str(config.cmdline.trim())?;
    }
    let cmdline_len = cmdline.as_cstring()?.as_bytes().len();
    if restore.is_none() {
        tracing::debug!("kernel command line: {:?}", cmdline.as_cstring()?);
        boot::write_cmdline(&mem, &cmdline)?;
        mptable::setup(&mem, vcpu_count)?;
    }
    phase("devices and command line");

    // vCPUs.
    let host = vm.host_features();
    tracing::debug!("host features beyond the supported CPUID: {host:?}");
    let mut vcpu_list = Vec::with_capacity(vcpus as usize);
    for id in 0..vcpu_count {
        let v = Vcpu::new(&vm, id)?;
        match &restore {
            Some(r) => v
                .restore_state(&r.state.vcpu_states[usize::from(id)])
                .map_err(|e| SnapshotError::Mismatch(e.to_string()))?,
            None => v.configure(&base_cpuid, host, vcpu_count)?,
        }
        vcpu_list.push(v);
    }
    phase(if restore.is_some() {
        "vCPU state restore"
    } else {
        "vCPU set-up"
    });
    if let Some(r) = &restore {
        // The interrupt controllers, PIT and clock once the vCPUs exist (as Firecracker
        // does): an interrupt the IOAPIC still holds is delivered to a LAPIC, not to none.
        vm.restore_state(&r.state.vm)
            .map_err(|e| SnapshotError::Mismatch(e.to_string()))?;
        // The UART raised its pending interrupt when its state was restored, before the
        // interrupt controllers had theirs: once more now (a spurious one is read and
        // dropped by the guest's driver; a lost one would stall its console writes).
        serial_kick.write(1).map_err(|source| VmmError::Io {
            what: "serial interrupt",
            source,
        })?;
        for (i, t) in transports.iter().enumerate() {
            t.locked()
                .resume()
                .map_err(|e| SnapshotError::Mismatch(format!("virtio device {i}: {e}")))?;
        }
    }
    let msr_list = match &snapshot_target {
        Some(_) => Some(Arc::from(vcpu::snapshot_msr_list(&vm.msr_index_list()?))),
        None => None,
    };

    if let Some(kernel_load) = kernel_load {
        boot_payload(
            &mem,
            mem_size,
            &vcpu_list,
            kernel_load,
            initrd_load,
            cmdline_len,
            &phase,
        )?;
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
        snapshot: snapshot_target.map(|target| {
            Mutex::new(Some(SnapshotParts {
                target,
                vm: vm.clone(),
                mem: mem.clone(),
                transports,
                serial: serial.clone(),
                host: host_identity,
            }))
        }),
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
        snapshot: config.snapshot_to.is_some(),
        vhost: uses_vhost,
    };
    let summary = jail::enter(&config.jail, &paths, &socket_dirfds)?;
    tracing::info!("jail: {summary}");
    for w in &fs_workers {
        w.spawn().map_err(|source| VmmError::Io {
            what: "virtio-fs worker thread",
            source,
        })?;
    }
    // The workers have taken their capabilities with them; the main thread gives up its own
    // before any device's late set-up, so that no thread the kernel starts for hull-vmm from
    // here (vhost-net's worker since Linux 6.4 is one of its threads, with its credentials)
    // has any.
    jail::drop_thread_capabilities()?;
    for (i, t) in late.iter().enumerate() {
        t.locked().after_jail().map_err(|e| VmmError::Device {
            what: format!("virtio device {i}"),
            reason: e,
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
        msr_list,
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

/// Loads the kernel and initramfs and writes the boot information: what a cold boot does that
/// a restore does not.
fn boot_payload(
    mem: &crate::devices::virtio::GuestMemory,
    mem_size: u64,
    vcpu_list: &[Vcpu],
    kernel_load: boot::KernelLoad,
    initrd_load: Option<Result<boot::InitrdLoad, File>>,
    cmdline_len: usize,
    phase: &dyn Fn(&str),
) -> Result<(), VmmError> {
    let entry = kernel_load.wait()?;
    tracing::debug!("kernel entry: {:?} at {:#x}", entry.protocol, entry.entry);
    phase("kernel load (from its own thread)");
    let (initrd, initrd_load) = match initrd_load {
        Some(Ok(load)) => {
            let load = load.place(mem, mem_size, &entry)?;
            (Some(load.info()), Some(load))
        }
        // Too big for the top of low RAM: load_initrd names the error.
        Some(Err(mut file)) => (
            Some(boot::load_initrd(mem, mem_size, &entry, &mut file)?),
            None,
        ),
        None => (None, None),
    };
    boot::write_boot_info(mem, mem_size, &entry, cmdline_len, initrd)?;
    if let Some(boot_vcpu) = vcpu_list.first() {
        boot_vcpu.set_boot_entry(mem, entry.protocol, entry.entry)?;
    }
    if let Some(load) = initrd_load {
        load.wait()?;
        phase("initramfs load (from its own thread)");
    }

    Ok(())
}
