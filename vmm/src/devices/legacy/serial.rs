//! COM1: vm-superio's 16550A emulation behind the port-I/O bus, writing what the guest prints to
//! stdout, a size-capped file, or nowhere. Nothing the guest prints decides anything: a guest
//! kernel panic is known from pvpanic (`super::pvpanic`).

use std::fs::File;
use std::io::{self, LineWriter, Write};
use std::os::unix::fs::FileExt;
use vm_superio::serial::NoEvents;
use vm_superio::Serial;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;

/// A console file that never holds more than `max` bytes and always ends with the newest
/// output: when a write would take it past `max`, the file is cut to its newest `max / 2` bytes
/// (counting the bytes being written) before the write lands. So once it has filled, it holds
/// between `max / 2` and `max` bytes: the guest's latest output, whatever it printed before.
/// Cutting costs a copy of `max / 2` bytes every `max / 2` bytes written (amortised: one byte
/// moved per byte printed). A write longer than `max / 2` leaves only its own last `max / 2`
/// bytes.
pub struct CappedFile {
    file: File,
    /// Bytes in the file (hull-vmm created or truncated it and is its only writer).
    len: u64,
    max: u64,
}

impl CappedFile {
    /// `file` must be empty (truncated) and open for reading and writing.
    pub fn new(file: File, max: u64) -> CappedFile {
        CappedFile { file, len: 0, max }
    }

    /// Keeps the newest `keep` bytes of the file, moved to its start.
    fn keep_tail(&mut self, keep: u64) -> io::Result<()> {
        let keep = keep.min(self.len);
        let mut tail = vec![0u8; usize::try_from(keep).unwrap_or(usize::MAX)];
        self.file.read_exact_at(&mut tail, self.len - keep)?;
        self.file.write_all_at(&tail, 0)?;
        self.file.set_len(keep)?;
        self.len = keep;
        Ok(())
    }
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len() as u64;
        if self.len.saturating_add(n) > self.max {
            let half = self.max / 2;
            if n >= half {
                // The new bytes alone fill the half that is kept.
                let own = &buf[buf.len() - usize::try_from(half).unwrap_or(buf.len())..];
                self.file.set_len(0)?;
                self.len = 0;
                self.file.write_all_at(own, 0)?;
                self.len = own.len() as u64;
                return Ok(buf.len());
            }
            self.keep_tail(half - n)?;
        }
        self.file.write_all_at(buf, self.len)?;
        self.len += n;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Where the guest's console output goes.
pub enum SerialSink {
    Stdout,
    File(LineWriter<CappedFile>),
    Off,
}

/// The serial device's output.
pub struct SerialOut {
    sink: SerialSink,
    write_failed: bool,
}

impl SerialOut {
    pub fn new(sink: SerialSink) -> SerialOut {
        SerialOut {
            sink,
            write_failed: false,
        }
    }
}

impl Write for SerialOut {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let r = match &mut self.sink {
            SerialSink::Stdout => io::stdout().write_all(buf),
            SerialSink::File(f) => f.write_all(buf),
            SerialSink::Off => Ok(()),
        };
        // A console that cannot be written (full disk, closed pipe) must not stop the guest.
        if let Err(e) = r {
            if !self.write_failed {
                tracing::warn!("cannot write guest console output: {e}");
                self.write_failed = true;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.sink {
            SerialSink::Stdout => io::stdout().flush(),
            SerialSink::File(f) => f.flush(),
            SerialSink::Off => Ok(()),
        }
    }
}

/// The UART's registers and receive FIFO, as a snapshot keeps them (vm-superio's
/// `SerialState`, which has no serde).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

/// The 8250 UART on the port-I/O bus (8 registers).
pub struct SerialDevice {
    serial: Serial<EventFdTrigger, NoEvents, SerialOut>,
}

impl SerialDevice {
    pub fn new(irq: EventFdTrigger, out: SerialOut) -> SerialDevice {
        SerialDevice {
            serial: Serial::new(irq, out),
        }
    }

    /// A UART whose registers are `s` (a restored guest's driver finds it as it left it:
    /// interrupt enables, line settings, unread input).
    pub fn with_state(
        irq: EventFdTrigger,
        out: SerialOut,
        s: &SerialSnapshot,
    ) -> Result<SerialDevice, String> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        };
        let serial = Serial::from_state(&state, irq, NoEvents, out)
            .map_err(|e| format!("serial state: {e:?}"))?;
        Ok(SerialDevice { serial })
    }

    /// The UART's state, for a snapshot.
    pub fn state(&self) -> SerialSnapshot {
        let s = self.serial.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// Flushes buffered console output (at exit).
    pub fn flush(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (data.len(), u8::try_from(offset)) {
            (1, Ok(off)) if off < 8 => data[0] = self.serial.read(off),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (1, Ok(off)) = (data.len(), u8::try_from(offset)) {
            if off < 8 {
                if let Err(e) = self.serial.write(off, data[0]) {
                    tracing::warn!("serial write failed: {e:?}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::path::PathBuf;
    use vmm_sys_util::eventfd::EventFd;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn capped(name: &str, max: u64) -> (CappedFile, Tmp) {
        let path =
            std::env::temp_dir().join(format!("hull-vmm-serial-{name}-{}", std::process::id()));
        let f = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (CappedFile::new(f, max), Tmp(path))
    }

    fn contents(t: &Tmp) -> Vec<u8> {
        std::fs::read(&t.0).unwrap()
    }

    #[test]
    fn file_below_the_cap_keeps_everything() {
        let (mut f, t) = capped("below", 100);
        f.write_all(b"hello ").unwrap();
        f.write_all(b"world").unwrap();
        assert_eq!(contents(&t), b"hello world");
        f.write_all(&[b'x'; 89]).unwrap(); // exactly 100 bytes
        assert_eq!(contents(&t).len(), 100);
    }

    #[test]
    fn file_over_the_cap_keeps_the_newest_half() {
        let (mut f, t) = capped("over", 100);
        let all: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        for (i, b) in all.iter().enumerate() {
            f.write_all(&[*b]).unwrap();
            let c = contents(&t);
            assert!(c.len() <= 100, "{} bytes after {}", c.len(), i + 1);
            // Always the newest bytes, in order.
            assert_eq!(c[..], all[i + 1 - c.len()..=i]);
            if i >= 100 {
                assert!(c.len() >= 50);
            }
        }
    }

    #[test]
    fn a_write_bigger_than_half_the_cap_keeps_its_own_tail() {
        let (mut f, t) = capped("big", 10);
        f.write_all(b"abc").unwrap();
        f.write_all(b"0123456789XYZ").unwrap();
        assert_eq!(contents(&t), b"89XYZ");
        f.write_all(b"!").unwrap();
        assert_eq!(contents(&t), b"89XYZ!");
        let (mut z, t) = capped("zero", 0);
        z.write_all(b"nothing is kept").unwrap();
        assert_eq!(contents(&t), b"");
    }

    #[test]
    fn device_ignores_odd_accesses() {
        let out = SerialOut::new(SerialSink::Off);
        let mut dev = SerialDevice::new(EventFdTrigger(EventFd::new(0).unwrap()), out);
        let mut four = [0u8; 4];
        dev.read(0, &mut four);
        assert_eq!(four, [0xff; 4]);
        dev.write(u64::MAX, &[1]);
        dev.write(3, &[1, 2]);
        let mut one = [0u8];
        dev.read(5, &mut one); // LSR: transmitter empty
        assert_ne!(one[0] & 0x20, 0);
    }
}
