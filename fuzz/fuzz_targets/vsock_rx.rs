//! The vsock device's RX path: the guest's RX descriptor table, avail ring and buffers are the
//! fuzzer's bytes (desc table of 16 at 0x0, avail ring at 0x100, used ring at 0x200, buffers
//! anywhere in 0x0..0x8000 or outside memory), while the device has packets to deliver: the
//! reply to a guest connect to a host listener plus the data the host writes on it, RSTs for
//! packets to unknown ports, and a host-initiated connection (`CONNECT 52`) with data. The TX
//! queue (0x8000) is well formed, from the harness. Oracle: no panic, and a reset ends every
//! connection.

#![no_main]

#[path = "common/vsock.rs"]
mod vsock;

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vsock::{header, queue, write_desc, Device, HDR_LEN};

thread_local! {
    static DIR: PathBuf = {
        let d = std::env::temp_dir().join(format!("hull-vsock-rx-fuzz.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
}

const OP_REQUEST: u16 = 1;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;

fuzz_target!(|data: &[u8]| {
    DIR.with(|dir| {
        let mut d = Device::new(dir);
        let n = data.len().min(0x8000);
        d.mem.write_slice(&data[..n], GuestAddress(0)).unwrap();

        // The guest's TX packets: connect to host port 1, data to an unknown port (RST), and a
        // credit update for the connection.
        let host = UnixListener::bind(format!("{}_1", d.uds.display())).unwrap();
        host.set_nonblocking(true).unwrap();
        let pkts: [([u8; 44], &[u8]); 3] = [
            (header(OP_REQUEST, 1000, 1, 0, 0), b""),
            (header(OP_RW, 1001, 77, 3, 0), b"abc"),
            (header(OP_CREDIT_UPDATE, 1000, 1, 0, 0), b""),
        ];
        let mut desc = 0u16;
        for (i, (h, body)) in pkts.iter().enumerate() {
            let addr = 0xa000 + 0x100 * i as u64;
            d.mem.write_slice(h, GuestAddress(addr)).unwrap();
            if body.is_empty() {
                write_desc(&d.mem, 0x8000, desc, addr, HDR_LEN as u32, 0, 0);
            } else {
                d.mem.write_slice(body, GuestAddress(addr + 0x40)).unwrap();
                write_desc(&d.mem, 0x8000, desc, addr, HDR_LEN as u32, 1, desc + 1);
                write_desc(
                    &d.mem,
                    0x8000,
                    desc + 1,
                    addr + 0x40,
                    body.len() as u32,
                    0,
                    0,
                );
            }
            d.mem
                .write_obj(desc, GuestAddress(0x8104 + 2 * i as u64))
                .unwrap();
            desc += if body.is_empty() { 1 } else { 2 };
        }
        d.mem
            .write_obj(pkts.len() as u16, GuestAddress(0x8102))
            .unwrap();

        // A host client connecting to guest port 52, with data after the line.
        let mut client = UnixStream::connect(&d.uds).unwrap();
        client.write_all(b"CONNECT 52\nhello guest").unwrap();

        d.activate(
            data.len() % 2 == 1,
            vec![
                queue(0x0, 0x100, 0x200),
                queue(0x8000, 0x8100, 0x8200),
                queue(0xc000, 0xc100, 0xc200),
            ],
        );
        d.run(2);
        let mut accepted = Vec::new();
        while let Ok((mut s, _)) = host.accept() {
            let _ = s.write_all(&[b'h'; 3000]);
            accepted.push(s);
        }
        for _ in 0..3 {
            d.kicks[1].write(1).unwrap();
            d.kicks[0].write(1).unwrap();
            d.run(2);
        }
        d.reset();
        drop(accepted);
        drop(client);
    });
});
