//! Hybrid vsock's `CONNECT <port>\n` line, end to end: a host client connects to the device's
//! Unix socket and sends the fuzzer's bytes, which the muxer reads byte by byte (length limit,
//! the line parser in `vmm/src/devices/virtio/vsock/unix/muxer.rs`). The guest has a sane RX
//! queue. Oracle, against a reference reading of the documented format (`CONNECT <port>`,
//! keyword case-insensitive, ASCII whitespace around the two words, trailing `\r`s, a `u32`
//! port, at most 32 bytes before the `\n`): a good line makes exactly one connection request to
//! the guest, to that port, from a host port of 2^30 or more; anything else makes none.

#![no_main]

#[path = "common/vsock.rs"]
mod vsock;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress};
use vsock::{queue, sane_rx, Device};

thread_local! {
    static DIR: PathBuf = {
        let d = std::env::temp_dir().join(format!("hull-vsock-connect-fuzz.{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
}

const OP_REQUEST: u16 = 1;
const RX_BUFS: u64 = 0x9000;

/// The port a well-formed line names.
fn reference(data: &[u8]) -> Option<u32> {
    let nl = data.iter().position(|&b| b == b'\n')?;
    if nl > 32 {
        return None;
    }
    let mut line = &data[..nl];
    while let [rest @ .., b'\r'] = line {
        line = rest;
    }
    let text = std::str::from_utf8(line).ok()?;
    let words: Vec<&str> = text
        .split(|c: char| c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .collect();
    match words[..] {
        [cmd, port] if cmd.to_ascii_lowercase() == "connect" => port.parse().ok(),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(64)];
    DIR.with(|dir| {
        let mut d = Device::new(dir);
        sane_rx(&d.mem, 0x0, RX_BUFS, 4);
        d.activate(
            data.len() % 2 == 1,
            vec![
                queue(0x0, 0x100, 0x200),
                queue(0x8000, 0x8100, 0x8200),
                queue(0xc000, 0xc100, 0xc200),
            ],
        );
        let mut client = UnixStream::connect(&d.uds).unwrap();
        client.write_all(data).unwrap();
        // The muxer reads what is there, then sees the end of the line (or of the stream).
        let _ = client.shutdown(std::net::Shutdown::Write);
        for _ in 0..4 {
            d.run(1);
            d.kicks[0].write(1).unwrap();
            d.run(1);
        }
        let used: u16 = d.mem.read_obj(GuestAddress(0x202)).unwrap();
        let mut requests = Vec::new();
        for i in 0..u64::from(used) {
            let id: u32 = d.mem.read_obj(GuestAddress(0x204 + 8 * i)).unwrap();
            let hdr = RX_BUFS + u64::from(id / 2) * 0x500;
            let op: u16 = d.mem.read_obj(GuestAddress(hdr + 30)).unwrap();
            let src: u32 = d.mem.read_obj(GuestAddress(hdr + 16)).unwrap();
            let dst: u32 = d.mem.read_obj(GuestAddress(hdr + 20)).unwrap();
            assert_eq!(
                op, OP_REQUEST,
                "only a connection request can reach the guest"
            );
            assert!(src >= 1 << 30, "host port {src}");
            requests.push(dst);
        }
        let want = reference(data);
        assert_eq!(
            requests,
            want.into_iter().collect::<Vec<_>>(),
            "line {:?}",
            String::from_utf8_lossy(data)
        );
        d.reset();
        drop(client);
    });
});
