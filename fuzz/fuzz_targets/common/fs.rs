//! The virtio-fs harness shared by `virtio_fs` (a writable share) and `virtio_fs_ro` (a
//! read-only share): descriptor chains and FUSE requests from the guest, served by the device's
//! FUSE server (fuse-backend-rs passthrough behind the share's guard) against a real shared
//! directory.
//!
//! Each input runs against a fresh server, after a well-formed FUSE_INIT (deterministic: node
//! ids and file handles are allocated from 2 and 1 in request order). A writable share is laid
//! out afresh for every input; a read-only one once. Two modes, by the first byte:
//! - even: a sequence of FUSE messages `[len: u16 le][bytes; len]`, each sent as a well-formed
//!   chain (request readable, 64 KiB reply writable), so the fuzzer works on FUSE itself;
//! - odd: the rest is the guest memory image 0x0..0x8000 (desc table of 16 at 0x0, avail ring
//!   at 0x100, used ring at 0x200, buffers anywhere; descriptors may point outside memory), so
//!   the fuzzer works on the chains too.
//!
//! Oracle beyond "no panic, no hang": after each input, the directory next to the share (the
//! host outside the share) is checked to be exactly as it was; for a read-only share, the share
//! too (every mode, owner, size, mtime and content: the guard must refuse every change). Set
//! HULL_FS_FUZZ_DIR to a small tmpfs (fuzz.sh does, in a private mount namespace) so that writes
//! and fallocates stay bounded.

use std::cell::RefCell;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use hull_vmm::devices::virtio::fs::{FsConfig, FsServer};
use hull_vmm::devices::virtio::{GuestMemory, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 0x4_0000;
const FUZZ_QSIZE: u16 = 16;
/// The harness's own queue (INIT and message mode), past the fuzzer's image.
const HQ_DESC: u64 = 0x8000;
const HQ_AVAIL: u64 = 0x8400;
const HQ_USED: u64 = 0x8800;
const HQ_SIZE: u16 = 64;
const REQ_ADDR: u64 = 0x1_0000;
const REQ_MAX: usize = 0x1_0000;
const REPLY_ADDR: u64 = 0x2_0000;
const REPLY_LEN: u32 = 0x1_0000;

struct NoIrq;
impl VirtioInterrupt for NoIrq {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct Harness {
    read_only: bool,
    base: PathBuf,
    share: PathBuf,
    cfg: FsConfig,
    outside: Vec<String>,
}

/// Everything under `dir` except `skip` (path, type, mode, owner, size, mtime, contents).
fn snapshot(dir: &Path, skip: Option<&Path>) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if Some(p.as_path()) == skip {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                std::fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.push(format!(
                "{} {:o} {}:{} {} {} {:?}",
                p.display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                m.mtime(),
                content
            ));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

impl Harness {
    fn new(read_only: bool) -> Harness {
        let root = std::env::var_os("HULL_FS_FUZZ_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let base = root.join(format!(
            "hull-fs-fuzz{}.{}",
            if read_only { "-ro" } else { "" },
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(base.join("outside/dir")).unwrap();
        std::fs::write(base.join("outside/secret"), b"host secret").unwrap();
        std::fs::write(base.join("outside/dir/inner"), b"inner").unwrap();
        let share = base.join("share");
        std::fs::create_dir_all(&share).unwrap();
        let mut cfg = FsConfig::new("fuzz", &share);
        cfg.xattr = true;
        cfg.read_only = read_only;
        // Through Fs::new as the VMM does it (checks, canonical path).
        let dev = hull_vmm::devices::virtio::fs::Fs::new(cfg).unwrap();
        let cfg = dev.config().clone();
        let mut h = Harness {
            read_only,
            base,
            share,
            cfg,
            outside: Vec::new(),
        };
        if read_only {
            h.lay_out_share();
        }
        h.outside = snapshot(&h.base, h.skip());
        h
    }

    /// What the oracle does not look at: a writable share.
    fn skip(&self) -> Option<&Path> {
        (!self.read_only).then_some(self.share.as_path())
    }

    /// The share as every input finds it.
    fn lay_out_share(&self) {
        let s = &self.share;
        let _ = std::fs::remove_dir_all(s);
        std::fs::create_dir_all(s.join("dir/sub")).unwrap();
        std::fs::write(s.join("file"), b"0123456789abcdef").unwrap();
        std::fs::write(s.join("dir/f2"), b"second").unwrap();
        symlink(self.base.join("outside/secret"), s.join("abs")).unwrap();
        symlink("../outside/dir", s.join("rel")).unwrap();
        symlink("file", s.join("in")).unwrap();
    }

    fn check_outside(&self) {
        let now = snapshot(&self.base, self.skip());
        assert_eq!(
            now, self.outside,
            "the host changed (outside the share, or a read-only share)"
        );
    }
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

fn queue(desc: u64, avail: u64, used: u64, size: u16) -> Queue {
    let mut q = Queue::new(size).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(desc as u32), Some(0));
    q.set_avail_ring_address(Some(avail as u32), Some(0));
    q.set_used_ring_address(Some(used as u32), Some(0));
    q.set_ready(true);
    q
}

/// Sends one well-formed chain (request, reply buffer) on the harness queue.
fn send(server: &FsServer, mem: &GuestMemory, q: &mut Queue, req: &[u8]) {
    let req = &req[..req.len().min(REQ_MAX)];
    mem.write_slice(req, GuestAddress(REQ_ADDR)).unwrap();
    let desc = |i: u64, addr: u64, len: u32, flags: u16, next: u16| {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        mem.write_slice(&d, GuestAddress(HQ_DESC + 16 * i)).unwrap();
    };
    desc(0, REQ_ADDR, req.len() as u32, 1, 1);
    desc(1, REPLY_ADDR, REPLY_LEN, 2, 0);
    let idx: u16 = mem.read_obj(GuestAddress(HQ_AVAIL + 2)).unwrap();
    mem.write_obj(
        0u16,
        GuestAddress(HQ_AVAIL + 4 + 2 * u64::from(idx % HQ_SIZE)),
    )
    .unwrap();
    mem.write_obj(idx.wrapping_add(1), GuestAddress(HQ_AVAIL + 2))
        .unwrap();
    server.process_queue(mem, q, &NoIrq, None);
}

fn init_request() -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&(40u32 + 16).to_le_bytes()); // len
    r.extend_from_slice(&26u32.to_le_bytes()); // FUSE_INIT
    r.extend_from_slice(&1u64.to_le_bytes()); // unique
    r.extend_from_slice(&0u64.to_le_bytes()); // nodeid
    r.extend_from_slice(&[0u8; 16]); // uid gid pid padding
    r.extend_from_slice(&7u32.to_le_bytes());
    r.extend_from_slice(&31u32.to_le_bytes());
    r.extend_from_slice(&0x2_0000u32.to_le_bytes());
    r.extend_from_slice(&0u32.to_le_bytes());
    r
}

/// Runs one input against the share (`read_only` must be the same on every call).
pub fn run(data: &[u8], read_only: bool) {
    if data.is_empty() {
        return;
    }
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        let h = h.get_or_insert_with(|| Harness::new(read_only));
        if !h.read_only {
            h.lay_out_share();
        }
        let server = FsServer::new(&h.cfg).unwrap();
        let mem: GuestMemory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mut hq = queue(HQ_DESC, HQ_AVAIL, HQ_USED, HQ_SIZE);
        send(&server, &mem, &mut hq, &init_request());

        if data[0] & 1 == 0 {
            let mut rest = &data[1..];
            let mut n = 0;
            while rest.len() >= 2 && n < 64 {
                let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])).min(rest.len() - 2);
                send(&server, &mem, &mut hq, &rest[2..2 + len]);
                rest = &rest[2 + len..];
                n += 1;
            }
        } else {
            let image = &data[1..data.len().min(0x8001)];
            mem.write_slice(image, GuestAddress(0)).unwrap();
            let mut q = queue(0, 0x100, 0x200, FUZZ_QSIZE);
            // Event index mode on odd-length inputs: the fuzzer runs both.
            q.set_event_idx(data.len() % 2 == 1);
            server.process_queue(&mem, &mut q, &NoIrq, None);
        }
        drop(server);
        h.check_outside();
    });
}
