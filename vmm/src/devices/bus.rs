//! Port-I/O and MMIO buses: address ranges mapped to devices that vCPU exits are dispatched to.
//!
//! A small hand-written bus (Firecracker-style) rather than vm-device: hull needs only
//! insert + lookup, and the dispatch must never panic on guest-chosen addresses or sizes.

use crate::sync::LockExt;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device on a bus. `offset` is relative to the device's base; `data.len()` is the access
/// size the guest chose (1..=8 bytes for PIO/MMIO exits). Implementations must accept any
/// offset and size without panicking.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors inserting a device.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty, wraps or overlaps another device")]
    Overlap { base: u64, len: u64 },
}

struct Entry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping address ranges.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, Entry>,
}

impl Bus {
    pub fn new() -> Bus {
        Bus::default()
    }

    /// Maps `[base, base + len)` to `device`.
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), BusError> {
        let err = BusError::Overlap { base, len };
        let end = base.checked_add(len).ok_or(err.clone())?;
        if len == 0 {
            return Err(err);
        }
        if let Some((b, e)) = self.devices.range(..end).next_back() {
            if b + e.len > base {
                return Err(err);
            }
        }
        self.devices.insert(base, Entry { len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &Entry)> {
        let (base, e) = self.devices.range(..=addr).next_back()?;
        (addr - base < e.len).then_some((addr - base, e))
    }

    /// Dispatches a read; false when no device is mapped at `addr` (`data` is left as is).
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, e)) => {
                e.device.locked().read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; false when no device is mapped at `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, e)) => {
                e.device.locked().write(offset, data);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<(u64, Vec<u8>)>);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.0.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatch_and_overlap() {
        let mut bus = Bus::new();
        let d = Arc::new(Mutex::new(Echo(Vec::new())));
        bus.insert(0x10, 0x8, d.clone()).unwrap();
        assert!(bus.insert(0x17, 1, d.clone()).is_err());
        assert!(bus.insert(0x8, 9, d.clone()).is_err());
        assert!(bus.insert(0x0, 0, d.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, d.clone()).is_err());
        bus.insert(0x18, 1, d.clone()).unwrap();
        bus.insert(0x8, 8, d.clone()).unwrap();
        let mut b = [0u8; 2];
        assert!(bus.read(0x13, &mut b));
        assert_eq!(b, [3, 3]);
        assert!(!bus.read(0x19, &mut b));
        assert!(!bus.read(0x7, &mut b));
        assert!(bus.write(0x17, &[1, 2, 3]));
        assert_eq!(d.lock().unwrap().0, vec![(7, vec![1, 2, 3])]);
        assert!(!bus.write(u64::MAX, &[1]));
    }
}
