//! Helpers shared by hull's integration and end-to-end tests: one place for them (the VM
//! launcher wrapper in [`vm`], initramfs and busybox roots, processes with collected output,
//! scratch directories, data patterns).
//!
//! **Must not**: skip a test or weaken one: a test that cannot run here fails with the reason.
//!
//! VM tests need a `/dev/kvm` that can boot a Linux guest. On machines whose `/dev/kvm` is PVM
//! (or that have none), `make test` runs them inside the emulated KVM host (`tests/testhost/run`);
//! run directly there, they fail with that reason instead of skipping.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The workspace root (the clone).
/// The clone's top directory. `HULL_SOURCE_DIR` overrides it; `tests/run-vm-tests` sets it to
/// the clone it runs from: cargo reuses a test binary built in another clone with the same
/// sources (the shared target dir is keyed by content), and that binary's `CARGO_MANIFEST_DIR`
/// names the other clone, which may be gone.
pub fn workspace_root() -> PathBuf {
    if let Some(d) = std::env::var_os("HULL_SOURCE_DIR") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// `build/` in the clone: `make build` leaves binaries in `build/bin`, `make kernel` the guest
/// kernel at `build/vmlinux`. `HULL_BUILD_DIR` overrides it; `tests/run-vm-tests` sets it to the
/// clone it runs from, since a test binary from the shared target dir may have been compiled in
/// another clone.
pub fn build_dir() -> PathBuf {
    std::env::var_os("HULL_BUILD_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("build"))
}

pub mod daemons;
pub mod jail;
pub mod net;
pub mod procs;
pub mod terminal;
pub mod vm;

/// Path of a file the build must have produced; panics naming the make target otherwise.
fn built(path: PathBuf, target: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `make {target}` first (make test does)",
        path.display()
    );
    path
}

/// The guest kernel (`make kernel`).
pub fn kernel() -> PathBuf {
    built(build_dir().join("vmlinux"), "kernel")
}

/// A hull binary from `build/bin` (`make build`).
pub fn bin(name: &str) -> PathBuf {
    built(build_dir().join("bin").join(name), "build")
}

/// Panics with the reason when this machine cannot boot KVM guests, so a VM test run in the
/// wrong place fails loudly instead of passing or skipping.
pub fn require_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "VM test needs /dev/kvm; run it through tests/testhost/run (make test does)"
    );
    assert!(
        !Path::new("/sys/module/kvm_pvm").exists(),
        "VM test needs a /dev/kvm that can boot Linux guests, and this one is PVM; run it through \
         tests/testhost/run (make test does)"
    );
}

/// Deterministic pseudo-random bytes (xorshift64*), for file contents both sides can recompute.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A scratch directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let base = std::env::var_os("TMPDIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        for n in 0u32.. {
            let p = base.join(format!("{prefix}.{}.{n}", std::process::id()));
            if std::fs::create_dir(&p).is_ok() {
                return TempDir(p);
            }
        }
        unreachable!()
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Builds a newc initramfs: busybox (static) with its applets, plus the given files.
pub struct Initramfs {
    files: Vec<(String, Vec<u8>, u32)>,
}

impl Default for Initramfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Initramfs {
    pub fn new() -> Initramfs {
        Initramfs { files: Vec::new() }
    }

    /// Adds a file at `path` (absolute inside the guest) with `mode`.
    pub fn file(mut self, path: &str, contents: impl Into<Vec<u8>>, mode: u32) -> Initramfs {
        self.files.push((path.to_string(), contents.into(), mode));
        self
    }

    /// `/init` as a busybox shell script (a `#!/bin/sh` line is added).
    pub fn init_script(self, script: &str) -> Initramfs {
        self.file("/init", format!("#!/bin/sh\n{script}"), 0o755)
    }

    /// Writes the archive to `out`.
    pub fn build(&self, out: &Path) {
        let tmp = TempDir::new("hull-initramfs");
        let root = tmp.path();
        for d in [
            "bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "usr/bin", "usr/sbin",
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", root.join("bin/busybox"))
            .expect("/bin/busybox (package busybox-static) is needed to build test initramfs");
        for a in busybox_applets() {
            let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(a));
        }
        for (path, contents, mode) in &self.files {
            let p = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, contents).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
        }
        let status = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd '{}' && find . | cpio -o -H newc --quiet > '{}'",
                root.display(),
                out.display()
            ))
            .status()
            .unwrap();
        assert!(status.success(), "cpio failed building {}", out.display());
    }
}

/// The applets of the host's static busybox (without `busybox` itself).
fn busybox_applets() -> Vec<String> {
    let out = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("/bin/busybox (package busybox-static)");
    assert!(out.status.success(), "busybox --list failed");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|a| *a != "busybox")
        .map(str::to_string)
        .collect()
}

/// A child process whose output is collected on threads and that is killed when dropped, so a
/// failing test leaves nothing running.
pub struct Proc {
    child: Child,
    out: Option<std::thread::JoinHandle<Vec<u8>>>,
    err: Option<std::thread::JoinHandle<Vec<u8>>>,
}

/// What a finished [`Proc`] left.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Proc {
    /// Spawns `cmd` with stdin from /dev/null and stdout and stderr captured.
    pub fn spawn(cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let collect = |mut r: Box<dyn Read + Send>| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        };
        let out = Some(collect(Box::new(child.stdout.take().unwrap())));
        let err = Some(collect(Box::new(child.stderr.take().unwrap())));
        Proc { child, out, err }
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Waits at most `limit`; panics (after killing the process) if it is still running then.
    pub fn wait_timeout(mut self, limit: Duration) -> Finished {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return self.finish(status);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                let status = self.child.wait().unwrap();
                let f = self.finish(status);
                panic!(
                    "process still running after {limit:?}; killed it.\n--- stdout:\n{}\n--- stderr:\n{}",
                    f.stdout, f.stderr
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(&mut self, status: ExitStatus) -> Finished {
        let stdout = self
            .out
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        let stderr = self
            .err
            .take()
            .map(|h| h.join().unwrap())
            .unwrap_or_default();
        Finished {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Byte streams both ends of a data test can generate and check independently: the guest probe
/// (`hull-guest-probe`) and the host side of VM tests use the same generator and checksum.
pub mod stream_check {
    /// Deterministic pseudo-random bytes (xorshift64*), a different stream per seed.
    pub struct Pattern(u64);

    impl Pattern {
        pub fn new(seed: u64) -> Pattern {
            Pattern(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }

        pub fn fill(&mut self, buf: &mut [u8]) {
            for b in buf {
                self.0 ^= self.0 >> 12;
                self.0 ^= self.0 << 25;
                self.0 ^= self.0 >> 27;
                *b = (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8;
            }
        }
    }

    /// 64-bit FNV-1a, updated incrementally.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Checksum(pub u64);

    impl Default for Checksum {
        fn default() -> Self {
            Checksum(0xcbf2_9ce4_8422_2325)
        }
    }

    impl Checksum {
        pub fn update(&mut self, data: &[u8]) {
            for &b in data {
                self.0 ^= u64::from(b);
                self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }

    /// `(len, checksum)` of the first `len` bytes of `Pattern::new(seed)`.
    pub fn expected(seed: u64, len: u64) -> Checksum {
        let mut p = Pattern::new(seed);
        let mut c = Checksum::default();
        let mut buf = vec![0u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            p.fill(&mut buf[..n]);
            c.update(&buf[..n]);
            left -= n as u64;
        }
        c
    }

    /// The reply line a summing peer sends: `<bytes> <checksum hex>`.
    pub fn reply_line(len: u64, sum: Checksum) -> String {
        format!("{len} {:016x}\n", sum.0)
    }
}
