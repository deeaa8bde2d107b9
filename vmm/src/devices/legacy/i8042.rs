//! A minimal i8042 PS/2 controller (modelled on Firecracker's): enough for Linux's i8042 and
//! atkbd drivers (booted with `i8042.noaux i8042.nomux i8042.dumbkbd i8042.nopnp`), the CPU
//! reset command a guest `reboot` (with `reboot=k`) sends, and a Ctrl-Alt-Del key sequence the
//! VMM injects to ask the guest to shut down.
//!
//! vm-superio's `I8042Device` only implements the reset command, so it cannot deliver keys.

use std::collections::VecDeque;
use std::sync::Arc;

use vm_superio::Trigger;

use super::EventFdTrigger;
use crate::devices::bus::BusDevice;
use crate::exit::ExitState;

/// Offsets on the bus: the device is mapped at 0x60 with length 5 (0x60 data, 0x64 command).
const OFS_DATA: u64 = 0;
const OFS_STATUS: u64 = 4;

// Controller commands (written to 0x64).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

// Status register bits.
const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYS_FLAG: u8 = 0x04;
const SB_CMD_DATA: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

// Control register bits.
const CB_KBD_INT: u8 = 0x01;
const CB_POST_OK: u8 = 0x04;

// Keyboard replies.
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_RESET: u8 = 0xff;
const KBD_GET_ID: u8 = 0xf2;

/// Scan-code set 2 make codes for Ctrl, Alt, Del (Del is extended: 0xe0 0x71), then their breaks.
const CTRL_ALT_DEL: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

/// Most bytes queued for the guest; more are dropped (the guest is not reading).
const BUF_CAP: usize = 16;

/// The controller.
pub struct I8042 {
    irq: EventFdTrigger,
    exit: Arc<ExitState>,
    status: u8,
    control: u8,
    outp: u8,
    pending_cmd: Option<u8>,
    buf: VecDeque<u8>,
}

/// The controller's registers and output buffer, as a snapshot keeps them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042Snapshot {
    pub status: u8,
    pub control: u8,
    pub outp: u8,
    pub pending_cmd: Option<u8>,
    pub buf: Vec<u8>,
}

impl I8042 {
    /// The state, for a snapshot.
    pub fn state(&self) -> I8042Snapshot {
        I8042Snapshot {
            status: self.status,
            control: self.control,
            outp: self.outp,
            pending_cmd: self.pending_cmd,
            buf: self.buf.iter().copied().collect(),
        }
    }

    /// Takes a snapshot's state (an output buffer beyond the controller's size is refused).
    pub fn restore(&mut self, s: &I8042Snapshot) -> Result<(), String> {
        if s.buf.len() > BUF_CAP {
            return Err(format!(
                "i8042 state: {} buffered bytes, at most {BUF_CAP}",
                s.buf.len()
            ));
        }
        self.status = s.status;
        self.control = s.control;
        self.outp = s.outp;
        self.pending_cmd = s.pending_cmd;
        self.buf = s.buf.iter().copied().collect();
        Ok(())
    }

    pub fn new(irq: EventFdTrigger, exit: Arc<ExitState>) -> I8042 {
        I8042 {
            irq,
            exit,
            status: SB_SYS_FLAG | SB_KBD_ENABLED,
            control: CB_POST_OK | CB_KBD_INT,
            outp: 0x01,
            pending_cmd: None,
            buf: VecDeque::with_capacity(BUF_CAP),
        }
    }

    /// Queues the Ctrl-Alt-Del key sequence for the guest. Returns false when the guest is not
    /// draining the keyboard buffer (the sequence did not fit).
    pub fn send_ctrl_alt_del(&mut self) -> bool {
        if BUF_CAP - self.buf.len() < CTRL_ALT_DEL.len() {
            return false;
        }
        for b in CTRL_ALT_DEL {
            self.push(b);
        }
        self.kick();
        true
    }

    fn push(&mut self, b: u8) {
        if self.buf.len() < BUF_CAP {
            self.buf.push_back(b);
        }
        self.status |= SB_OUT_DATA_AVAIL;
    }

    fn kick(&self) {
        if self.control & CB_KBD_INT != 0 && !self.buf.is_empty() {
            if let Err(e) = self.irq.trigger() {
                tracing::warn!("cannot raise the keyboard interrupt: {e}");
            }
        }
    }

    fn pop(&mut self) -> u8 {
        let b = self.buf.pop_front().unwrap_or(0);
        if self.buf.is_empty() {
            self.status &= !SB_OUT_DATA_AVAIL;
        } else {
            self.kick();
        }
        b
    }

    fn command(&mut self, cmd: u8) {
        self.status |= SB_CMD_DATA;
        match cmd {
            CMD_READ_CTR => self.push(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTP => self.pending_cmd = Some(cmd),
            CMD_READ_OUTP => self.push(self.outp),
            CMD_SELF_TEST => self.push(0x55),
            CMD_KBD_TEST => self.push(0x00),
            CMD_RESET_CPU => self.exit.guest_reset(),
            // Enable/disable ports and anything else: accepted, no reply.
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.status &= !SB_CMD_DATA;
        match self.pending_cmd.take() {
            Some(CMD_WRITE_CTR) => self.control = value,
            Some(CMD_WRITE_OUTP) => self.outp = value,
            _ => {
                // A keyboard command: acknowledge it, as a keyboard would.
                self.push(KBD_ACK);
                match value {
                    KBD_RESET => self.push(KBD_SELF_TEST_OK),
                    KBD_GET_ID => {
                        self.push(0xab);
                        self.push(0x83);
                    }
                    _ => {}
                }
                self.kick();
            }
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if data.len() != 1 {
            data.fill(0xff);
            return;
        }
        data[0] = match offset {
            OFS_DATA => self.pop(),
            OFS_STATUS => self.status,
            _ => 0xff,
        };
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        match offset {
            OFS_DATA => self.data(data[0]),
            OFS_STATUS => self.command(data[0]),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit::ExitReason;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    fn dev() -> (I8042, Arc<ExitState>) {
        let exit = Arc::new(ExitState::new().unwrap());
        let irq = EventFdTrigger(EventFd::new(EFD_NONBLOCK).unwrap());
        (I8042::new(irq, exit.clone()), exit)
    }

    fn rd(d: &mut I8042, off: u64) -> u8 {
        let mut b = [0u8];
        d.read(off, &mut b);
        b[0]
    }

    #[test]
    fn reset_command_ends_the_vm_as_a_reboot() {
        let (mut d, exit) = dev();
        d.write(OFS_STATUS, &[CMD_RESET_CPU]);
        assert!(matches!(exit.reason(), Some(ExitReason::GuestReboot)));
    }

    #[test]
    fn control_register_round_trip_and_self_test() {
        let (mut d, _) = dev();
        d.write(OFS_STATUS, &[CMD_WRITE_CTR]);
        d.write(OFS_DATA, &[0x45]);
        d.write(OFS_STATUS, &[CMD_READ_CTR]);
        assert_ne!(rd(&mut d, OFS_STATUS) & SB_OUT_DATA_AVAIL, 0);
        assert_eq!(rd(&mut d, OFS_DATA), 0x45);
        assert_eq!(rd(&mut d, OFS_STATUS) & SB_OUT_DATA_AVAIL, 0);
        d.write(OFS_STATUS, &[CMD_SELF_TEST]);
        assert_eq!(rd(&mut d, OFS_DATA), 0x55);
    }

    #[test]
    fn ctrl_alt_del_is_queued_and_interrupts() {
        let (mut d, _) = dev();
        assert!(d.send_ctrl_alt_del());
        assert_eq!(d.irq.0.read().unwrap(), 1);
        let mut got = Vec::new();
        while rd(&mut d, OFS_STATUS) & SB_OUT_DATA_AVAIL != 0 {
            got.push(rd(&mut d, OFS_DATA));
        }
        assert_eq!(got, CTRL_ALT_DEL.to_vec());
    }

    #[test]
    fn buffer_is_bounded_and_odd_accesses_are_ignored() {
        let (mut d, exit) = dev();
        for _ in 0..100 {
            d.write(OFS_DATA, &[0xee]);
        }
        assert_eq!(d.buf.len(), BUF_CAP);
        assert!(!d.send_ctrl_alt_del());
        d.write(OFS_STATUS, &[CMD_RESET_CPU, 0]);
        d.write(2, &[CMD_RESET_CPU]);
        let mut wide = [0u8; 4];
        d.read(OFS_DATA, &mut wide);
        assert_eq!(wide, [0xff; 4]);
        assert!(exit.reason().is_none());
    }
}
