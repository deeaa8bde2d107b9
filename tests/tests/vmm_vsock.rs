//! virtio-vsock end to end: hull-vmm boots the guest kernel with `--vsock-uds`, and the static
//! `hull-guest-probe` (AF_VSOCK) runs inside the guest.
//!
//! - A host client reaches a guest listener through the hybrid Unix socket
//!   (`CONNECT <port>\n` / `OK <hostport>\n`).
//! - A guest client reaches a host listener at `<uds>_<port>`.
//! - 16 MiB each way arrive byte-exact (both ends compute the checksum independently), and 32
//!   concurrent connections each way work.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use hull_tests::stream_check::{expected, reply_line, Checksum, Pattern};
use hull_tests::vm::{self, VmmProcess};
use hull_tests::{Initramfs, TempDir};

/// Generous: everything runs under software emulation inside the emulated KVM host.
const VM_LIMIT: Duration = Duration::from_secs(600);
/// Longest a single read, write or accept may block: a stalled stream fails the test with the
/// guest's console instead of hanging it.
const IO_LIMIT: Duration = Duration::from_secs(240);
const BIG: u64 = 16 << 20;
const CONNS: u64 = 32;
const SMALL: u64 = 256 << 10;

/// The probe, built by cargo alongside this test (static when built the way `make` builds).
fn probe() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_BIN_EXE_hull-guest-probe"));
    let elf = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    // The guest has no libc: the probe must not need an ELF interpreter (PT_INTERP).
    assert!(
        !has_interp(&elf),
        "{} is dynamically linked; build the tests the way `make vm-test` does \
         (CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' \
         cargo test --release --target x86_64-unknown-linux-gnu -p hull-tests --no-run)",
        p.display()
    );
    p
}

/// Whether a 64-bit little-endian ELF has a PT_INTERP program header.
fn has_interp(elf: &[u8]) -> bool {
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    assert!(elf.len() > 64 && &elf[..4] == b"\x7fELF", "not an ELF file");
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

struct Vm {
    vmm: VmmProcess,
    uds: PathBuf,
    _dir: TempDir,
}

/// Boots hull-vmm with vsock and an initramfs whose /init runs `script` (with the probe at
/// /bin/hull-guest-probe), then reboots.
fn boot(tag: &str, script: &str) -> Vm {
    let dir = TempDir::new(tag);
    let initrd = dir.path().join("initrd.cpio");
    let probe_bytes = std::fs::read(probe()).unwrap();
    Initramfs::new()
        .file("/bin/hull-guest-probe", probe_bytes, 0o755)
        .init_script(&format!(
            "mount -t proc proc /proc\nmount -t sysfs sys /sys\n{script}\necho GUEST-DONE\nreboot -f\n"
        ))
        .build(&initrd);
    let mut c = vm::config(&initrd);
    let uds = vm::add_vsock(&mut c, dir.path());
    Vm {
        vmm: vm::launch(&c, dir.path()),
        uds,
        _dir: dir,
    }
}

impl Vm {
    fn console_text(&self) -> String {
        self.vmm.console()
    }

    /// Waits for the guest to reboot (hull-vmm exits 0) and returns the console.
    fn finish(mut self) -> String {
        let text = vm::expect_exit(&mut self.vmm, VM_LIMIT, 0, "hull-vmm: ");
        assert!(
            !self.uds.exists(),
            "hull-vmm left its vsock socket {} behind",
            self.uds.display()
        );
        text
    }
}

/// Reads one `\n`-terminated line byte by byte (nothing past it is consumed).
fn read_line(s: &mut UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b)? {
            0 => break,
            _ if b[0] == b'\n' => {
                line.push(b'\n');
                break;
            }
            _ => line.push(b[0]),
        }
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Connects through the hybrid socket to guest port `port`, retrying while the guest's listener
/// is not up yet (the device closes the stream without `OK` when the guest refuses).
fn host_connect(vm: &Vm, port: u32, deadline: Instant) -> UnixStream {
    loop {
        if let Ok(mut s) = UnixStream::connect(&vm.uds) {
            s.set_read_timeout(Some(IO_LIMIT)).unwrap();
            s.set_write_timeout(Some(IO_LIMIT)).unwrap();
            s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
            match read_line(&mut s) {
                Ok(l) if l.starts_with("OK ") && l.ends_with('\n') => {
                    let host_port: u32 = l[3..].trim().parse().expect("OK <port>");
                    assert!(host_port > 0);
                    return s;
                }
                Ok(l) => assert!(l.is_empty(), "unexpected answer to CONNECT: {l:?}"),
                Err(_) => {}
            }
        }
        assert!(
            Instant::now() < deadline,
            "could not reach guest port {port}; console:\n{}",
            vm.console_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends `len` bytes of `Pattern::new(seed)`, half-closes, and returns the peer's reply line; an
/// I/O error or timeout names the step and how far it got.
fn send_and_reply(mut s: UnixStream, seed: u64, len: u64) -> Result<(Checksum, String), String> {
    let mut p = Pattern::new(seed);
    let mut sum = Checksum::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        p.fill(&mut buf[..n]);
        sum.update(&buf[..n]);
        s.write_all(&buf[..n])
            .map_err(|e| format!("writing at byte {} of {len}: {e}", len - left))?;
        left -= n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)
        .map_err(|e| format!("shutdown(write): {e}"))?;
    let line = read_line(&mut s).map_err(|e| format!("reading the reply line: {e}"))?;
    Ok((sum, line))
}

#[test]
fn host_client_reaches_guest_listener_16mib_and_32_concurrent() {
    let vm = boot(
        "hull-vsock-h2g",
        &format!(
            "/bin/hull-guest-probe vsock-listen 1234 --count {}",
            1 + CONNS
        ),
    );
    let deadline = Instant::now() + VM_LIMIT;
    // 16 MiB over one connection: the guest counts and checksums what it read.
    let s = host_connect(&vm, 1234, deadline);
    let (sum, reply) = send_and_reply(s, 7, BIG)
        .unwrap_or_else(|e| panic!("16 MiB to the guest: {e}; console:\n{}", vm.console_text()));
    assert_eq!(
        reply,
        reply_line(BIG, sum),
        "the guest's count/checksum of 16 MiB differs; console:\n{}",
        vm.console_text()
    );
    // 32 connections at once.
    let streams: Vec<UnixStream> = (0..CONNS)
        .map(|_| host_connect(&vm, 1234, deadline))
        .collect();
    let workers: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            std::thread::spawn(move || (i as u64, send_and_reply(s, 100 + i as u64, SMALL)))
        })
        .collect();
    for w in workers {
        let (i, res) = w.join().unwrap();
        let (sum, reply) = res.unwrap_or_else(|e| {
            panic!(
                "connection {i} of {CONNS}: {e}; console:\n{}",
                vm.console_text()
            )
        });
        assert_eq!(reply, reply_line(SMALL, sum), "connection {i}");
    }
    let console = vm.finish();
    assert_eq!(
        console.lines().filter(|l| l.starts_with("SERVED ")).count() as u64,
        1 + CONNS,
        "{console}"
    );
    assert!(
        console.contains(&format!("LISTEN-DONE {}", 1 + CONNS)),
        "{console}"
    );
}

/// Serves `conns` connections of a host listener concurrently: each is read to EOF, answered
/// with its byte count and checksum (which the guest checks against its own), and the counts and
/// checksums are returned for the test to check against what the guest was told to send. An
/// accept, read or write that stalls for `IO_LIMIT` is an error naming the step.
fn serve_host(l: &UnixListener, conns: u64) -> Result<Vec<(u64, Checksum)>, String> {
    l.set_nonblocking(true).unwrap();
    let mut workers = Vec::new();
    for c in 0..conns {
        let deadline = Instant::now() + IO_LIMIT;
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err(format!(
                            "no guest connection {} of {conns} within {IO_LIMIT:?}",
                            c + 1
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        workers.push(std::thread::spawn(
            move || -> Result<(u64, Checksum), String> {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(IO_LIMIT)).unwrap();
                s.set_write_timeout(Some(IO_LIMIT)).unwrap();
                let mut buf = vec![0u8; 64 * 1024];
                let mut sum = Checksum::default();
                let mut total = 0u64;
                loop {
                    let n = s
                        .read(&mut buf)
                        .map_err(|e| format!("reading after {total} bytes: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    sum.update(&buf[..n]);
                    total += n as u64;
                }
                s.write_all(reply_line(total, sum).as_bytes())
                    .map_err(|e| format!("writing the reply: {e}"))?;
                Ok((total, sum))
            },
        ));
    }
    workers.into_iter().map(|w| w.join().unwrap()).collect()
}

#[test]
fn guest_client_reaches_host_listener_16mib_and_32_concurrent() {
    // The host listener sits at `<uds>_5000`: the VM is booted first and the listener bound
    // right after; the probe retries refused connections until it is there.
    let vm = boot(
        "hull-vsock-g2h",
        &format!(
            "/bin/hull-guest-probe vsock-send 2 5000 {BIG} --seed 7; echo \"BIG-EXIT $?\"\n\
             /bin/hull-guest-probe vsock-send 2 5000 {SMALL} --conns {CONNS} --seed 100; echo \"MANY-EXIT $?\""
        ),
    );
    let mut lpath = vm.uds.as_os_str().to_owned();
    lpath.push("_5000");
    let lpath = PathBuf::from(lpath);
    let l = UnixListener::bind(&lpath).unwrap();
    std::fs::set_permissions(&lpath, std::fs::Permissions::from_mode(0o600)).unwrap();

    let fail =
        |what: &str, e: String| -> ! { panic!("{what}: {e}; console:\n{}", vm.console_text()) };
    let big = serve_host(&l, 1).unwrap_or_else(|e| fail("16 MiB from the guest", e));
    assert_eq!(
        big,
        vec![(BIG, expected(7, BIG))],
        "16 MiB from the guest differ"
    );
    let mut many =
        serve_host(&l, CONNS).unwrap_or_else(|e| fail("32 connections from the guest", e));
    many.sort_by_key(|(_, s)| s.0);
    let mut want: Vec<(u64, Checksum)> = (0..CONNS)
        .map(|i| (SMALL, expected(100 + i, SMALL)))
        .collect();
    want.sort_by_key(|(_, s)| s.0);
    assert_eq!(
        many, want,
        "the 32 concurrent streams from the guest differ"
    );

    let console = vm.finish();
    assert!(console.contains("BIG-EXIT 0"), "{console}");
    assert!(console.contains("MANY-EXIT 0"), "{console}");
    let sent_big = format!("SENT 0 {BIG} {:016x} OK", expected(7, BIG).0);
    assert!(
        console.contains(&sent_big),
        "the guest's own checksum line is missing:\n{console}"
    );
    assert_eq!(
        console
            .lines()
            .filter(|l| l.starts_with("SENT ") && l.contains(" OK "))
            .count() as u64,
        1 + CONNS,
        "{console}"
    );
}
