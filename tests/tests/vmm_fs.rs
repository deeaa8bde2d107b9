//! virtio-fs end to end: hull-vmm serves host directories to a guest (`--fs TAG=DIR[,OPTS]`,
//! `mount -t virtiofs TAG DIR` in the guest). A busybox init in the guest runs the
//! checks and reports `FST <key> <value>` lines on the console; the host checks its side before
//! boot, while the guest waits for it, and after the VM exits.

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{symlink, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hull_tests::vm::{self, busybox_root as busybox_root_with, nonce, sha256};
use hull_tests::{pattern, Initramfs, TempDir};

/// One VM's life inside the emulated host (software emulation is slow).
const VM_LIMIT: Duration = Duration::from_secs(420);
const PROBE: &str = env!("CARGO_BIN_EXE_hull-fs-probe");
/// 2001-02-03 04:05:06 UTC.
const GUEST_MTIME: i64 = 981_173_106;

/// The probe runs in a busybox initramfs: it must be static.
fn probe_bytes() -> Vec<u8> {
    let b = fs::read(PROBE).expect("hull-fs-probe is built with the test binaries");
    assert!(
        !b.windows(15).any(|w| w == b"/lib64/ld-linux"),
        "{PROBE} is dynamically linked: build the tests with \
         CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' \
         --target x86_64-unknown-linux-gnu (as make does)"
    );
    b
}

/// A share, passed as `--fs TAG=DIR[,OPTS]`.
struct Share<'a> {
    tag: &'a str,
    dir: &'a Path,
    /// `ro,cache=never,...` or empty.
    opts: &'a str,
}

/// What a VM run left: the VMM's exit, the console and the guest's `FST` reports.
struct Run {
    /// hull-vmm's log.
    log: String,
    console: String,
    report: HashMap<String, String>,
}

impl Run {
    fn get(&self, key: &str) -> &str {
        self.report.get(key).map(String::as_str).unwrap_or_else(|| {
            panic!(
                "the guest did not report {key:?}; console:\n{}\nstderr:\n{}",
                self.console, self.log
            )
        })
    }

    fn probe_ok(&self, name: &str) -> &str {
        let line = self
            .console
            .lines()
            .find(|l| l.starts_with(&format!("PROBE {name} ")))
            .unwrap_or_else(|| panic!("no PROBE {name} line; console:\n{}", self.console));
        assert!(
            line.starts_with(&format!("PROBE {name} ok")),
            "{line}\nconsole:\n{}",
            self.console
        );
        line
    }
}

/// Boots hull-vmm with `shares` and an init running `script` (with `r KEY VALUE...` to report).
/// `during` runs on the host while the VM runs, with the console path.
fn run_vm(dir: &TempDir, shares: &[Share<'_>], script: &str, during: impl FnOnce(&Path)) -> Run {
    let initrd = dir.path().join("initrd.cpio");
    Initramfs::new()
        .file("/bin/hull-fs-probe", probe_bytes(), 0o755)
        .init_script(&format!(
            "mount -t proc proc /proc\nmount -t sysfs sys /sys\n\
             mknod /dev/null c 1 3; mknod /dev/zero c 1 5; mknod /dev/urandom c 1 9\n\
             r() {{ echo \"FST $*\"; }}\n{script}\nr end 1\nreboot -f\n"
        ))
        .build(&initrd);
    let console = dir.path().join("console.log");
    let mut c = vm::config(&initrd);
    c.memory_mib = 512;
    c.serial = vm::SerialConfig::File(console.clone());
    for s in shares {
        let opts = if s.opts.is_empty() {
            String::new()
        } else {
            format!(",{}", s.opts)
        };
        let spec = format!("{}={}{opts}", s.tag, s.dir.display());
        c.fs.push(vm::FsConfig::parse_cli(&spec).unwrap_or_else(|e| panic!("{spec}: {e}")));
    }
    let mut vmm = vm::launch(&c, dir.path());
    during(&console);
    let finished = vm::wait_exit(&mut vmm, VM_LIMIT);
    let console = console_text(&console);
    let log = vmm.log();
    // Shown when the test fails.
    println!("--- console:\n{console}\n--- hull-vmm log:\n{log}");
    assert_eq!(
        finished.status.code(),
        Some(0),
        "hull-vmm failed ({}); log:\n{log}\nconsole:\n{console}",
        finished.exit
    );
    let report = console
        .lines()
        .filter_map(|l| l.strip_prefix("FST "))
        .map(|l| match l.split_once(' ') {
            Some((k, v)) => (k.to_string(), v.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect();
    let run = Run {
        log,
        console,
        report,
    };
    run.get("end");
    run
}

/// What the guest printed so far (the serial line's `\r\n` undone).
fn console_text(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap_or_default()
        .replace("\r\n", "\n")
}

/// Waits until the console shows `needle`.
fn wait_console(path: &Path, needle: &str, limit: Duration) {
    vm::wait_for("the console", || console_text(path), needle, limit);
}

fn xattr(path: &Path, name: &str) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    let p = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: lgetxattr writes at most buf.len() bytes into buf, which outlives the call.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(len >= 0, "lgetxattr {name} on {}", path.display());
    buf.truncate(len as usize);
    buf
}

/// A busybox root file system with the directories these tests use.
fn busybox_root(root: &Path) {
    busybox_root_with(root, &["etc", "tmp", "data/sub", "proc", "dev"]);
}

#[test]
fn busybox_root_shared_both_ways() {
    let dir = TempDir::new("hull-fs-root");
    let root = dir.path().join("root");
    busybox_root(&root);
    let marker = nonce();
    fs::write(root.join("etc/marker"), &marker).unwrap();
    let data = root.join("data");
    fs::write(data.join("host.bin"), pattern(1, 3 << 20)).unwrap();
    let host_sum = sha256(&data.join("host.bin"));
    fs::write(data.join("owned"), b"owned by 1234").unwrap();
    std::os::unix::fs::chown(data.join("owned"), Some(1234), Some(5678)).unwrap();
    fs::set_permissions(data.join("owned"), fs::Permissions::from_mode(0o640)).unwrap();
    let owned = fs::metadata(data.join("owned")).unwrap();
    symlink("owned", data.join("hlink")).unwrap();
    fs::write(data.join("mapped"), pattern(2, 16384)).unwrap();
    fs::write(data.join("lockfile"), b"").unwrap();
    fs::create_dir(root.join("many")).unwrap();
    for i in 0..10_000 {
        fs::write(root.join(format!("many/entry-{i:05}")), b"").unwrap();
    }

    let script = r#"
mkdir -p /mnt
mount -t virtiofs root /mnt && r mounted 1
r host_sum $(sha256sum /mnt/data/host.bin | cut -d' ' -f1)
dd if=/dev/urandom of=/mnt/data/guest.bin bs=65536 count=40 2>/dev/null
r guest_sum $(sha256sum /mnt/data/guest.bin | cut -d' ' -f1)
chroot /mnt /bin/busybox sh -c 'echo "chroot $(cat /etc/marker)" > /data/from-chroot && ls /bin | wc -l > /data/applets'
r chroot_rc $?
r chroot_out $(cat /mnt/data/from-chroot)
r host_stat $(stat -c '%a %u %g %Y %s' /mnt/data/owned)
echo -n guest > /mnt/data/gown
chown 2345:6789 /mnt/data/gown && chmod 0751 /mnt/data/gown && touch -t 200102030405.06 /mnt/data/gown
r gown_stat $(stat -c '%a %u %g %Y' /mnt/data/gown)
r host_link $(readlink /mnt/data/hlink)
r host_link_content $(cat /mnt/data/hlink)
ln -s ../owned /mnt/data/sub/glink
r glink_content $(cat /mnt/data/sub/glink)
r many $(ls /mnt/many | wc -l)
r many_long $(ls -l /mnt/many | grep -c '^-')
/bin/hull-fs-probe mmap /mnt/data/mapped 4096 guest-mmap-write
mkfifo /mnt/data/fifo
(echo through-the-fifo > /mnt/data/fifo &)
r fifo $(cat /mnt/data/fifo)
/bin/hull-fs-probe unix-socket /mnt/data/sock
/bin/hull-fs-probe locks /mnt/data/lockfile
/bin/hull-fs-probe xattr /mnt/data/lockfile trusted.hull from-the-guest
rm /mnt/many/entry-00000 && r unlinked 1
umount /mnt && r umounted 1
"#;
    let run = run_vm(
        &dir,
        &[Share {
            tag: "root",
            dir: &root,
            // The writeback cache only changes when data reaches the host (by the unmount
            // at the latest); every check on the host side runs after the VM exited.
            opts: "xattr,writeback",
        }],
        script,
        |_| {},
    );
    assert_eq!(run.get("mounted"), "1");
    // Byte-exact both ways.
    assert_eq!(run.get("host_sum"), host_sum);
    assert_eq!(run.get("guest_sum"), sha256(&data.join("guest.bin")));
    assert_eq!(
        fs::metadata(data.join("guest.bin")).unwrap().len(),
        40 * 65536
    );
    // The guest ran the shared busybox root in a chroot.
    assert_eq!(run.get("chroot_rc"), "0");
    assert_eq!(run.get("chroot_out"), format!("chroot {marker}"));
    let applets: usize = fs::read_to_string(data.join("applets"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(applets > 100, "{applets} applets seen in the chroot");
    // Permissions, ownership (1:1) and mtimes, both ways.
    assert_eq!(
        run.get("host_stat"),
        format!("640 1234 5678 {} 13", owned.mtime())
    );
    assert_eq!(run.get("gown_stat"), format!("751 2345 6789 {GUEST_MTIME}"));
    let g = fs::metadata(data.join("gown")).unwrap();
    assert_eq!(
        (g.mode() & 0o7777, g.uid(), g.gid(), g.mtime()),
        (0o751, 2345, 6789, GUEST_MTIME)
    );
    assert_eq!(fs::read(data.join("gown")).unwrap(), b"guest");
    // Symlinks both ways.
    assert_eq!(run.get("host_link"), "owned");
    assert_eq!(run.get("host_link_content"), "owned by 1234");
    assert_eq!(
        fs::read_link(data.join("sub/glink")).unwrap(),
        PathBuf::from("../owned")
    );
    assert_eq!(run.get("glink_content"), "owned by 1234");
    // A directory of 10,000 entries, with and without attributes.
    assert_eq!(run.get("many"), "10000");
    assert_eq!(run.get("many_long"), "10000");
    assert_eq!(run.get("unlinked"), "1");
    assert!(!root.join("many/entry-00000").exists());
    // mmap of a shared file: the write through the mapping reached the host.
    run.probe_ok("mmap");
    let mapped = fs::read(data.join("mapped")).unwrap();
    assert_eq!(&mapped[4096..4096 + 16], b"guest-mmap-write");
    assert_eq!(&mapped[..4096], &pattern(2, 16384)[..4096]);
    // A FIFO and a Unix socket created in the share work in the guest and exist on the host.
    assert_eq!(run.get("fifo"), "through-the-fifo");
    assert!(fs::symlink_metadata(data.join("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    run.probe_ok("unix-socket");
    assert!(fs::symlink_metadata(data.join("sock"))
        .unwrap()
        .file_type()
        .is_socket());
    // flock and POSIX locks exclude each other in the guest.
    run.probe_ok("locks");
    // Extended attributes (`xattr`; trusted.*: the test host's tmpfs has no user.* xattrs).
    run.probe_ok("xattr");
    assert_eq!(
        xattr(&data.join("lockfile"), "trusted.hull"),
        b"from-the-guest"
    );
    assert_eq!(run.get("umounted"), "1");
}

#[test]
fn host_changes_cache_policies_and_read_only() {
    let dir = TempDir::new("hull-fs-cache");
    let (never, meta, ro) = (
        dir.path().join("never"),
        dir.path().join("meta"),
        dir.path().join("ro"),
    );
    for d in [&never, &meta, &ro] {
        fs::create_dir(d).unwrap();
    }
    fs::write(never.join("f"), "old-content-1").unwrap();
    fs::write(never.join("deleted-by-host"), "x").unwrap();
    fs::write(meta.join("f"), "old-content-2").unwrap();
    fs::write(ro.join("f"), "read-only data").unwrap();
    fs::create_dir(ro.join("d")).unwrap();
    let ro_before = snapshot(&ro);

    let script = r#"
mkdir -p /n /m /ro
mount -t virtiofs never /n && mount -t virtiofs meta /m && mount -t virtiofs ro /ro && r mounted 1
r before_n $(cat /n/f)
r before_m $(cat /m/f)
r ls_before $(ls /n | tr '\n' ,)
r ready 1
i=0
while [ $i -lt 1200 ]; do
  [ "$(cat /n/f)" = new-content-1 ] && [ "$(cat /m/f)" = new-content-2 ] && break
  sleep 0.1; i=$((i+1))
done
r after_n $(cat /n/f)
r after_m $(cat /m/f)
r created_n $(cat /n/created-by-host)
r ls_after $(ls /n | tr '\n' ,)
r ro_read $(cat /ro/f)
try() { name=$1; shift; if "$@" 2>/tmp/err; then r ro_$name SUCCEEDED; else r ro_$name refused $(grep -c 'Read-only file system' /tmp/err); fi; }
try write sh -c 'echo x > /ro/f'
try append sh -c 'echo x >> /ro/f'
try create touch /ro/new
try utime touch /ro/f
try unlink rm /ro/f
try mkdir mkdir /ro/d2
try rmdir rmdir /ro/d
try chmod chmod 777 /ro/f
try chown chown 1:1 /ro/f
try rename mv /ro/f /ro/g
try link ln /ro/f /ro/h
try symlink ln -s f /ro/s
try truncate truncate -s 0 /ro/f
try mkfifo mkfifo /ro/p
try dd dd if=/dev/zero of=/ro/f bs=1 count=1 conv=notrunc
r ro_after $(cat /ro/f)
"#;
    let run = run_vm(
        &dir,
        &[
            Share {
                tag: "never",
                dir: &never,
                opts: "cache=never",
            },
            Share {
                tag: "meta",
                dir: &meta,
                opts: "cache=metadata",
            },
            Share {
                tag: "ro",
                dir: &ro,
                opts: "ro",
            },
        ],
        script,
        |console| {
            wait_console(console, "FST ready 1", VM_LIMIT);
            // Same inode, same size: only the data changes.
            fs::write(never.join("f"), "new-content-1").unwrap();
            fs::write(meta.join("f"), "new-content-2").unwrap();
            fs::write(never.join("created-by-host"), "hello-guest").unwrap();
            fs::remove_file(never.join("deleted-by-host")).unwrap();
        },
    );
    assert_eq!(run.get("mounted"), "1");
    assert_eq!(run.get("before_n"), "old-content-1");
    assert_eq!(run.get("before_m"), "old-content-2");
    assert_eq!(run.get("ls_before"), "deleted-by-host,f,");
    // cache=never and cache=metadata: the host's change is what the guest reads.
    assert_eq!(run.get("after_n"), "new-content-1");
    assert_eq!(run.get("after_m"), "new-content-2");
    // cache=never: names come and go with the host.
    assert_eq!(run.get("created_n"), "hello-guest");
    assert_eq!(run.get("ls_after"), "created-by-host,f,");
    // Read-only: reads work, every change is refused with EROFS, the host is untouched.
    assert_eq!(run.get("ro_read"), "read-only data");
    for op in [
        "write", "append", "create", "utime", "unlink", "mkdir", "rmdir", "chmod", "chown",
        "rename", "link", "symlink", "truncate", "mkfifo", "dd",
    ] {
        assert_eq!(run.get(&format!("ro_{op}")), "refused 1", "{op}");
    }
    assert_eq!(run.get("ro_after"), "read-only data");
    assert_eq!(snapshot(&ro), ro_before);
}

/// Every entry under `dir` (not following symlinks) with type, mode, owner, size, mtime and
/// contents.
fn snapshot(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let content = if m.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            };
            out.push(format!(
                "{} {:o} {}:{} {} {}.{} {:?}",
                p.display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
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

#[test]
fn escapes_from_the_share_fail() {
    let dir = TempDir::new("hull-fs-escape");
    let top = dir.path().join("host");
    let share = top.join("share");
    fs::create_dir_all(&share).unwrap();
    fs::create_dir(top.join("odir")).unwrap();
    let secret_text = format!("host-secret-{}", nonce());
    let secret = top.join("secret");
    fs::write(&secret, &secret_text).unwrap();
    fs::write(top.join("odir/inner"), &secret_text).unwrap();
    symlink(&secret, share.join("abs")).unwrap();
    symlink("../secret", share.join("rel")).unwrap();
    symlink(top.join("odir"), share.join("dirlink")).unwrap();
    fs::write(share.join("file"), "inside").unwrap();
    fs::write(share.join("inside"), "move me").unwrap();
    let outside_before: Vec<String> = snapshot(&top)
        .into_iter()
        .filter(|l| !l.starts_with(share.to_str().unwrap()))
        .collect();

    let script = format!(
        r#"
mkdir -p /mnt
mount -t virtiofs esc /mnt && r mounted 1
r abs_link $(readlink /mnt/abs)
r abs $(cat /mnt/abs 2>&1 | head -c 200)
r rel $(cat /mnt/rel 2>&1 | head -c 200)
r dotdot $(cat /mnt/../secret 2>&1 | head -c 200)
r dotdot_root $(ls /mnt/.. | tr '\n' ,)
r dirlink $(ls /mnt/dirlink/ 2>&1 | head -c 200)
r dirlink_inner $(cat /mnt/dirlink/inner 2>&1 | head -c 200)
cd /mnt && cd .. && cd .. && r cd_up $(pwd) && cd /
ln /mnt/abs /mnt/abs-hard; r hard_rc $?
r hard $(cat /mnt/abs-hard 2>&1 | head -c 200)
r hard_is_link $(readlink /mnt/abs-hard)
mv /mnt/inside /mnt/../moved-out && r moved_rc 0
r moved_content $(cat /moved-out)
mv /mnt/file /mnt/dirlink/planted 2>/dev/null; r plant_rc $?
ln -s {secret} /mnt/gabs
echo pwned > /mnt/gabs 2>/dev/null; r write_through_rc $?
echo pwned > /mnt/abs 2>/dev/null; r write_abs_rc $?
/bin/hull-fs-probe open-by-handle /mnt/file /mnt
"#,
        secret = secret.display()
    );
    let run = run_vm(
        &dir,
        &[Share {
            tag: "esc",
            dir: &share,
            opts: "",
        }],
        &script,
        |_| {},
    );
    assert_eq!(run.get("mounted"), "1");
    // Nothing the guest printed came from the host file outside the share.
    assert!(
        !run.console.contains(&secret_text),
        "the guest read the host secret:\n{}",
        run.console
    );
    // Symlinks are the guest's to resolve: their text is the host's, their targets the guest's.
    assert_eq!(run.get("abs_link"), secret.display().to_string());
    assert!(
        run.get("abs").contains("No such file"),
        "{}",
        run.get("abs")
    );
    assert!(run.get("rel").contains("No such file"));
    assert!(run.get("dotdot").contains("No such file"));
    assert!(run.get("dirlink").contains("No such file"));
    assert!(run.get("dirlink_inner").contains("No such file"));
    // `..` of the mount point is the guest's root.
    assert!(
        run.get("dotdot_root").contains("init,"),
        "{}",
        run.get("dotdot_root")
    );
    assert_eq!(run.get("cd_up"), "/");
    // A hard link to the symlink is a link to the symlink, and reading through it resolves
    // the link in the guest, so it reaches nothing.
    assert_eq!(run.get("hard_rc"), "0");
    assert_eq!(run.get("hard_is_link"), secret.display().to_string());
    assert!(
        run.get("hard").contains("No such file"),
        "{}",
        run.get("hard")
    );
    // Moving out of the mount copies into the guest's own file system, not the host's.
    assert_eq!(run.get("moved_rc"), "0");
    assert_eq!(run.get("moved_content"), "move me");
    assert_ne!(run.get("plant_rc"), "0");
    assert_ne!(run.get("write_through_rc"), "0");
    assert_ne!(run.get("write_abs_rc"), "0");
    // Forged handles reach nothing outside the mount. The guest kernel makes FUSE handles
    // (node id + generation), so forging works: of the 4100 node ids tried, the ones the guest
    // knows open (at least one, or the check proved nothing), and every one of them is a file
    // inside the mount.
    let probe = run.probe_ok("open-by-handle");
    assert!(probe.contains("refused=no tried=4100 "), "{probe}");
    let opened: u32 = probe
        .split_whitespace()
        .find_map(|w| w.strip_prefix("opened="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no opened count: {probe}"));
    assert!(
        opened >= 1,
        "no forged handle opened: the check proved nothing: {probe}"
    );
    assert!(probe.ends_with("escaped=0"), "{probe}");
    // The host outside the share is exactly as it was.
    let outside_after: Vec<String> = snapshot(&top)
        .into_iter()
        .filter(|l| !l.starts_with(share.to_str().unwrap()))
        .collect();
    assert_eq!(outside_after, outside_before);
    assert_eq!(fs::read_to_string(&secret).unwrap(), secret_text);
    // Inside, the guest's links stayed links.
    assert!(fs::symlink_metadata(share.join("abs-hard"))
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(fs::read_link(share.join("gabs")).unwrap(), secret);
    assert!(!share.join("inside").exists());
}

/// Size of the large-file test: 1 GiB, as the virtio-fs issue asks. Measured inside the emulated
/// host (quiet machine): sha256 through the share 37 s, copy within it 32 s, 116 s for the whole
/// test. The share lives in the emulated host's tmpfs, so run-vm-tests gives it 8 GiB.
/// `HULL_FS_LARGE_MIB` overrides the size (e.g. 256 for a quicker run).
fn large_mib() -> usize {
    std::env::var("HULL_FS_LARGE_MIB")
        .ok()
        .map(|v| v.parse().expect("HULL_FS_LARGE_MIB is a number of MiB"))
        .unwrap_or(1024)
}

#[test]
fn large_file_round_trip() {
    let large_mib = large_mib();
    let dir = TempDir::new("hull-fs-large");
    let share = dir.path().join("share");
    fs::create_dir(&share).unwrap();
    {
        use std::io::Write;
        let mut f = fs::File::create(share.join("big-host")).unwrap();
        for i in 0..large_mib {
            f.write_all(&pattern(1000 + i as u64, 1 << 20)).unwrap();
        }
    }
    let host_sum = sha256(&share.join("big-host"));
    let script = format!(
        r#"
mkdir -p /mnt
mount -t virtiofs big /mnt && r mounted 1
t0=$(date +%s)
r read_sum $(sha256sum /mnt/big-host | cut -d' ' -f1)
t1=$(date +%s)
dd if=/mnt/big-host of=/mnt/big-guest bs=1M 2>/dev/null && sync
t2=$(date +%s)
r write_size $(stat -c %s /mnt/big-guest)
r seconds_read $((t1-t0))
r seconds_copy $((t2-t1))
r expected_mib {large_mib}
"#
    );
    let start = Instant::now();
    let run = run_vm(
        &dir,
        &[Share {
            tag: "big",
            dir: &share,
            opts: "",
        }],
        &script,
        |_| {},
    );
    let total = start.elapsed();
    assert_eq!(run.get("read_sum"), host_sum);
    assert_eq!(
        run.get("write_size"),
        (large_mib << 20).to_string(),
        "size of the guest's copy"
    );
    assert_eq!(sha256(&share.join("big-guest")), host_sum);
    println!(
        "measured: {large_mib} MiB: guest sha256 read {} s, guest copy (read+write) {} s, whole VM \
         run {total:?}",
        run.get("seconds_read"),
        run.get("seconds_copy")
    );
}
