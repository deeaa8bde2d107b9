//! Device tests with no VM: virtio-queue's `MockSplitQueue` lays out the rings in guest memory,
//! a small driver below plays the guest's virtio-fs driver (FUSE requests as the Linux client
//! sends them), and a temporary directory is the share.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fuse_backend_rs::abi::fuse_abi::{
    AccessIn, Attr, AttrOut, BatchForgetIn, CreateIn, Dirent, EntryOut, FallocateIn, ForgetIn,
    ForgetOne, GetattrIn, GetxattrIn, GetxattrOut, InHeader, InitIn, InitOut, LinkIn, MkdirIn,
    MknodIn, Opcode, OpenIn, OpenOut, OutHeader, ReadIn, ReleaseIn, Rename2In, RenameIn, SetattrIn,
    SetxattrIn, WriteIn, WriteOut,
};
use virtio_bindings::bindings::virtio_ring::{
    VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::Queue;
use vm_memory::{ByteValued, Bytes, GuestAddress};

use super::*;
use crate::devices::virtio::test_utils::{test_mem, Desc, TempDir, TestIrq, TestQueue, MEM_SIZE};
use crate::devices::virtio::{ActivateError, GuestMemory, VirtioDevice, VirtioInterrupt};

const QSIZE: u16 = 256;
const REQ_ADDR: u64 = 0x10_0000;
const REPLY_ADDR: u64 = 0x40_0000;
const REPLY_CAP: u32 = 0x40_0000;
/// Descriptor indices from here on are free for hand-made chains.
const RAW: u16 = 64;
const ROOT: u64 = 1;
const HDR: usize = std::mem::size_of::<InHeader>();
/// INIT flags.
const WRITEBACK_CACHE: u32 = 1 << 16;
const BIG_WRITES: u32 = 1 << 5;
const MAX_PAGES: u32 = 1 << 22;

/// A reply as the guest reads it.
#[derive(Debug)]
struct Reply {
    used_len: u32,
    error: i32,
    data: Vec<u8>,
}

/// The guest side: memory, one request queue, and the FUSE server behind it.
struct Guest {
    mem: GuestMemory,
    ring: TestQueue,
    queue: Queue,
    server: FsServer,
    irq: TestIrq,
    unique: u64,
    uid: u32,
    gid: u32,
    used_seen: u16,
    /// The share and its parent (outside the share, where escapes would land).
    share: PathBuf,
    _tmp: TempDir,
}

fn share_with(tag: &str, f: impl FnOnce(&mut FsConfig)) -> Guest {
    let tmp = TempDir::new(tag);
    let share = tmp.0.join("share");
    fs::create_dir(&share).unwrap();
    fs::write(tmp.0.join("secret"), b"host secret").unwrap();
    fs::set_permissions(tmp.0.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    let mut cfg = FsConfig::new("t", &share);
    f(&mut cfg);
    // Through Fs::new, as the VMM does it (canonical path, limit raised).
    let dev = Fs::new(cfg).unwrap();
    let server = FsServer::new(dev.config()).unwrap();
    let mem = test_mem();
    let ring = TestQueue::create(&mem, GuestAddress(0), QSIZE);
    Guest {
        queue: ring.queue(),
        ring,
        mem,
        server,
        irq: TestIrq::default(),
        unique: 0,
        uid: 0,
        gid: 0,
        used_seen: 0,
        share,
        _tmp: tmp,
    }
}

fn share(tag: &str) -> Guest {
    share_with(tag, |_| {})
}

/// A share holding `f` (10 bytes), after INIT: `f`'s entry and a read-write handle to it.
fn share_with_open_file(tag: &str) -> (Guest, EntryOut, u64) {
    let mut g = share(tag);
    fs::write(g.share.join("f"), b"0123456789").unwrap();
    g.init();
    let e = g.lookup(ROOT, "f").unwrap();
    let fh = g.open(e.nodeid, libc::O_RDWR).unwrap();
    (g, e, fh)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn parse<T: ByteValued + Default>(data: &[u8]) -> T {
    let mut t = T::default();
    let n = std::mem::size_of::<T>();
    assert!(data.len() >= n, "reply too short: {} < {n}", data.len());
    t.as_mut_slice().copy_from_slice(&data[..n]);
    t
}

type R<T> = Result<T, i32>;

impl Guest {
    /// Lets the device serve the queue; returns the used elements that appeared.
    fn run(&mut self) -> Vec<(u32, u32)> {
        self.server
            .process_queue(&self.mem, &mut self.queue, &self.irq, None);
        self.ring.take_used(&mut self.used_seen)
    }

    /// Sends a FUSE request with a reply buffer of `reply_cap` bytes (none if 0).
    fn call_cap(&mut self, opcode: u32, nodeid: u64, args: &[u8], reply_cap: u32) -> Reply {
        self.unique += 1;
        let hdr = InHeader {
            len: (HDR + args.len()) as u32,
            opcode,
            unique: self.unique,
            nodeid,
            uid: self.uid,
            gid: self.gid,
            pid: 1,
            padding: 0,
        };
        let req = cat(&[hdr.as_slice(), args]);
        self.mem.write_slice(&req, GuestAddress(REQ_ADDR)).unwrap();
        // Poison the reply area so stale bytes cannot pass for a reply.
        self.mem
            .write_slice(&[0xa5; 64], GuestAddress(REPLY_ADDR))
            .unwrap();
        if reply_cap == 0 {
            self.ring
                .add_chain(0, &[(REQ_ADDR, req.len() as u32, 0, 0)]);
        } else {
            self.ring.add_chain(
                0,
                &[
                    (REQ_ADDR, req.len() as u32, VRING_DESC_F_NEXT as u16, 1),
                    (REPLY_ADDR, reply_cap, VRING_DESC_F_WRITE as u16, 0),
                ],
            );
        }
        let used = self.run();
        assert_eq!(used.len(), 1, "one request, one used chain");
        assert_eq!(used[0].0, 0, "the used id is the chain's head");
        let used_len = used[0].1;
        if used_len == 0 {
            return Reply {
                used_len,
                error: 0,
                data: Vec::new(),
            };
        }
        let mut buf = vec![0u8; used_len as usize];
        self.mem
            .read_slice(&mut buf, GuestAddress(REPLY_ADDR))
            .unwrap();
        let out: OutHeader = parse(&buf);
        assert_eq!(out.unique, self.unique, "the reply answers this request");
        assert_eq!(out.len, used_len, "header length = used length");
        Reply {
            used_len,
            error: out.error,
            data: buf[std::mem::size_of::<OutHeader>()..].to_vec(),
        }
    }

    fn call(&mut self, opcode: Opcode, nodeid: u64, args: &[u8]) -> R<Vec<u8>> {
        let r = self.call_cap(opcode as u32, nodeid, args, REPLY_CAP);
        assert!(r.used_len >= 16, "{opcode:?} got no reply");
        if r.error != 0 {
            assert!(r.error < 0, "errors are negative errnos");
            assert!(r.data.is_empty());
            Err(-r.error)
        } else {
            Ok(r.data)
        }
    }

    fn init(&mut self) -> InitOut {
        self.init_with(0)
    }

    /// INIT offering `flags`; returns the server's reply.
    fn init_with(&mut self, flags: u32) -> InitOut {
        let a = InitIn {
            major: 7,
            minor: 31,
            max_readahead: 128 << 10,
            flags,
        };
        parse(&self.call(Opcode::Init, 0, a.as_slice()).unwrap())
    }

    fn init_flags(&mut self, flags: u32) -> u32 {
        self.init_with(flags).flags
    }

    fn lookup(&mut self, parent: u64, name: &str) -> R<EntryOut> {
        self.lookup_raw(parent, &cstr(name))
    }

    fn lookup_raw(&mut self, parent: u64, name: &[u8]) -> R<EntryOut> {
        self.call(Opcode::Lookup, parent, name).map(|d| parse(&d))
    }

    fn getattr(&mut self, node: u64) -> R<Attr> {
        self.call(Opcode::Getattr, node, GetattrIn::default().as_slice())
            .map(|d| parse::<AttrOut>(&d).attr)
    }

    fn setattr(&mut self, node: u64, s: SetattrIn) -> R<Attr> {
        self.call(Opcode::Setattr, node, s.as_slice())
            .map(|d| parse::<AttrOut>(&d).attr)
    }

    fn open(&mut self, node: u64, flags: i32) -> R<u64> {
        let a = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        self.call(Opcode::Open, node, a.as_slice())
            .map(|d| parse::<OpenOut>(&d).fh)
    }

    fn release(&mut self, node: u64, fh: u64) {
        let a = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(Opcode::Release, node, a.as_slice()).unwrap();
    }

    fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> R<Vec<u8>> {
        let a = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.call(Opcode::Read, node, a.as_slice())
    }

    fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> R<u32> {
        let a = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            ..Default::default()
        };
        self.call(Opcode::Write, node, &cat(&[a.as_slice(), data]))
            .map(|d| parse::<WriteOut>(&d).size)
    }

    fn create(&mut self, parent: u64, name: &str, flags: i32, mode: u32) -> R<(EntryOut, u64)> {
        let a = CreateIn {
            flags: flags as u32,
            mode: libc::S_IFREG | mode,
            umask: 0,
            fuse_flags: 0,
        };
        self.call(Opcode::Create, parent, &cat(&[a.as_slice(), &cstr(name)]))
            .map(|d| {
                let e: EntryOut = parse(&d);
                let o: OpenOut = parse(&d[std::mem::size_of::<EntryOut>()..]);
                (e, o.fh)
            })
    }

    fn mkdir(&mut self, parent: u64, name: &str, mode: u32) -> R<EntryOut> {
        let a = MkdirIn { mode, umask: 0 };
        self.call(Opcode::Mkdir, parent, &cat(&[a.as_slice(), &cstr(name)]))
            .map(|d| parse(&d))
    }

    fn mknod(&mut self, parent: u64, name: &str, mode: u32, rdev: u32) -> R<EntryOut> {
        let a = MknodIn {
            mode,
            rdev,
            umask: 0,
            padding: 0,
        };
        self.call(Opcode::Mknod, parent, &cat(&[a.as_slice(), &cstr(name)]))
            .map(|d| parse(&d))
    }

    fn symlink(&mut self, parent: u64, name: &str, target: &str) -> R<EntryOut> {
        self.call(Opcode::Symlink, parent, &cat(&[&cstr(name), &cstr(target)]))
            .map(|d| parse(&d))
    }

    fn readlink(&mut self, node: u64) -> R<Vec<u8>> {
        self.call(Opcode::Readlink, node, &[])
    }

    fn link(&mut self, node: u64, newparent: u64, name: &str) -> R<EntryOut> {
        let a = LinkIn { oldnodeid: node };
        self.call(Opcode::Link, newparent, &cat(&[a.as_slice(), &cstr(name)]))
            .map(|d| parse(&d))
    }

    fn rename(&mut self, olddir: u64, old: &str, newdir: u64, new: &str) -> R<()> {
        let a = RenameIn { newdir };
        self.call(
            Opcode::Rename,
            olddir,
            &cat(&[a.as_slice(), &cstr(old), &cstr(new)]),
        )
        .map(|_| ())
    }

    fn unlink(&mut self, parent: u64, name: &str) -> R<()> {
        self.call(Opcode::Unlink, parent, &cstr(name)).map(|_| ())
    }

    fn rmdir(&mut self, parent: u64, name: &str) -> R<()> {
        self.call(Opcode::Rmdir, parent, &cstr(name)).map(|_| ())
    }

    fn opendir(&mut self, node: u64) -> R<u64> {
        let a = OpenIn {
            flags: libc::O_RDONLY as u32,
            fuse_flags: 0,
        };
        self.call(Opcode::Opendir, node, a.as_slice())
            .map(|d| parse::<OpenOut>(&d).fh)
    }

    /// Every entry of a directory (READDIR until it comes back empty), without . and ..
    fn readdir_all(&mut self, node: u64) -> R<Vec<(String, u32)>> {
        let fh = self.opendir(node)?;
        let mut names = Vec::new();
        let mut offset = 0;
        loop {
            let a = ReadIn {
                fh,
                offset,
                size: 64 << 10,
                ..Default::default()
            };
            let data = self.call(Opcode::Readdir, node, a.as_slice())?;
            if data.is_empty() {
                break;
            }
            let mut rest = &data[..];
            while !rest.is_empty() {
                let d: Dirent = parse(rest);
                let n = std::mem::size_of::<Dirent>();
                let name = &rest[n..n + d.namelen as usize];
                names.push((String::from_utf8(name.to_vec()).unwrap(), d.type_));
                offset = d.off;
                let rec = (n + d.namelen as usize + 7) & !7;
                rest = &rest[rec.min(rest.len())..];
            }
        }
        let a = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.call(Opcode::Releasedir, node, a.as_slice()).unwrap();
        Ok(names)
    }

    fn setxattr(&mut self, node: u64, name: &str, value: &[u8]) -> R<()> {
        let a = SetxattrIn {
            size: value.len() as u32,
            flags: 0,
        };
        self.call(
            Opcode::Setxattr,
            node,
            &cat(&[a.as_slice(), &cstr(name), value]),
        )
        .map(|_| ())
    }

    fn getxattr(&mut self, node: u64, name: &str, size: u32) -> R<Vec<u8>> {
        let a = GetxattrIn { size, padding: 0 };
        self.call(Opcode::Getxattr, node, &cat(&[a.as_slice(), &cstr(name)]))
    }

    fn access(&mut self, node: u64, mask: i32) -> R<()> {
        let a = AccessIn {
            mask: mask as u32,
            padding: 0,
        };
        self.call(Opcode::Access, node, a.as_slice()).map(|_| ())
    }

    fn forget(&mut self, node: u64, nlookup: u64) {
        let a = ForgetIn { nlookup };
        let r = self.call_cap(Opcode::Forget as u32, node, a.as_slice(), 0);
        assert_eq!(r.used_len, 0, "FORGET has no reply");
    }

    fn outside(&self) -> &Path {
        self.share.parent().unwrap()
    }
}

fn mode_of(a: &Attr) -> u32 {
    a.mode & libc::S_IFMT
}

/// The tree under `dir` (not following symlinks): path, mode, uid, size, mtime, contents.
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let mut entries: Vec<_> = fs::read_dir(&d).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let m = fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                format!("{:?}", fs::read(&p).unwrap())
            } else if m.file_type().is_symlink() {
                format!("-> {:?}", fs::read_link(&p).unwrap())
            } else {
                String::new()
            };
            out.push(format!(
                "{} {:o} {}:{} {} {}.{} {} xattrs={:?}",
                p.display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                content,
                xattrs(&p)
            ));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

fn xattrs(p: &Path) -> Vec<String> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: llistxattr writes at most buf.len() bytes into buf, which outlives the call.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    buf[..n as usize]
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The device and its configuration.

#[test]
fn new_checks_the_shared_dir() {
    let tmp = TempDir::new("new");
    let missing = tmp.0.join("missing");
    let e = Fs::new(FsConfig::new("t", &missing)).err().unwrap();
    assert!(matches!(e, FsError::SharedDir { .. }), "{e}");
    assert!(e.to_string().contains(missing.to_str().unwrap()), "{e}");

    let file = tmp.0.join("file");
    fs::write(&file, b"x").unwrap();
    let e = Fs::new(FsConfig::new("t", &file)).err().unwrap();
    assert!(matches!(e, FsError::NotADirectory(_)), "{e}");
    assert!(e.to_string().contains("not a directory"), "{e}");

    // Configs that did not come through parse_cli are validated too.
    let e = Fs::new(FsConfig::new("x".repeat(37), &tmp.0))
        .err()
        .unwrap();
    assert!(e.to_string().contains("36 bytes"), "{e}");
    let e = Fs::new(FsConfig::new("", &tmp.0)).err().unwrap();
    assert!(e.to_string().contains("empty"), "{e}");

    // A symlink to a directory is resolved once, on the host's terms.
    let link = tmp.0.join("link");
    symlink(&tmp.0, &link).unwrap();
    let dev = Fs::new(FsConfig::new("t", &link)).unwrap();
    assert_eq!(dev.config().shared_dir, fs::canonicalize(&tmp.0).unwrap());
}

#[test]
fn new_raises_the_fd_limit() {
    let tmp = TempDir::new("rlimit");
    let _dev = Fs::new(FsConfig::new("t", &tmp.0)).unwrap();
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct passed, which outlives the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert_eq!(lim.rlim_cur, lim.rlim_max);
}

#[test]
fn virtio_identity_and_config_space() {
    let tmp = TempDir::new("cfg");
    let dev = Fs::new(FsConfig::new("myshare", &tmp.0)).unwrap();
    assert_eq!(dev.device_type(), 26);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_ne!(dev.avail_features() & (1 << 32), 0, "VIRTIO_F_VERSION_1");
    let mut cfg = [0xffu8; CONFIG_SPACE_SIZE];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[..7], b"myshare");
    assert!(cfg[7..36].iter().all(|b| *b == 0), "the tag is NUL-padded");
    assert_eq!(u32::from_le_bytes(cfg[36..40].try_into().unwrap()), 1);
    let mut four = [0u8; 4];
    dev.read_config(36, &mut four);
    assert_eq!(u32::from_le_bytes(four), 1);
    let mut out = [0xaau8; 4];
    dev.read_config(38, &mut out);
    assert_eq!(out, [0xaa; 4], "out-of-range reads leave the buffer alone");
    dev.read_config(u64::MAX, &mut out);
    assert_eq!(out, [0xaa; 4]);
    // A 36-byte tag fills the field with no terminator.
    let dev = Fs::new(FsConfig::new("y".repeat(36), &tmp.0)).unwrap();
    let mut tag = [0u8; 36];
    dev.read_config(0, &mut tag);
    assert_eq!(tag, [b'y'; 36]);
}

// ---------------------------------------------------------------------------------------------
// Serving requests as the Linux client sends them.

#[test]
fn fuse_session_against_a_temp_dir() {
    let mut g = share("session");
    fs::write(g.share.join("hello.txt"), b"hello from the host").unwrap();
    fs::create_dir(g.share.join("sub")).unwrap();

    let init = g.init();
    assert_eq!(init.major, 7);
    assert_eq!(init.max_write, 4096, "no MAX_PAGES offered, none taken");
    // As the Linux client offers them: 1 MiB requests.
    let big = g.init_with(MAX_PAGES | BIG_WRITES);
    assert_ne!(big.flags & MAX_PAGES, 0);
    assert_eq!(big.max_write, 1 << 20);
    assert_eq!(big.max_pages, 256);

    // LOOKUP + GETATTR + OPEN + READ of a host file.
    let e = g.lookup(ROOT, "hello.txt").unwrap();
    assert_ne!(e.nodeid, 0);
    assert_eq!(mode_of(&e.attr), libc::S_IFREG);
    assert_eq!(e.attr.size, 19);
    let host = fs::metadata(g.share.join("hello.txt")).unwrap();
    assert_eq!(e.attr.ino, host.ino());
    let a = g.getattr(e.nodeid).unwrap();
    assert_eq!(a.mtime as i64, host.mtime());
    let fh = g.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(
        g.read(e.nodeid, fh, 0, 4096).unwrap(),
        b"hello from the host"
    );
    assert_eq!(g.read(e.nodeid, fh, 15, 4).unwrap(), b"host");
    assert_eq!(
        g.read(e.nodeid, fh, 100, 4).unwrap(),
        b"",
        "reads past EOF are empty"
    );
    g.release(e.nodeid, fh);

    // CREATE + WRITE, read back on the host byte-exact, as the guest's uid.
    fs::set_permissions(&g.share, fs::Permissions::from_mode(0o777)).unwrap();
    g.uid = 1234;
    g.gid = 4321;
    let (ne, fh) = g.create(ROOT, "new.bin", libc::O_RDWR, 0o640).unwrap();
    g.uid = 0;
    g.gid = 0;
    let data: Vec<u8> = (0..2_500_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    let mut off = 0;
    for chunk in data.chunks(1 << 20) {
        assert_eq!(
            g.write(ne.nodeid, fh, off, chunk).unwrap(),
            chunk.len() as u32
        );
        off += chunk.len() as u64;
    }
    assert_eq!(g.read(ne.nodeid, fh, 1000, 10).unwrap(), &data[1000..1010]);
    g.release(ne.nodeid, fh);
    let host = fs::metadata(g.share.join("new.bin")).unwrap();
    assert_eq!(fs::read(g.share.join("new.bin")).unwrap(), data);
    assert_eq!((host.uid(), host.gid()), (1234, 4321), "uid/gid map 1:1");
    assert_eq!(host.mode() & 0o7777, 0o640);

    // MKDIR, SYMLINK, READLINK, LINK, RENAME, SETATTR, READDIR, UNLINK, RMDIR.
    let d = g.mkdir(ROOT, "dir", 0o750).unwrap();
    assert_eq!(mode_of(&d.attr), libc::S_IFDIR);
    assert!(g.share.join("dir").is_dir());
    let s = g.symlink(d.nodeid, "ln", "../hello.txt").unwrap();
    assert_eq!(mode_of(&s.attr), libc::S_IFLNK);
    assert_eq!(g.readlink(s.nodeid).unwrap(), b"../hello.txt");
    assert_eq!(
        fs::read_link(g.share.join("dir/ln")).unwrap(),
        PathBuf::from("../hello.txt")
    );
    let l = g.link(ne.nodeid, d.nodeid, "hard").unwrap();
    assert_eq!(l.attr.nlink, 2);
    assert_eq!(fs::read(g.share.join("dir/hard")).unwrap(), data);
    g.rename(d.nodeid, "hard", ROOT, "moved").unwrap();
    assert!(g.share.join("moved").exists() && !g.share.join("dir/hard").exists());
    let a = g
        .setattr(
            ne.nodeid,
            SetattrIn {
                valid: 1 | 8 | 32, // MODE | SIZE | MTIME
                mode: 0o600,
                size: 5,
                mtime: 1_000_000_000,
                mtimensec: 123,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(a.size, 5);
    assert_eq!(a.mode & 0o7777, 0o600);
    let host = fs::metadata(g.share.join("new.bin")).unwrap();
    assert_eq!(
        (host.len(), host.mtime(), host.mtime_nsec()),
        (5, 1_000_000_000, 123)
    );
    let mut names = g.readdir_all(ROOT).unwrap();
    names.sort();
    let names: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["dir", "hello.txt", "moved", "new.bin", "sub"]);
    g.unlink(ROOT, "moved").unwrap();
    g.unlink(d.nodeid, "ln").unwrap();
    g.rmdir(ROOT, "dir").unwrap();
    assert!(!g.share.join("dir").exists() && !g.share.join("moved").exists());
    assert_eq!(g.lookup(ROOT, "dir").unwrap_err(), libc::ENOENT);

    // FIFOs and sockets can be created (the guest kernel serves them itself) but are never
    // opened on the host.
    let f = g.mknod(ROOT, "fifo", libc::S_IFIFO | 0o644, 0).unwrap();
    assert_eq!(mode_of(&f.attr), libc::S_IFIFO);
    assert!(g.open(f.nodeid, libc::O_RDONLY).is_err());
    let so = g.mknod(ROOT, "sock", libc::S_IFSOCK | 0o644, 0).unwrap();
    assert_eq!(mode_of(&so.attr), libc::S_IFSOCK);
    // Device nodes are refused.
    assert_eq!(
        g.mknod(ROOT, "null", libc::S_IFCHR | 0o666, (1 << 8) | 3)
            .unwrap_err(),
        libc::EPERM
    );
    assert_eq!(
        g.mknod(ROOT, "sda", libc::S_IFBLK | 0o666, 8 << 8)
            .unwrap_err(),
        libc::EPERM
    );
    assert!(!g.share.join("null").exists() && !g.share.join("sda").exists());

    // FORGET (no reply) then the inode is gone for the server.
    g.forget(e.nodeid, 1);
    assert_eq!(g.getattr(e.nodeid).unwrap_err(), libc::EBADF);
    // Every reply interrupted the guest.
    assert!(g.irq.count() > 20);
}

#[test]
fn xattrs_when_enabled_and_enosys_otherwise() {
    let mut g = share_with("xattr", |c| c.xattr = true);
    fs::write(g.share.join("f"), b"x").unwrap();
    g.init();
    let e = g.lookup(ROOT, "f").unwrap();
    g.setxattr(e.nodeid, "user.hull", b"value-1").unwrap();
    assert_eq!(g.getxattr(e.nodeid, "user.hull", 64).unwrap(), b"value-1");
    assert!(xattrs(&g.share.join("f")).contains(&"user.hull".to_string()));
    // A size query, and an absurd size (capped, not allocated).
    let n: GetxattrOut = parse(&g.getxattr(e.nodeid, "user.hull", 0).unwrap());
    assert_eq!(n.size, 7);
    assert_eq!(
        g.getxattr(e.nodeid, "user.hull", u32::MAX).unwrap(),
        b"value-1"
    );
    let a = GetxattrIn {
        size: u32::MAX,
        padding: 0,
    };
    assert!(g.call(Opcode::Listxattr, e.nodeid, a.as_slice()).is_ok());

    let mut g = share("noxattr");
    fs::write(g.share.join("f"), b"x").unwrap();
    g.init();
    let e = g.lookup(ROOT, "f").unwrap();
    assert_eq!(
        g.setxattr(e.nodeid, "user.hull", b"v").unwrap_err(),
        libc::ENOSYS
    );
}

#[test]
fn writeback_only_when_configured() {
    let mut g = share_with("wb", |c| c.writeback = true);
    assert_ne!(g.init_flags(WRITEBACK_CACHE) & WRITEBACK_CACHE, 0);
    let mut g2 = share("nowb");
    assert_eq!(g2.init_flags(WRITEBACK_CACHE) & WRITEBACK_CACHE, 0);
}

#[test]
fn a_directory_of_many_entries_reads_back_whole() {
    let mut g = share("many");
    for i in 0..3000 {
        fs::write(g.share.join(format!("f{i:05}")), b"").unwrap();
    }
    g.init();
    let names = g.readdir_all(ROOT).unwrap();
    assert_eq!(names.len(), 3000);
    let mut sorted: Vec<_> = names.into_iter().map(|(n, _)| n).collect();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 3000, "no entry twice");
    assert_eq!(sorted[2999], "f02999");
}

// ---------------------------------------------------------------------------------------------
// Confinement.

#[test]
fn dotdot_at_the_root_stays_at_the_root() {
    let mut g = share("dotdot");
    fs::create_dir(g.share.join("sub")).unwrap();
    g.init();
    let root = g.lookup(ROOT, ".").unwrap();
    let share_ino = fs::metadata(&g.share).unwrap().ino();
    assert_eq!(root.attr.ino, share_ino);
    let up = g.lookup(ROOT, "..").unwrap();
    assert_eq!(up.attr.ino, share_ino, "`..` of the root is the root");
    let up2 = g.lookup(up.nodeid, "..").unwrap();
    assert_eq!(up2.attr.ino, share_ino);
    // `..` from a subdirectory reaches the root and stops there.
    let sub = g.lookup(ROOT, "sub").unwrap();
    let back = g.lookup(sub.nodeid, "..").unwrap();
    assert_eq!(back.attr.ino, share_ino);
    let again = g.lookup(back.nodeid, "..").unwrap();
    assert_eq!(again.attr.ino, share_ino);
    // Nothing above the root is reachable by name.
    assert_eq!(g.lookup(up.nodeid, "secret").unwrap_err(), libc::ENOENT);
    assert_eq!(g.lookup(ROOT, "../secret").unwrap_err(), libc::EINVAL);
    assert_eq!(
        g.lookup(sub.nodeid, "../../secret").unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(g.lookup(ROOT, "/etc").unwrap_err(), libc::EINVAL);
    assert_eq!(g.lookup(ROOT, "sub/").unwrap_err(), libc::EINVAL);
    // A name ends at its first NUL: "sub\0/../.." is "sub".
    let e = g.lookup_raw(ROOT, b"sub\0/../..\0").unwrap();
    assert_eq!(e.attr.ino, fs::metadata(g.share.join("sub")).unwrap().ino());
    // Creating by such names fails the same way.
    assert_eq!(g.mkdir(ROOT, "../evil", 0o755).unwrap_err(), libc::EINVAL);
    assert_eq!(
        g.create(ROOT, "../evil", libc::O_RDWR, 0o644).unwrap_err(),
        libc::EINVAL
    );
    assert_eq!(g.mkdir(ROOT, "..", 0o755).unwrap_err(), libc::EINVAL);
    assert!(!g.outside().join("evil").exists());
}

#[test]
fn symlinks_are_never_followed_on_the_host() {
    let mut g = share("symlinks");
    let outside = g.outside().to_path_buf();
    let secret = outside.join("secret");
    fs::create_dir(outside.join("odir")).unwrap();
    fs::write(outside.join("odir/inner"), b"inner secret").unwrap();
    symlink(&secret, g.share.join("abs")).unwrap();
    symlink("../secret", g.share.join("rel")).unwrap();
    symlink(outside.join("odir"), g.share.join("dirlink")).unwrap();
    let before = snapshot(&outside);
    g.init();

    for name in ["abs", "rel"] {
        // LOOKUP returns the link itself; READLINK its text.
        let e = g.lookup(ROOT, name).unwrap();
        assert_eq!(mode_of(&e.attr), libc::S_IFLNK, "{name}");
        assert_eq!(
            e.attr.ino,
            fs::symlink_metadata(g.share.join(name)).unwrap().ino()
        );
        let text = g.readlink(e.nodeid).unwrap();
        assert_eq!(
            text,
            fs::read_link(g.share.join(name))
                .unwrap()
                .as_os_str()
                .as_bytes()
        );
        // No operation on the link's inode reaches the target.
        assert!(g.open(e.nodeid, libc::O_RDONLY).is_err(), "{name}: open");
        assert!(g.open(e.nodeid, libc::O_RDWR).is_err(), "{name}: open rw");
        let _ = g.setattr(
            e.nodeid,
            SetattrIn {
                valid: 1, // MODE
                mode: 0o777,
                ..Default::default()
            },
        );
        let _ = g.setattr(
            e.nodeid,
            SetattrIn {
                valid: 8, // SIZE
                size: 0,
                ..Default::default()
            },
        );
        let _ = g.setattr(
            e.nodeid,
            SetattrIn {
                valid: 2 | 4 | 32, // UID | GID | MTIME
                uid: 4242,
                gid: 4242,
                mtime: 12345,
                ..Default::default()
            },
        );
        let _ = g.setxattr(e.nodeid, "user.x", b"y");
        let _ = g.getxattr(e.nodeid, "user.x", 64);
        // O_CREAT on the link's name opens nothing through it.
        assert!(g.create(ROOT, name, libc::O_RDWR, 0o644).is_err(), "{name}");
        assert!(g
            .create(ROOT, name, libc::O_WRONLY | libc::O_TRUNC, 0o644)
            .is_err());
        assert!(g.mkdir(ROOT, name, 0o755).is_err());
        // A hard link to the link is a link to the link, not to the target.
        let l = g.link(e.nodeid, ROOT, &format!("{name}-hard")).unwrap();
        assert_eq!(mode_of(&l.attr), libc::S_IFLNK);
    }
    // A symlink to a directory outside cannot be walked through.
    let d = g.lookup(ROOT, "dirlink").unwrap();
    assert_eq!(mode_of(&d.attr), libc::S_IFLNK);
    assert!(g.lookup(d.nodeid, "inner").is_err());
    assert!(g.opendir(d.nodeid).is_err());
    assert!(g.create(d.nodeid, "planted", libc::O_RDWR, 0o644).is_err());
    assert!(g.mkdir(d.nodeid, "planted", 0o755).is_err());
    assert!(g.symlink(d.nodeid, "planted", "x").is_err());
    assert!(g.rename(ROOT, "abs-hard", d.nodeid, "planted").is_err());
    // The guest may create links pointing anywhere: they stay text in the share.
    let s = g.symlink(ROOT, "mine", "/etc/shadow").unwrap();
    assert!(g.open(s.nodeid, libc::O_RDONLY).is_err());

    assert_eq!(fs::read(&secret).unwrap(), b"host secret");
    let m = fs::metadata(&secret).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600);
    assert_eq!(m.uid(), 0);
    // Everything outside the share is exactly as it was (the share itself excluded).
    let after: Vec<String> = snapshot(&outside)
        .into_iter()
        .filter(|l| !l.starts_with(g.share.to_str().unwrap()))
        .collect();
    let before: Vec<String> = before
        .into_iter()
        .filter(|l| !l.starts_with(g.share.to_str().unwrap()))
        .collect();
    assert_eq!(after, before);
}

#[test]
fn inodes_come_only_from_lookups() {
    let mut g = share("forged");
    g.init();
    // The host inode number of a file outside the share, and other made-up node ids, are
    // not inodes of this server.
    let outside_ino = fs::metadata(g.outside().join("secret")).unwrap().ino();
    for node in [outside_ino, 0, 2, 12345, u64::MAX, 1 << 56] {
        assert_eq!(g.getattr(node).unwrap_err(), libc::EBADF, "node {node:#x}");
        assert!(g.open(node, libc::O_RDONLY).is_err());
        assert!(g.lookup(node, "secret").is_err());
        assert!(g.readlink(node).is_err());
        // LINK from a forged inode, RENAME into a forged directory.
        assert!(g.link(node, ROOT, "stolen").is_err());
    }
    fs::write(g.share.join("f"), b"x").unwrap();
    for node in [outside_ino, 0, 12345, u64::MAX] {
        assert!(g.rename(ROOT, "f", node, "f").is_err());
    }
    assert!(!g.share.join("stolen").exists());
    assert!(g.share.join("f").exists());
}

#[test]
fn hard_links_and_renames_stay_inside() {
    let mut g = share("links");
    fs::write(g.share.join("f"), b"data").unwrap();
    fs::create_dir(g.share.join("sub")).unwrap();
    g.init();
    let f = g.lookup(ROOT, "f").unwrap();
    let sub = g.lookup(ROOT, "sub").unwrap();
    for bad in ["../escape", "/tmp/escape", "..", ".", "a/b", ""] {
        assert!(g.link(f.nodeid, ROOT, bad).is_err(), "link {bad:?}");
        assert!(g.rename(ROOT, "f", ROOT, bad).is_err(), "rename to {bad:?}");
        assert!(
            g.rename(ROOT, bad, ROOT, "g").is_err(),
            "rename from {bad:?}"
        );
    }
    // RENAME2 flags other than the three known ones are dropped, known ones work.
    let a = Rename2In {
        newdir: sub.nodeid,
        flags: libc::RENAME_NOREPLACE,
        padding: 0,
    };
    g.call(
        Opcode::Rename2,
        ROOT,
        &cat(&[a.as_slice(), &cstr("f"), &cstr("f2")]),
    )
    .unwrap();
    assert!(g.share.join("sub/f2").exists());
    // Moving the subdirectory into itself fails; the root cannot be renamed away.
    assert!(g.rename(ROOT, "sub", sub.nodeid, "loop").is_err());
    assert!(g.rename(ROOT, ".", ROOT, "x").is_err());
    assert!(!g.outside().join("escape").exists());
    let mut names: Vec<_> = fs::read_dir(g.outside())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, [OsStr::new("secret"), OsStr::new("share")]);
}

#[test]
fn read_only_share_refuses_every_write() {
    let mut g = share_with("ro", |c| {
        c.read_only = true;
        c.xattr = true;
    });
    fs::write(g.share.join("f"), b"original").unwrap();
    fs::create_dir(g.share.join("d")).unwrap();
    fs::write(g.share.join("d/inner"), b"x").unwrap();
    symlink("f", g.share.join("ln")).unwrap();
    let before = snapshot(&g.share);
    g.init();
    let f = g.lookup(ROOT, "f").unwrap();
    let d = g.lookup(ROOT, "d").unwrap();
    // Reading works.
    let fh = g.open(f.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(g.read(f.nodeid, fh, 0, 100).unwrap(), b"original");
    assert_eq!(g.readdir_all(ROOT).unwrap().len(), 3);
    let ln = g.lookup(ROOT, "ln").unwrap().nodeid;
    assert_eq!(g.readlink(ln).unwrap(), b"f");
    g.access(f.nodeid, libc::R_OK).unwrap();

    let erofs = Err(libc::EROFS);
    // Data.
    assert_eq!(g.write(f.nodeid, fh, 0, b"evil").map(|_| ()), erofs);
    let fa = FallocateIn {
        fh,
        offset: 0,
        length: 1 << 20,
        mode: 0,
        padding: 0,
    };
    assert_eq!(
        g.call(Opcode::Fallocate, f.nodeid, fa.as_slice())
            .map(|_| ()),
        erofs
    );
    for flags in [
        libc::O_WRONLY,
        libc::O_RDWR,
        libc::O_RDONLY | libc::O_TRUNC,
        libc::O_WRONLY | libc::O_APPEND,
    ] {
        assert_eq!(
            g.open(f.nodeid, flags).map(|_| ()),
            erofs,
            "flags {flags:#o}"
        );
    }
    assert_eq!(
        g.create(ROOT, "new", libc::O_RDWR, 0o644).map(|_| ()),
        erofs
    );
    assert_eq!(
        g.create(ROOT, "f", libc::O_RDONLY, 0o644).map(|_| ()),
        erofs
    );
    // Metadata.
    for valid in [1, 2, 4, 8, 16, 32, 128, 256] {
        let s = SetattrIn {
            valid,
            mode: 0o777,
            uid: 99,
            gid: 99,
            size: 0,
            atime: 1,
            mtime: 1,
            ..Default::default()
        };
        assert_eq!(
            g.setattr(f.nodeid, s).map(|_| ()),
            erofs,
            "valid {valid:#x}"
        );
    }
    assert_eq!(g.setxattr(f.nodeid, "user.x", b"y"), erofs);
    assert_eq!(
        g.call(Opcode::Removexattr, f.nodeid, &cstr("user.x"))
            .map(|_| ()),
        erofs
    );
    assert_eq!(g.access(f.nodeid, libc::W_OK), erofs);
    // Names.
    assert_eq!(g.mkdir(ROOT, "nd", 0o755).map(|_| ()), erofs);
    assert_eq!(
        g.mknod(ROOT, "fifo", libc::S_IFIFO | 0o644, 0).map(|_| ()),
        erofs
    );
    assert_eq!(g.symlink(ROOT, "sl", "f").map(|_| ()), erofs);
    assert_eq!(g.link(f.nodeid, d.nodeid, "hl").map(|_| ()), erofs);
    assert_eq!(g.unlink(ROOT, "f"), erofs);
    assert_eq!(g.unlink(d.nodeid, "inner"), erofs);
    assert_eq!(g.rmdir(ROOT, "d"), erofs);
    assert_eq!(g.rename(ROOT, "f", d.nodeid, "f"), erofs);
    let a = Rename2In {
        newdir: ROOT,
        flags: libc::RENAME_EXCHANGE,
        padding: 0,
    };
    assert_eq!(
        g.call(
            Opcode::Rename2,
            ROOT,
            &cat(&[a.as_slice(), &cstr("f"), &cstr("d")])
        )
        .map(|_| ()),
        erofs
    );
    g.release(f.nodeid, fh);
    // Nor can it have a writeback cache.
    assert_eq!(g.init_flags(WRITEBACK_CACHE) & WRITEBACK_CACHE, 0);
    assert_eq!(snapshot(&g.share), before, "nothing changed on the host");
}

#[test]
fn file_flags_in_read_and_write_never_close_the_handle() {
    // fcntl(F_SETFL, O_DIRECT) fails on a directory (and on files of file systems without
    // direct I/O): fuse-backend-rs 0.14 then closed the handle's fd (see guard.rs). The guard
    // never lets the guest's flags reach that fcntl. (Without the guard this test aborts:
    // "IO Safety violation: owned file descriptor already closed".)
    let (mut g, e, fh) = share_with_open_file("flags");
    let dfh = g.opendir(ROOT).unwrap();
    for flags in [
        libc::O_DIRECT as u32,
        (libc::O_DIRECT | libc::O_APPEND | libc::O_NOATIME) as u32,
        u32::MAX,
    ] {
        let r = ReadIn {
            fh,
            size: 100,
            flags,
            ..Default::default()
        };
        let d = g.call(Opcode::Read, e.nodeid, r.as_slice()).unwrap();
        assert_eq!(d, fs::read(g.share.join("f")).unwrap(), "flags {flags:#x}");
        let w = WriteIn {
            fh,
            offset: 0,
            size: 2,
            flags,
            ..Default::default()
        };
        let d = g
            .call(Opcode::Write, e.nodeid, &cat(&[w.as_slice(), b"ab"]))
            .unwrap();
        assert_eq!(parse::<WriteOut>(&d).size, 2);
        // The directory handle is not a file handle: EBADF, and it keeps working.
        let r = ReadIn {
            fh: dfh,
            size: 100,
            flags,
            ..Default::default()
        };
        assert_eq!(
            g.call(Opcode::Read, ROOT, r.as_slice()).unwrap_err(),
            libc::EBADF
        );
    }
    assert_eq!(g.read(e.nodeid, fh, 0, 100).unwrap(), b"ab23456789");
    assert_eq!(fs::read(g.share.join("f")).unwrap(), b"ab23456789");
    let r = ReadIn {
        fh: dfh,
        size: 4096,
        ..Default::default()
    };
    assert!(!g
        .call(Opcode::Readdir, ROOT, r.as_slice())
        .unwrap()
        .is_empty());
    // Released handles are gone.
    g.release(e.nodeid, fh);
    assert_eq!(g.read(e.nodeid, fh, 0, 10).unwrap_err(), libc::EBADF);
}

#[test]
fn fd_exhaustion_is_an_error_reply() {
    // Lowering RLIMIT_NOFILE would starve the other tests of this process: run in a child.
    const CHILD: &str = "HULL_FS_EMFILE_CHILD";
    if std::env::var_os(CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "devices::virtio::fs::tests::fd_exhaustion_is_an_error_reply",
                "--test-threads=1",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "child failed:\n{text}");
        assert!(text.contains("1 passed"), "the child ran the test:\n{text}");
        return;
    }
    let mut g = share("emfile");
    for i in 0..200 {
        fs::write(g.share.join(format!("f{i}")), b"x").unwrap();
    }
    g.init();
    let open_now = fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only the struct passed, which outlives the call.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    lim.rlim_cur = open_now + 50;
    // SAFETY: setrlimit reads only the struct passed, which outlives the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let mut nodes = Vec::new();
    let mut err = None;
    for i in 0..200 {
        match g.lookup(ROOT, &format!("f{i}")) {
            Ok(e) => nodes.push(e.nodeid),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    assert_eq!(err, Some(libc::EMFILE), "after {} inodes", nodes.len());
    assert!(nodes.len() >= 30);
    // Forgetting inodes frees their fds: the share works again.
    for n in nodes.drain(..) {
        g.forget(n, 1);
    }
    let e = g.lookup(ROOT, "f199").unwrap();
    let fh = g.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(g.read(e.nodeid, fh, 0, 10).unwrap(), b"x");
}

// ---------------------------------------------------------------------------------------------
// Bad input.

#[test]
fn malformed_requests_get_error_replies() {
    let (mut g, f, fh) = share_with_open_file("badreq");

    // Unknown opcodes.
    for op in [0u32, 47, 9999, u32::MAX] {
        let r = g.call_cap(op, ROOT, &[0; 64], 4096);
        assert_eq!(r.error, -libc::ENOSYS, "opcode {op}");
    }
    // DAX mapping requests: this device has no DAX window.
    for op in [48u32, 49] {
        let r = g.call_cap(op, f.nodeid, &[0; 64], 4096);
        assert_eq!(r.error, -libc::EINVAL, "opcode {op}");
    }
    // Names without a NUL, empty names, empty bodies.
    assert_eq!(g.lookup_raw(ROOT, b"f").unwrap_err(), libc::EINVAL);
    assert!(g.lookup_raw(ROOT, b"").is_err());
    assert!(g.call(Opcode::Mkdir, ROOT, &[]).is_err());
    assert!(g
        .call(Opcode::Mkdir, ROOT, MkdirIn::default().as_slice())
        .is_err());
    assert!(g.call(Opcode::Symlink, ROOT, &cstr("only-one")).is_err());
    assert!(g
        .call(Opcode::Rename, ROOT, RenameIn { newdir: 1 }.as_slice())
        .is_err());
    assert!(g.call(Opcode::Setxattr, f.nodeid, &[1, 2, 3]).is_err());
    // SETXATTR whose size disagrees with the value.
    let a = SetxattrIn {
        size: 1000,
        flags: 0,
    };
    assert!(g
        .call(
            Opcode::Setxattr,
            f.nodeid,
            &cat(&[a.as_slice(), &cstr("user.a"), b"v"])
        )
        .is_err());
    // Header lengths: too large, smaller than the header, larger than what was sent.
    for len in [u32::MAX, (1 << 20) + 0x1001, 0, 8, 39, 4000] {
        g.unique += 1;
        let hdr = InHeader {
            len,
            opcode: Opcode::Lookup as u32,
            unique: g.unique,
            nodeid: ROOT,
            ..Default::default()
        };
        let req = cat(&[hdr.as_slice(), &cstr("f")]);
        g.mem.write_slice(&req, GuestAddress(REQ_ADDR)).unwrap();
        g.ring.add_chain(
            0,
            &[
                (REQ_ADDR, req.len() as u32, VRING_DESC_F_NEXT as u16, 1),
                (REPLY_ADDR, 4096, VRING_DESC_F_WRITE as u16, 0),
            ],
        );
        let used = g.run();
        assert_eq!(used.len(), 1);
        assert_eq!(used[0].1, 16, "len {len}: an error reply");
        let out: OutHeader = g.mem.read_obj(GuestAddress(REPLY_ADDR)).unwrap();
        assert!(out.error < 0, "len {len}");
        assert_eq!(out.unique, g.unique);
    }
    // Huge sizes.
    assert!(g.read(f.nodeid, fh, 0, u32::MAX).is_err());
    assert_eq!(
        g.read(f.nodeid, fh, u64::MAX, 10)
            .map(|d| d.len())
            .unwrap_or(0),
        0
    );
    let w = WriteIn {
        fh,
        offset: 0,
        size: u32::MAX,
        ..Default::default()
    };
    // A WRITE claiming more than it carries writes what it carries, at most.
    match g.call(Opcode::Write, f.nodeid, &cat(&[w.as_slice(), b"abc"])) {
        Ok(d) => assert!(parse::<WriteOut>(&d).size <= 3),
        Err(e) => assert!(e > 0),
    }
    assert_eq!(fs::metadata(g.share.join("f")).unwrap().len(), 10);
    let w = WriteIn {
        fh,
        offset: u64::MAX - 1,
        size: 3,
        ..Default::default()
    };
    assert!(g
        .call(Opcode::Write, f.nodeid, &cat(&[w.as_slice(), b"abc"]))
        .is_err());
    let r = ReadIn {
        fh,
        size: u32::MAX,
        ..Default::default()
    };
    assert!(g.call(Opcode::Readdir, ROOT, r.as_slice()).is_err());
    // Handles and nodes that do not exist.
    assert!(g.read(f.nodeid, fh + 1000, 0, 10).is_err());
    assert!(g.read(f.nodeid, u64::MAX, 0, 10).is_err());
    assert!(
        g.read(ROOT, fh, 0, 10).is_err(),
        "a handle belongs to its inode"
    );
    // BATCH_FORGET with a count the body does not hold, or absurd: no reply, no crash.
    for count in [u32::MAX, 1 << 20, 3] {
        let b = BatchForgetIn { count, dummy: 0 };
        let one = ForgetOne {
            nodeid: f.nodeid,
            nlookup: 0,
        };
        let r = g.call_cap(
            Opcode::BatchForget as u32,
            0,
            &cat(&[b.as_slice(), one.as_slice()]),
            0,
        );
        assert_eq!(r.used_len, 0);
    }
    // INIT from the past and from the future.
    let old = InitIn {
        major: 6,
        minor: 0,
        max_readahead: 0,
        flags: 0,
    };
    assert_eq!(
        g.call(Opcode::Init, 0, old.as_slice()).unwrap_err(),
        libc::EPROTO
    );
    let future = InitIn { major: 8, ..old };
    let o: InitOut = parse(&g.call(Opcode::Init, 0, future.as_slice()).unwrap());
    assert_eq!(o.major, 7);
    // A reply buffer too small for the reply: an error reply if one fits, else nothing.
    let r = g.call_cap(Opcode::Lookup as u32, ROOT, &cstr("f"), 20);
    assert_eq!((r.used_len, r.error), (16, -libc::EINVAL));
    let r = g.call_cap(Opcode::Lookup as u32, ROOT, &cstr("f"), 8);
    assert_eq!(r.used_len, 0);
    // After all that, the session still works.
    assert_eq!(g.read(f.nodeid, fh, 0, 100).unwrap(), b"abc3456789");
    assert_eq!(g.lookup(ROOT, "f").unwrap().nodeid, f.nodeid);
}

#[test]
fn malformed_chains_are_returned_unserved() {
    let mut g = share("badchain");
    fs::write(g.share.join("f"), b"content").unwrap();
    g.init();
    let lookup = {
        let hdr = InHeader {
            len: (HDR + 2) as u32,
            opcode: Opcode::Lookup as u32,
            unique: 77,
            nodeid: ROOT,
            ..Default::default()
        };
        cat(&[hdr.as_slice(), &cstr("f")])
    };
    g.mem.write_slice(&lookup, GuestAddress(REQ_ADDR)).unwrap();
    let n = lookup.len() as u32;
    let next = VRING_DESC_F_NEXT as u16;
    let wr = VRING_DESC_F_WRITE as u16;
    let end = MEM_SIZE as u64;
    let cases: Vec<(&str, Vec<Desc>)> = vec![
        (
            "request outside memory",
            vec![(end + 0x1000, n, next, RAW + 1), (REPLY_ADDR, 4096, wr, 0)],
        ),
        (
            "request crossing the end",
            vec![(end - 8, n, next, RAW + 1), (REPLY_ADDR, 4096, wr, 0)],
        ),
        (
            "request at u64::MAX",
            vec![(u64::MAX - 4, n, next, RAW + 1), (REPLY_ADDR, 4096, wr, 0)],
        ),
        (
            "reply outside memory",
            vec![(REQ_ADDR, n, next, RAW + 1), (end, 4096, wr, 0)],
        ),
        (
            "reply crossing the end",
            vec![(REQ_ADDR, n, next, RAW + 1), (end - 4, 4096, wr, 0)],
        ),
        (
            "huge lengths",
            vec![
                (REQ_ADDR, u32::MAX, next, RAW + 1),
                (REPLY_ADDR, u32::MAX, wr, 0),
            ],
        ),
        (
            "zero lengths",
            vec![(REQ_ADDR, 0, next, RAW + 1), (REPLY_ADDR, 0, wr, 0)],
        ),
        (
            "loop",
            vec![
                (REQ_ADDR, n, next, RAW + 1),
                (REPLY_ADDR, 4096, wr | next, RAW),
            ],
        ),
        ("self loop", vec![(REQ_ADDR, n, next, RAW)]),
        (
            "next out of the table",
            vec![(REQ_ADDR, n, next, QSIZE + 5)],
        ),
        ("only writable", vec![(REPLY_ADDR, 4096, wr, 0)]),
        ("only readable", vec![(REQ_ADDR, n, 0, 0)]),
        (
            "writable before readable",
            vec![(REPLY_ADDR, 4096, wr | next, RAW + 1), (REQ_ADDR, n, 0, 0)],
        ),
        (
            "request split in 1-byte pieces",
            (0..n as u16)
                .map(|i| (REQ_ADDR + u64::from(i), 1, next, RAW + i + 1))
                .chain([(REPLY_ADDR, 4096, wr, 0)])
                .collect(),
        ),
        (
            "too many descriptors",
            (0..QSIZE - RAW)
                .map(|i| (REQ_ADDR, 1, next, RAW + i + 1))
                .collect(),
        ),
        (
            "indirect table outside memory",
            vec![(end, 64, VRING_DESC_F_INDIRECT as u16, 0)],
        ),
        (
            "indirect table of bad length",
            vec![(REPLY_ADDR, 13, VRING_DESC_F_INDIRECT as u16, 0)],
        ),
    ];
    for (what, descs) in cases {
        // The reply area is poisoned to see whether anything was written.
        g.mem
            .write_slice(&[0xa5; 32], GuestAddress(REPLY_ADDR))
            .unwrap();
        g.ring.add_chain(RAW, &descs);
        let used = g.run();
        assert_eq!(used.len(), 1, "{what}: the chain is returned");
        assert_eq!(used[0].0, u32::from(RAW), "{what}");
        let len = used[0].1;
        if what == "request split in 1-byte pieces" {
            // Scattered but valid: served.
            let out: OutHeader = g.mem.read_obj(GuestAddress(REPLY_ADDR)).unwrap();
            assert_eq!((out.error, out.unique), (0, 77), "{what}");
            assert_eq!(len as usize, 16 + std::mem::size_of::<EntryOut>());
        } else {
            assert!(
                len <= 4096,
                "{what}: used length {len} within the reply buffer"
            );
        }
    }
    // An indirect table that is well formed is served like a direct chain.
    let table = REPLY_ADDR + 0x10_0000;
    let descs = [
        SplitDescriptor::new(REQ_ADDR, n, next, 1),
        SplitDescriptor::new(REPLY_ADDR, 4096, wr, 0),
    ];
    for (i, d) in descs.iter().enumerate() {
        g.mem
            .write_obj(RawDescriptor::from(*d), GuestAddress(table + 16 * i as u64))
            .unwrap();
    }
    g.ring
        .add_chain(RAW, &[(table, 32, VRING_DESC_F_INDIRECT as u16, 0)]);
    let used = g.run();
    assert_eq!(used.len(), 1);
    let out: OutHeader = g.mem.read_obj(GuestAddress(REPLY_ADDR)).unwrap();
    assert_eq!((out.error, out.unique), (0, 77));
    // And the plain path still works.
    let e = g.lookup(ROOT, "f").unwrap();
    let fh = g.open(e.nodeid, libc::O_RDONLY).unwrap();
    assert_eq!(g.read(e.nodeid, fh, 0, 100).unwrap(), b"content");
}

// ---------------------------------------------------------------------------------------------
// The device on its threads, behind a real event loop.

use event_manager::{EventManager, SubscriberOps};
use vmm_sys_util::eventfd::EventFd;

/// An interrupt line the test can hold shut, to freeze the worker inside a request.
#[derive(Default)]
struct GateIrq {
    count: AtomicUsize,
    gate: Mutex<()>,
}

impl VirtioInterrupt for GateIrq {
    fn signal_used_queue(&self) -> std::io::Result<()> {
        let _g = self.gate.lock().unwrap();
        self.count.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn signal_config_change(&self) -> std::io::Result<()> {
        Ok(())
    }
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn workers_serve_the_queues_off_the_event_loop() {
    let tmp = TempDir::new("dev");
    fs::write(tmp.0.join("f"), b"abc").unwrap();
    let dev = Arc::new(Mutex::new(Fs::new(FsConfig::new("t", &tmp.0)).unwrap()));
    let mut em = EventManager::<Arc<Mutex<Fs>>>::new().unwrap();
    em.add_subscriber(dev.clone());

    let mem = test_mem();
    // Hiprio queue at 512 KiB, request queue at 0.
    let hq = TestQueue::create(&mem, GuestAddress(0x8_0000), QSIZE);
    let rq = TestQueue::create(&mem, GuestAddress(0), QSIZE);
    let queues: Vec<Queue> = vec![hq.queue(), rq.queue()];
    let evts: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
    let kick: Vec<EventFd> = evts.iter().map(|e| e.try_clone().unwrap()).collect();
    let irq = Arc::new(GateIrq::default());

    // Activation needs VIRTIO_F_VERSION_1 and two queues.
    {
        let mut d = dev.lock().unwrap();
        let e = d
            .activate(mem.clone(), irq.clone(), Vec::new(), Vec::new())
            .unwrap_err();
        assert!(matches!(
            e,
            ActivateError::QueueCount {
                expected: 2,
                got: 0
            }
        ));
        let e = d
            .activate(
                mem.clone(),
                irq.clone(),
                vec![hq.queue(), rq.queue()],
                evts.iter().map(|e| e.try_clone().unwrap()).collect(),
            )
            .unwrap_err();
        assert!(matches!(e, ActivateError::MissingFeature(_)));
        let f = d.avail_features();
        d.set_acked_features(f | (1 << 40));
        d.activate(mem.clone(), irq.clone(), queues, evts).unwrap();
        assert!(!d.is_activated(), "workers start on the event loop thread");
    }
    em.run_with_timeout(100).unwrap();
    assert!(dev.lock().unwrap().is_activated());

    // A FUSE_INIT on the request queue, notified through its eventfd.
    let guest = Driverless(&rq);
    guest.send(
        1,
        Opcode::Init as u32,
        0,
        InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0,
            flags: 0,
        }
        .as_slice(),
    );
    kick[1].write(1).unwrap();
    wait_until("INIT served", || guest.used_idx() == 1);
    assert_eq!(guest.reply(1).error, 0);
    wait_until("interrupt", || irq.count.load(Ordering::SeqCst) == 1);

    // Freeze the worker inside the next request (it blocks signalling the interrupt): the
    // event loop keeps running, and the device's lock is free for the vCPU threads.
    let gate = irq.gate.lock().unwrap();
    guest.send(2, Opcode::Lookup as u32, ROOT, &cstr("f"));
    kick[1].write(1).unwrap();
    wait_until("LOOKUP served", || guest.used_idx() == 2);
    // The event loop is not stuck behind the frozen worker: five passes of it complete (a
    // stuck loop would hang here until the test harness's limit).
    for _ in 0..5 {
        em.run_with_timeout(10).unwrap();
    }
    {
        let d = dev.lock().unwrap();
        let mut cfg = [0u8; 4];
        d.read_config(36, &mut cfg);
        assert_eq!(u32::from_le_bytes(cfg), 1);
    }
    drop(gate);
    wait_until("second interrupt", || irq.count.load(Ordering::SeqCst) == 2);
    let e: EntryOut = parse(&guest.reply(2).data);
    assert_eq!(e.attr.size, 3);

    // FORGET on the hiprio queue: used, no reply.
    let hi = Driverless(&hq);
    hi.send(
        3,
        Opcode::Forget as u32,
        e.nodeid,
        ForgetIn { nlookup: 1 }.as_slice(),
    );
    kick[0].write(1).unwrap();
    wait_until("FORGET used", || hi.used_idx() == 1);

    // Reset stops the workers; the device can be activated again (a fresh session).
    assert!(dev.lock().unwrap().reset());
    assert!(!dev.lock().unwrap().is_activated());
    {
        let mut d = dev.lock().unwrap();
        d.set_acked_features(1 << 32);
        let hq2 = TestQueue::create(&mem, GuestAddress(0x20_0000), QSIZE);
        let rq2 = TestQueue::create(&mem, GuestAddress(0x28_0000), QSIZE);
        let evts: Vec<EventFd> = (0..2).map(|_| EventFd::new(0).unwrap()).collect();
        let kick2 = evts[1].try_clone().unwrap();
        d.activate(
            mem.clone(),
            irq.clone(),
            vec![hq2.queue(), rq2.queue()],
            evts,
        )
        .unwrap();
        drop(d);
        em.run_with_timeout(100).unwrap();
        let g2 = Driverless(&rq2);
        // The old inode is gone with the old session.
        g2.send(
            4,
            Opcode::Getattr as u32,
            e.nodeid,
            GetattrIn::default().as_slice(),
        );
        kick2.write(1).unwrap();
        wait_until("GETATTR served", || g2.used_idx() == 1);
        assert_eq!(g2.reply(4).error, -libc::EBADF);
    }
    // Dropping the device stops its threads.
    drop(em);
    drop(dev);
}

/// A minimal driver for the threaded test: one request in flight at a time, request at 5 MiB,
/// reply at 6 MiB, each + the queue's address.
struct Driverless<'a>(&'a TestQueue);

impl Driverless<'_> {
    fn reply_addr(&self) -> u64 {
        0x60_0000 + self.0.desc.0
    }

    fn send(&self, unique: u64, opcode: u32, nodeid: u64, args: &[u8]) {
        let req_addr = 0x50_0000 + self.0.desc.0;
        let hdr = InHeader {
            len: (HDR + args.len()) as u32,
            opcode,
            unique,
            nodeid,
            ..Default::default()
        };
        let req = cat(&[hdr.as_slice(), args]);
        self.0
            .mem
            .write_slice(&req, GuestAddress(req_addr))
            .unwrap();
        self.0.add_chain(
            0,
            &[
                (req_addr, req.len() as u32, VRING_DESC_F_NEXT as u16, 1),
                (self.reply_addr(), 4096, VRING_DESC_F_WRITE as u16, 0),
            ],
        );
    }

    fn used_idx(&self) -> u16 {
        self.0.used_idx()
    }

    fn reply(&self, unique: u64) -> Reply {
        let mem = &self.0.mem;
        let out: OutHeader = mem.read_obj(GuestAddress(self.reply_addr())).unwrap();
        assert_eq!(out.unique, unique);
        let mut data = vec![0u8; out.len as usize - 16];
        mem.read_slice(&mut data, GuestAddress(self.reply_addr() + 16))
            .unwrap();
        Reply {
            used_len: out.len,
            error: out.error,
            data,
        }
    }
}

/// EVENT_IDX: after serving its requests the worker asks for a kick on the next one
/// (avail_event is the avail index it reached) and interrupts only when the driver's
/// used_event says so.
#[test]
fn event_idx_rearms_the_queue_and_interrupts_only_when_asked() {
    use virtio_queue::QueueT;
    let dev = Fs::new(FsConfig::new("t", std::env::temp_dir())).unwrap();
    assert!(
        dev.avail_features() & (1u64 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0,
        "EVENT_IDX is offered"
    );
    let mut g = share("evidx");
    g.queue.set_event_idx(true);
    fs::write(g.share.join("f"), b"x").unwrap();
    g.init();
    assert_eq!(g.ring.avail_event(), g.ring.avail_idx());
    let irqs = g.irq.count();
    // The driver wants an interrupt once the used index passes 100 only.
    g.ring.set_used_event(100);
    g.lookup(ROOT, "f").unwrap();
    g.lookup(ROOT, "f").unwrap();
    assert_eq!(g.ring.avail_event(), g.ring.avail_idx());
    assert_eq!(g.irq.count(), irqs, "no interrupt before used_event");
    // Now at the next reply.
    g.ring.set_used_event(g.ring.used_idx());
    g.lookup(ROOT, "f").unwrap();
    assert_eq!(g.irq.count(), irqs + 1);
}
