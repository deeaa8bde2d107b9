//! The MMIO device manager: puts each virtio device behind a virtio-mmio transport at the next
//! free 4 KiB window (from `layout::VIRTIO_MMIO_START`) and IRQ (from `layout::VIRTIO_IRQ_BASE`),
//! wires the transport's interrupt to KVM as an irqfd and each queue's notification register as
//! an ioeventfd, and produces the kernel command-line entry the guest finds the device by
//! (`virtio_mmio.device=4K@0xd0000000:5`).
//!
//! KVM is reached through [`IrqRegistrar`], so placement and wiring are unit-tested without a VM.

use std::sync::{Arc, Mutex};

use event_manager::MutEventSubscriber;
use kvm_ioctls::IoEventAddress;
use linux_loader::loader::Cmdline;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout;
use crate::devices::bus::{Bus, BusError};
use crate::devices::virtio::mmio::{MmioError, MmioTransport, REG_QUEUE_NOTIFY};
use crate::devices::virtio::{GuestMemory, VirtioDevice};
use crate::vstate::vm::Vm;

/// A device on the event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Why a device could not be placed.
#[derive(Debug, thiserror::Error)]
pub enum DeviceManagerError {
    #[error(
        "too many virtio devices (at most {})",
        layout::VIRTIO_MMIO_MAX_DEVICES
    )]
    TooManyDevices,
    #[error("virtio-mmio transport: {0}")]
    Mmio(#[from] MmioError),
    #[error("{what} for the device at {base:#x}: {source}")]
    Kvm {
        what: &'static str,
        base: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("MMIO bus: {0}")]
    Bus(#[from] BusError),
}

/// What the device manager needs from KVM: routing an eventfd to a guest interrupt, and an
/// eventfd signalled when the guest writes a given value to a given MMIO address.
pub trait IrqRegistrar {
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error>;
    fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), kvm_ioctls::Error>;
}

impl IrqRegistrar for Vm {
    fn register_irqfd(&self, evt: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
        self.fd().register_irqfd(evt, gsi)
    }

    fn register_ioevent(
        &self,
        evt: &EventFd,
        addr: u64,
        datamatch: u32,
    ) -> Result<(), kvm_ioctls::Error> {
        self.fd()
            .register_ioevent(evt, &IoEventAddress::Mmio(addr), datamatch)
    }
}

/// Where one device sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    /// Base address of its 4 KiB register window.
    pub base: u64,
    /// Its interrupt line (GSI).
    pub irq: u32,
}

/// The virtio-mmio devices of a VM being built.
#[derive(Default)]
pub struct MmioDeviceManager {
    bus: Bus,
    slots: Vec<MmioSlot>,
    subscribers: Vec<Subscriber>,
    transports: Vec<Arc<Mutex<MmioTransport>>>,
}

impl MmioDeviceManager {
    pub fn new() -> MmioDeviceManager {
        MmioDeviceManager::default()
    }

    /// The slot the next device gets.
    fn next_slot(&self) -> Result<MmioSlot, DeviceManagerError> {
        let index = self.slots.len();
        if index >= layout::VIRTIO_MMIO_MAX_DEVICES {
            return Err(DeviceManagerError::TooManyDevices);
        }
        Ok(MmioSlot {
            base: layout::VIRTIO_MMIO_START + index as u64 * layout::VIRTIO_MMIO_SIZE,
            irq: layout::VIRTIO_IRQ_BASE + index as u32,
        })
    }

    /// Puts `device` behind a virtio-mmio transport at the next free slot, wires its irqfd and
    /// per-queue ioeventfds through `kvm`, and keeps it for the event loop.
    pub fn add<T>(
        &mut self,
        kvm: &dyn IrqRegistrar,
        mem: &GuestMemory,
        device: T,
    ) -> Result<MmioSlot, DeviceManagerError>
    where
        T: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let slot = self.next_slot()?;
        let kvm_err = |what| {
            move |source| DeviceManagerError::Kvm {
                what,
                base: slot.base,
                source,
            }
        };
        let device = Arc::new(Mutex::new(device));
        let as_virtio: Arc<Mutex<dyn VirtioDevice>> = device.clone();
        let transport = MmioTransport::new(mem.clone(), as_virtio)?;
        kvm.register_irqfd(transport.interrupt().eventfd(), slot.irq)
            .map_err(kvm_err("KVM_IRQFD"))?;
        for (i, evt) in transport.queue_evts().iter().enumerate() {
            kvm.register_ioevent(evt, slot.base + REG_QUEUE_NOTIFY, i as u32)
                .map_err(kvm_err("KVM_IOEVENTFD"))?;
        }
        let transport = Arc::new(Mutex::new(transport));
        self.bus
            .insert(slot.base, layout::VIRTIO_MMIO_SIZE, transport.clone())?;
        self.transports.push(transport);
        self.slots.push(slot);
        self.subscribers.push(device);
        Ok(slot)
    }

    /// The transports, in slot order (what a snapshot saves and a restore fills in).
    pub fn transports(&self) -> Vec<Arc<Mutex<MmioTransport>>> {
        self.transports.clone()
    }

    /// Where the devices sit, in the order they were added.
    pub fn slots(&self) -> &[MmioSlot] {
        &self.slots
    }

    /// Adds one `virtio_mmio.device=` entry per device to the guest's command line.
    pub fn add_to_cmdline(
        &self,
        cmdline: &mut Cmdline,
    ) -> Result<(), linux_loader::cmdline::Error> {
        for s in &self.slots {
            cmdline.add_virtio_mmio_device(
                layout::VIRTIO_MMIO_SIZE,
                GuestAddress(s.base),
                s.irq,
                None,
            )?;
        }
        Ok(())
    }

    /// The MMIO bus (for the vCPUs) and the devices (for the event loop).
    pub fn into_parts(self) -> (Bus, Vec<Subscriber>) {
        (self.bus, self.subscribers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::test_utils::NullDevice;
    use std::cell::RefCell;

    /// Records what would have gone to KVM.
    #[derive(Default)]
    struct FakeKvm {
        irqfds: RefCell<Vec<u32>>,
        ioevents: RefCell<Vec<(u64, u32)>>,
        fail_ioevent: bool,
    }

    impl IrqRegistrar for FakeKvm {
        fn register_irqfd(&self, _: &EventFd, gsi: u32) -> Result<(), kvm_ioctls::Error> {
            self.irqfds.borrow_mut().push(gsi);
            Ok(())
        }
        fn register_ioevent(
            &self,
            _: &EventFd,
            addr: u64,
            dm: u32,
        ) -> Result<(), kvm_ioctls::Error> {
            if self.fail_ioevent {
                return Err(kvm_ioctls::Error::new(libc::EEXIST));
            }
            self.ioevents.borrow_mut().push((addr, dm));
            Ok(())
        }
    }

    fn mem() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn devices_get_consecutive_windows_irqs_and_queue_notifications() {
        let kvm = FakeKvm::default();
        let mut m = MmioDeviceManager::new();
        let a = m.add(&kvm, &mem(), NullDevice::new(&[16, 16, 16])).unwrap();
        let b = m.add(&kvm, &mem(), NullDevice::new(&[8])).unwrap();
        assert_eq!(
            a,
            MmioSlot {
                base: layout::VIRTIO_MMIO_START,
                irq: layout::VIRTIO_IRQ_BASE
            }
        );
        assert_eq!(
            b,
            MmioSlot {
                base: layout::VIRTIO_MMIO_START + layout::VIRTIO_MMIO_SIZE,
                irq: layout::VIRTIO_IRQ_BASE + 1
            }
        );
        assert_eq!(m.slots(), &[a, b]);
        assert_eq!(*kvm.irqfds.borrow(), vec![a.irq, b.irq]);
        let notify = |s: MmioSlot, q| (s.base + REG_QUEUE_NOTIFY, q);
        assert_eq!(
            *kvm.ioevents.borrow(),
            vec![notify(a, 0), notify(a, 1), notify(a, 2), notify(b, 0)]
        );

        let mut cmdline = Cmdline::new(layout::CMDLINE_MAX_SIZE).unwrap();
        m.add_to_cmdline(&mut cmdline).unwrap();
        let text = cmdline.as_cstring().unwrap().into_string().unwrap();
        assert_eq!(
            text,
            format!(
                "virtio_mmio.device=4K@{:#x}:{} virtio_mmio.device=4K@{:#x}:{}",
                a.base, a.irq, b.base, b.irq
            )
        );

        // The bus answers in both windows (the magic value "virt") and nowhere between them.
        let (bus, subscribers) = m.into_parts();
        assert_eq!(subscribers.len(), 2);
        for s in [a, b] {
            let mut magic = [0u8; 4];
            assert!(bus.read(s.base, &mut magic));
            assert_eq!(&magic, b"virt");
        }
        assert!(!bus.read(b.base + layout::VIRTIO_MMIO_SIZE, &mut [0u8; 4]));
    }

    #[test]
    fn the_device_limit_and_kvm_failures_are_errors() {
        let kvm = FakeKvm::default();
        let mut m = MmioDeviceManager::new();
        for _ in 0..layout::VIRTIO_MMIO_MAX_DEVICES {
            m.add(&kvm, &mem(), NullDevice::new(&[4])).unwrap();
        }
        assert!(matches!(
            m.add(&kvm, &mem(), NullDevice::new(&[4])),
            Err(DeviceManagerError::TooManyDevices)
        ));
        assert_eq!(m.slots().len(), layout::VIRTIO_MMIO_MAX_DEVICES);

        let failing = FakeKvm {
            fail_ioevent: true,
            ..FakeKvm::default()
        };
        let mut m = MmioDeviceManager::new();
        let e = m.add(&failing, &mem(), NullDevice::new(&[4])).unwrap_err();
        assert!(e.to_string().contains("KVM_IOEVENTFD"), "{e}");
        assert!(
            std::error::Error::source(&e).is_some(),
            "the KVM error is kept as the source"
        );
        assert!(m.slots().is_empty(), "a failed device takes no slot");
        assert!(matches!(
            m.add(&failing, &mem(), NullDevice::new(&[])),
            Err(DeviceManagerError::Mmio(_))
        ));
    }
}
