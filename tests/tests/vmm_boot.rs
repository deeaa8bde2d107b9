//! hull-vmm boots the guest kernel (`build/vmlinux`) with a test initramfs and behaves as the
//! runtime needs: serial console output, SMP, exit statuses that tell a reboot from a panic, the
//! control API (pause, resume, stats, shutdown), socket clean-up, and virtio-mmio devices the
//! guest's drivers bind to.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hull_tests::{bin, kernel, require_kvm, Finished, Initramfs, Proc, TempDir};

/// Generous limit for one VM's life inside the emulated host (software emulation is slow).
const VM_LIMIT: Duration = Duration::from_secs(180);

fn nonce() -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    format!("{:x}{:x}", t.as_nanos(), std::process::id())
}

/// An initramfs whose /init is `script` (after mounting proc and sysfs).
fn initrd(dir: &TempDir, script: &str) -> PathBuf {
    let path = dir.path().join("initrd.cpio");
    Initramfs::new()
        .init_script(&format!(
            "mount -t proc proc /proc\nmount -t sysfs sys /sys\n{script}"
        ))
        .build(&path);
    path
}

fn vmm(dir: &TempDir, script: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("hull-vmm"));
    cmd.arg("--kernel")
        .arg(kernel())
        .arg("--initrd")
        .arg(initrd(dir, script))
        .args(["--memory-mib", "256"])
        .args(extra);
    cmd
}

/// What the guest printed so far (the tty turns `\n` into `\r\n`; this undoes it).
fn console_text(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .replace("\r\n", "\n")
}

/// Waits until `path` contains `needle`; panics with what it has after `limit`.
fn wait_for(path: &Path, needle: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = console_text(path);
        if text.contains(needle) {
            return text;
        }
        assert!(
            start.elapsed() < limit,
            "{needle:?} did not appear in {} within {limit:?}; it has:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn api(sock: &Path, request: &str) -> String {
    let mut s = UnixStream::connect(sock).expect("connect to the API socket");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("{request}\n").as_bytes()).unwrap();
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).unwrap();
    line
}

fn count(text: &str, prefix: &str) -> usize {
    text.lines().filter(|l| l.starts_with(prefix)).count()
}

fn assert_exit(f: &Finished, code: i32, reason: &str) {
    assert_eq!(
        f.status.code(),
        Some(code),
        "hull-vmm exit status; stderr:\n{}\nstdout:\n{}",
        f.stderr,
        f.stdout
    );
    assert!(
        f.stderr.contains(reason),
        "stderr should say {reason:?}:\n{}",
        f.stderr
    );
}

/// Sum of the resident set of every mapping of `pid` except the guest RAM mapping (the one of
/// exactly `guest_bytes`), in KiB.
fn vmm_rss_kib(pid: u32, guest_bytes: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let mut total = 0;
    let mut skip = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let (a, b) = first.split_once('-').unwrap();
            let size = u64::from_str_radix(b, 16).unwrap() - u64::from_str_radix(a, 16).unwrap();
            skip = size == guest_bytes;
        } else if let Some(rest) = line.strip_prefix("Rss:") {
            if !skip {
                total += rest
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap();
            }
        }
    }
    total
}

#[test]
fn boots_to_userspace_and_guest_reboot_exits_zero() {
    require_kvm();
    let dir = TempDir::new("hull-vmm-boot");
    let console = dir.path().join("console.log");
    let n = nonce();
    let start = Instant::now();
    let p = Proc::spawn(&mut vmm(
        &dir,
        r#"n=$(sed -n 's/.*hull.nonce=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
echo "USERSPACE nonce=$n kernel=$(uname -r)"
echo REBOOTING
reboot -f
"#,
        &[
            "--cmdline",
            &format!("console=ttyS0 hull.nonce={n}"),
            "--serial",
            console.to_str().unwrap(),
        ],
    ));
    wait_for(&console, "USERSPACE nonce=", VM_LIMIT);
    let boot = start.elapsed();
    wait_for(&console, "REBOOTING", VM_LIMIT);
    let marker = Instant::now();
    let f = p.wait_timeout(VM_LIMIT);
    let reboot = marker.elapsed();
    assert_exit(&f, 0, "guest rebooted");
    let text = console_text(&console);
    assert!(
        text.contains(&format!("USERSPACE nonce={n} kernel=")),
        "{text}"
    );
    assert!(text.contains("Run /init as init process"), "{text}");
    eprintln!(
        "measured: hull-vmm start -> first userspace line {boot:?}; guest reboot -> hull-vmm exit {reboot:?}"
    );
}

#[test]
fn console_to_stdout() {
    require_kvm();
    let dir = TempDir::new("hull-vmm-stdout");
    let f = Proc::spawn(&mut vmm(&dir, "echo HELLO-FROM-GUEST\nreboot -f\n", &[]))
        .wait_timeout(VM_LIMIT);
    assert_exit(&f, 0, "guest rebooted");
    assert!(f.stdout.contains("HELLO-FROM-GUEST"), "{}", f.stdout);
}

#[test]
fn linux_64bit_boot_protocol_fallback() {
    require_kvm();
    let dir = TempDir::new("hull-vmm-linux64");
    // The same vmlinux, entered through the 64-bit Linux boot protocol (zero page, e820) instead
    // of its PVH note: the path a bzImage or an ELF without the note takes.
    let f = Proc::spawn(&mut vmm(
        &dir,
        "echo \"LINUX64 cpus=$(grep -c ^processor /proc/cpuinfo) mem=$(grep MemTotal /proc/meminfo)\"\nreboot -f\n",
        &[
            "--boot-protocol",
            "linux",
            "--vcpus",
            "2",
            "--cmdline",
            "console=ttyS0",
        ],
    ))
    .wait_timeout(VM_LIMIT);
    assert_exit(&f, 0, "guest rebooted");
    assert!(
        f.stdout.contains("LINUX64 cpus=2 mem=MemTotal:"),
        "{}",
        f.stdout
    );
    assert!(f.stdout.contains("Freeing initrd memory"), "{}", f.stdout);
}

#[test]
fn two_vcpus_are_online() {
    require_kvm();
    let dir = TempDir::new("hull-vmm-smp");
    let f = Proc::spawn(&mut vmm(
        &dir,
        r#"echo "ONLINE=$(cat /sys/devices/system/cpu/online) NPROC=$(grep -c ^processor /proc/cpuinfo)"
reboot -f
"#,
        // Guest RAM on a memfd here (the default, anonymous memory, is used everywhere else).
        &["--vcpus", "2", "--memory-backing", "memfd"],
    ))
    .wait_timeout(VM_LIMIT);
    assert_exit(&f, 0, "guest rebooted");
    assert!(f.stdout.contains("ONLINE=0-1 NPROC=2"), "{}", f.stdout);
}

#[test]
fn guest_panic_exits_nonzero_with_the_reason() {
    require_kvm();
    let dir = TempDir::new("hull-vmm-panic");
    // PID 1 exiting makes the kernel panic ("Attempted to kill init!").
    let f = Proc::spawn(&mut vmm(&dir, "echo ABOUT-TO-EXIT\nexit 3\n", &[])).wait_timeout(VM_LIMIT);
    assert_exit(
        &f,
        2,
        "guest kernel panic: Kernel panic - not syncing: Attempted to kill init!",
    );
    assert_eq!(
        f.stderr
            .lines()
            .filter(|l| l.contains("hull-vmm: "))
            .count(),
        1,
        "{}",
        f.stderr
    );
    assert!(f.stdout.contains("ABOUT-TO-EXIT"));
}

#[test]
fn api_pause_resume_stats_shutdown() {
    require_kvm();
    let dir = TempDir::new("hull-vmm-api");
    let console = dir.path().join("console.log");
    let sock = dir.path().join("api.sock");
    let p = Proc::spawn(&mut vmm(
        &dir,
        "i=0\nwhile true; do echo \"tick $i\"; i=$((i+1)); sleep 0.1; done\n",
        &[
            "--serial",
            console.to_str().unwrap(),
            "--api-sock",
            sock.to_str().unwrap(),
        ],
    ));
    wait_for(&console, "tick 3\n", VM_LIMIT);

    let r = api(&sock, r#"{"action":"pause"}"#);
    assert_eq!(r.trim(), r#"{"ok":true,"state":"paused"}"#);
    let before = count(&console_text(&console), "tick ");
    std::thread::sleep(Duration::from_secs(3));
    let after = count(&console_text(&console), "tick ");
    assert_eq!(before, after, "the guest made progress while paused");

    let stats = api(&sock, r#"{"action":"stats"}"#);
    assert!(stats.contains(r#""ok":true"#), "{stats}");
    assert!(stats.contains(r#""vcpus":1"#), "{stats}");
    assert!(stats.contains(r#""memory_mib":256"#), "{stats}");
    assert!(stats.contains(r#""state":"paused""#), "{stats}");
    assert!(stats.contains(r#""io_out":"#), "{stats}");
    eprintln!(
        "measured: hull-vmm RSS without guest memory: {} KiB; stats: {}",
        vmm_rss_kib(p.id(), 256 << 20),
        stats.trim()
    );

    let bad = api(&sock, r#"{"action":"fly"}"#);
    assert!(
        bad.starts_with(r#"{"ok":false,"error":"invalid request"#),
        "{bad}"
    );

    let r = api(&sock, r#"{"action":"resume"}"#);
    assert_eq!(r.trim(), r#"{"ok":true,"state":"running"}"#);
    wait_for(&console, &format!("tick {}\n", after + 2), VM_LIMIT);

    let r = api(&sock, r#"{"action":"shutdown","timeout_ms":60000}"#);
    assert!(r.starts_with(r#"{"ok":true"#), "{r}");
    let f = p.wait_timeout(VM_LIMIT);
    // The busybox-script PID 1 leaves Ctrl-Alt-Del to the kernel, which restarts at once.
    assert_exit(&f, 0, "shut down on API request");
    assert!(!f.stderr.contains("grace period"), "{}", f.stderr);
    assert!(!sock.exists(), "the API socket was left behind");
}

#[test]
fn api_shutdown_forced_after_grace_period_and_sigterm_cleanup() {
    require_kvm();
    let dir = TempDir::new("hull-vmm-force");
    let sock = dir.path().join("api.sock");
    let vsock = dir.path().join("vsock.sock");
    // The guest turns the kernel's Ctrl-Alt-Del restart into SIGINT for PID 1, which ignores it:
    // it ignores the shutdown request.
    let script = "trap '' INT\necho 0 > /proc/sys/kernel/ctrl-alt-del\necho READY\nwhile true; do sleep 1; done\n";
    let console = dir.path().join("console.log");
    let p = Proc::spawn(&mut vmm(
        &dir,
        script,
        &[
            "--serial",
            console.to_str().unwrap(),
            "--api-sock",
            sock.to_str().unwrap(),
            "--vsock-uds",
            vsock.to_str().unwrap(),
        ],
    ));
    wait_for(&console, "READY", VM_LIMIT);
    assert!(vsock.exists() && sock.exists());
    let r = api(&sock, r#"{"action":"shutdown","timeout_ms":2000}"#);
    assert!(r.starts_with(r#"{"ok":true"#), "{r}");
    let f = p.wait_timeout(VM_LIMIT);
    assert_exit(&f, 0, "the guest did not stop within the grace period");
    assert!(!sock.exists() && !vsock.exists(), "sockets left behind");

    // SIGTERM: exit 128+15, sockets removed.
    let sock2 = dir.path().join("api2.sock");
    let console2 = dir.path().join("console2.log");
    let p = Proc::spawn(&mut vmm(
        &dir,
        script,
        &[
            "--serial",
            console2.to_str().unwrap(),
            "--api-sock",
            sock2.to_str().unwrap(),
        ],
    ));
    wait_for(&console2, "READY", VM_LIMIT);
    assert!(Command::new("kill")
        .args(["-TERM", &p.id().to_string()])
        .status()
        .unwrap()
        .success());
    let f = p.wait_timeout(VM_LIMIT);
    assert_exit(&f, 143, "stopped by signal 15");
    assert!(!sock2.exists(), "API socket left behind after SIGTERM");
}

#[test]
fn vsock_device_is_bound_by_the_guest_driver() {
    require_kvm();
    let dir = TempDir::new("hull-vmm-vsock");
    let uds = dir.path().join("v.sock");
    let f = Proc::spawn(&mut vmm(
        &dir,
        r#"d=/sys/bus/virtio/devices/virtio0
echo "VIRTIO device=$(cat $d/device) status=$(cat $d/status) driver=$(basename $(readlink $d/driver))"
reboot -f
"#,
        &["--vsock-uds", uds.to_str().unwrap(), "--vsock-cid", "7"],
    ))
    .wait_timeout(VM_LIMIT);
    assert_exit(&f, 0, "guest rebooted");
    // Device 19 (vsock), status ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK, bound to its driver.
    assert!(
        f.stdout
            .contains("VIRTIO device=0x0013 status=0x0000000f driver=vmw_vsock_virtio_transport"),
        "{}",
        f.stdout
    );
    assert!(!uds.exists(), "vsock socket left behind");
}
