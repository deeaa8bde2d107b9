//! The virtio-mmio register path (`MmioTransport`, as vCPU MMIO exits drive it) with the real
//! devices behind it: vsock (first byte even) or virtio-fs on a read-only share (odd). The rest
//! of the input is a little program for the guest driver:
//!   op % 8 = 0: aligned 4-byte register write  [off: u8 (x4)] [value: u32 le]
//!            1: raw write, any offset and size [off: u16 le % 0x1010] [len: u8 % 9] [bytes]
//!            2: raw read, any offset and size  [off: u16 le % 0x1010] [len: u8 % 9]
//!            3: the driver's feature negotiation (ACKNOWLEDGE, DRIVER, every offered feature,
//!               FEATURES_OK)
//!            4: set up a queue [sel: u8] [size: u16 le] [desc, avail, used: u16 le each]
//!               (then QUEUE_READY)
//!            5: DRIVER_OK
//!            6: guest memory write [addr: u16 le] [len: u8] [bytes]
//!            7: QUEUE_NOTIFY [queue: u8], then event loop rounds (the devices run)
//! Oracle: no panic; the identification registers never change; a reset (status 0) always
//! ends with status 0 and the device deactivated.

#![no_main]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use hull_vmm::devices::bus::BusDevice;
use hull_vmm::devices::virtio::fs::{Fs, FsConfig};
use hull_vmm::devices::virtio::mmio::*;
use hull_vmm::devices::virtio::vsock::Vsock;
use hull_vmm::devices::virtio::{GuestMemory, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x1_0000;

struct Dirs {
    base: PathBuf,
    share: PathBuf,
}

thread_local! {
    static DIRS: Dirs = {
        let base = std::env::temp_dir().join(format!("hull-mmio-fuzz.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let share = base.join("share");
        std::fs::create_dir_all(share.join("dir")).unwrap();
        std::fs::write(share.join("file"), b"0123456789").unwrap();
        Dirs { base, share }
    };
    static N: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes([self.u8()?, self.u8()?]))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b
    }
}

fn w(t: &mut MmioTransport, off: u64, v: u32) {
    t.write(off, &v.to_le_bytes());
}

fn r(t: &mut MmioTransport, off: u64) -> u32 {
    let mut b = [0u8; 4];
    t.read(off, &mut b);
    u32::from_le_bytes(b)
}

fn drive<D>(dev: Arc<Mutex<D>>, ops: &[u8])
where
    D: VirtioDevice + MutEventSubscriber + 'static,
{
    let mem: GuestMemory = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut em = EventManager::<Arc<Mutex<D>>>::new().unwrap();
    em.add_subscriber(dev.clone());
    let as_dyn: Arc<Mutex<dyn VirtioDevice>> = dev.clone();
    let mut t = MmioTransport::new(mem.clone(), as_dyn).unwrap();
    let device_id = r(&mut t, REG_DEVICE_ID);
    let mut input = Input(ops);
    let mut steps = 0;
    while let Some(op) = input.u8() {
        steps += 1;
        if steps > 256 {
            break;
        }
        match op % 8 {
            0 => {
                let (Some(off), Some(v)) = (input.u8(), input.u32()) else {
                    break;
                };
                w(&mut t, u64::from(off) * 4, v);
            }
            1 => {
                let (Some(off), Some(len)) = (input.u16(), input.u8()) else {
                    break;
                };
                let b = input.bytes(usize::from(len % 9)).to_vec();
                t.write(u64::from(off) % 0x1010, &b);
            }
            2 => {
                let (Some(off), Some(len)) = (input.u16(), input.u8()) else {
                    break;
                };
                let mut b = vec![0xaa; usize::from(len % 9)];
                t.read(u64::from(off) % 0x1010, &mut b);
            }
            3 => {
                w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
                w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
                for sel in 0..2 {
                    w(&mut t, REG_DEVICE_FEATURES_SEL, sel);
                    let f = r(&mut t, REG_DEVICE_FEATURES);
                    w(&mut t, REG_DRIVER_FEATURES_SEL, sel);
                    w(&mut t, REG_DRIVER_FEATURES, f);
                }
                w(
                    &mut t,
                    REG_STATUS,
                    STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
                );
            }
            4 => {
                let (Some(sel), Some(size), Some(d), Some(a), Some(u)) = (
                    input.u8(),
                    input.u16(),
                    input.u16(),
                    input.u16(),
                    input.u16(),
                ) else {
                    break;
                };
                w(&mut t, REG_QUEUE_SEL, u32::from(sel % 4));
                w(&mut t, REG_QUEUE_NUM, u32::from(size));
                w(&mut t, REG_QUEUE_DESC_LOW, u32::from(d));
                w(&mut t, REG_QUEUE_DESC_HIGH, 0);
                w(&mut t, REG_QUEUE_DRIVER_LOW, u32::from(a));
                w(&mut t, REG_QUEUE_DRIVER_HIGH, 0);
                w(&mut t, REG_QUEUE_DEVICE_LOW, u32::from(u));
                w(&mut t, REG_QUEUE_DEVICE_HIGH, 0);
                w(&mut t, REG_QUEUE_READY, 1);
            }
            5 => {
                let s = t.status();
                w(&mut t, REG_STATUS, s | STATUS_DRIVER_OK);
            }
            6 => {
                let (Some(addr), Some(len)) = (input.u16(), input.u8()) else {
                    break;
                };
                let b = input.bytes(usize::from(len)).to_vec();
                let _ = mem.write_slice(&b, GuestAddress(u64::from(addr)));
            }
            _ => {
                let Some(q) = input.u8() else {
                    break;
                };
                w(&mut t, REG_QUEUE_NOTIFY, u32::from(q % 4));
                for _ in 0..2 {
                    let _ = em.run_with_timeout(0);
                }
            }
        }
        assert_eq!(r(&mut t, REG_MAGIC_VALUE), MMIO_MAGIC_VALUE);
        assert_eq!(r(&mut t, REG_VERSION), MMIO_VERSION);
        assert_eq!(r(&mut t, REG_DEVICE_ID), device_id);
    }
    let _ = em.run_with_timeout(0);
    w(&mut t, REG_STATUS, 0);
    let _ = em.run_with_timeout(0);
    assert_eq!(t.status(), 0, "status after a reset");
    assert!(!t.is_activated());
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, ops)) = data.split_first() else {
        return;
    };
    DIRS.with(|d| {
        if sel & 1 == 0 {
            let n = N.with(|n| {
                n.set(n.get() + 1);
                n.get()
            });
            let uds = d.base.join(format!("v{n}.sock"));
            let dev = Arc::new(Mutex::new(Vsock::new(3, uds).unwrap()));
            drive(dev.clone(), ops);
            assert_eq!(dev.lock().unwrap().connection_count(), 0);
        } else {
            let mut cfg = FsConfig::new("fuzz", &d.share);
            cfg.read_only = true;
            drive(Arc::new(Mutex::new(Fs::new(cfg).unwrap())), ops);
        }
    });
});
