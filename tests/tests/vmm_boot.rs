//! hull-vmm boots the guest kernel (`build/vmlinux`) with a test initramfs and behaves as the
//! runtime needs: serial console output, SMP, exit statuses that tell a reboot from a panic, the
//! control API (pause, resume, stats, shutdown), socket clean-up, and virtio-mmio devices the
//! guest's drivers bind to.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hull_tests::vm::{self, expect_exit, nonce, wait_for, VmConfig, VmmProcess};
use hull_tests::{Initramfs, TempDir};

/// Generous limit for one VM's life inside the emulated host (software emulation is slow).
const VM_LIMIT: Duration = Duration::from_secs(180);

/// An initramfs whose /init is `script` (after mounting proc and sysfs).
fn initrd(dir: &Path, script: &str) -> PathBuf {
    let path = dir.join("initrd.cpio");
    Initramfs::new()
        .init_script(&format!(
            "mount -t proc proc /proc\nmount -t sysfs sys /sys\n{script}"
        ))
        .build(&path);
    path
}

/// Launches hull-vmm in `dir` with an init running `script`; `set` adjusts the configuration.
fn boot(dir: &Path, script: &str, set: impl FnOnce(&mut VmConfig)) -> VmmProcess {
    std::fs::create_dir_all(dir).unwrap();
    let mut c = vm::config(&initrd(dir, script));
    set(&mut c);
    vm::launch(&c, dir)
}

/// Waits until the console shows `needle`.
fn wait_console(v: &VmmProcess, needle: &str) -> String {
    wait_for("the console", || v.console(), needle, VM_LIMIT)
}

fn api(v: &VmmProcess, request: &str) -> String {
    v.api_raw(request).expect("an API response")
}

fn count(text: &str, prefix: &str) -> usize {
    text.lines().filter(|l| l.starts_with(prefix)).count()
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
    let dir = TempDir::new("hull-vmm-boot");
    let n = nonce();
    let start = Instant::now();
    let mut v = boot(
        dir.path(),
        r#"n=$(sed -n 's/.*hull.nonce=\([0-9a-f]*\).*/\1/p' /proc/cmdline)
echo "USERSPACE nonce=$n kernel=$(uname -r)"
echo REBOOTING
reboot -f
"#,
        |c| c.cmdline = format!("console=ttyS0 hull.nonce={n}"),
    );
    wait_console(&v, "USERSPACE nonce=");
    let boot = start.elapsed();
    wait_console(&v, "REBOOTING");
    let marker = Instant::now();
    let text = expect_exit(&mut v, VM_LIMIT, 0, "guest rebooted");
    let reboot = marker.elapsed();
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
    let dir = TempDir::new("hull-vmm-stdout");
    let mut v = boot(dir.path(), "echo HELLO-FROM-GUEST\nreboot -f\n", |_| {});
    let stdout = expect_exit(&mut v, VM_LIMIT, 0, "guest rebooted");
    assert!(stdout.contains("HELLO-FROM-GUEST"), "{stdout}");
}

#[test]
fn linux_64bit_boot_protocol_fallback() {
    let dir = TempDir::new("hull-vmm-linux64");
    let mut v = boot(
        dir.path(),
        "echo \"LINUX64 cpus=$(grep -c ^processor /proc/cpuinfo) mem=$(grep MemTotal /proc/meminfo)\"\nreboot -f\n",
        |c| {
            c.boot_protocol = vm::BootProtocolConfig::Linux;
            c.vcpus = 2;
            c.cmdline = "console=ttyS0".into();
        },
    );
    let stdout = expect_exit(&mut v, VM_LIMIT, 0, "guest rebooted");
    assert!(stdout.contains("LINUX64 cpus=2 mem=MemTotal:"), "{stdout}");
    assert!(stdout.contains("Freeing initrd memory"), "{stdout}");
}

#[test]
fn two_vcpus_are_online() {
    let dir = TempDir::new("hull-vmm-smp");
    let mut v = boot(
        dir.path(),
        r#"echo "ONLINE=$(cat /sys/devices/system/cpu/online) NPROC=$(grep -c ^processor /proc/cpuinfo)"
reboot -f
"#,
        |c| {
            c.vcpus = 2;
            c.memory_backing = vm::MemoryBacking::Memfd;
        },
    );
    let stdout = expect_exit(&mut v, VM_LIMIT, 0, "guest rebooted");
    assert!(stdout.contains("ONLINE=0-1 NPROC=2"), "{stdout}");
}

#[test]
fn guest_panic_exits_nonzero_with_the_reason() {
    let dir = TempDir::new("hull-vmm-panic");
    let mut v = boot(dir.path(), "echo ABOUT-TO-EXIT\nexit 3\n", |_| {});
    let stdout = expect_exit(
        &mut v,
        VM_LIMIT,
        2,
        "guest kernel panic: reported by the guest kernel through pvpanic",
    );
    let log = v.log();
    assert_eq!(
        log.lines().filter(|l| l.contains("hull-vmm: ")).count(),
        1,
        "{log}"
    );
    assert!(stdout.contains("ABOUT-TO-EXIT"));
    // The reason is in the console, where the kernel printed it before reporting the panic.
    assert!(
        stdout.contains("Kernel panic - not syncing: Attempted to kill init!"),
        "{stdout}"
    );
}

#[test]
fn console_text_cannot_forge_a_panic() {
    // A guest process prints the kernel's panic line, then the guest reboots: that is a reboot
    // (exit 0), because only the guest kernel's pvpanic report means a panic. The guest kernel
    // found the pvpanic device (capability: PANICKED | CRASH_LOADED).
    let dir = TempDir::new("hull-vmm-forged-panic");
    let mut v = boot(
        dir.path(),
        r#"mount -t sysfs sysfs /sys
echo "PVPANIC-CAPABILITY=$(cat /sys/bus/platform/devices/pvpanic-mmio/capability)"
echo "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000000"
reboot -f
"#,
        |_| {},
    );
    let stdout = expect_exit(&mut v, VM_LIMIT, 0, "guest rebooted");
    assert!(stdout.contains("PVPANIC-CAPABILITY=3"), "{stdout}");
    assert!(stdout.contains("Kernel panic - not syncing"), "{stdout}");
}

#[test]
fn api_pause_resume_stats_shutdown() {
    let dir = TempDir::new("hull-vmm-api");
    let sock = dir.path().join("api.sock");
    let mut v = boot(
        dir.path(),
        "i=0\nwhile true; do echo \"tick $i\"; i=$((i+1)); sleep 0.1; done\n",
        |c| c.api_socket = Some(sock.clone()),
    );
    wait_console(&v, "tick 3\n");

    let r = api(&v, r#"{"action":"pause"}"#);
    assert_eq!(r.trim(), r#"{"ok":true,"state":"paused"}"#);
    // No progress while paused, shown by events rather than a sleep: the guest prints a tick
    // every 0.1 s when it runs; let the VMM's own clock (its stats) pass 30 tick periods while
    // the host keeps asking, and compare the guest's output and the VM's I/O exits before and
    // after. A running vCPU would have printed ~30 lines and made ~30 x 8 port writes.
    let stats = |v: &VmmProcess| v.api(&vm::ApiRequest::Stats {}).unwrap().stats.unwrap();
    let before = count(&v.console(), "tick ");
    let first = stats(&v);
    let mut last = stats(&v);
    let mut requests = 1;
    while last.uptime_ms < first.uptime_ms + 3_000 {
        std::thread::sleep(Duration::from_millis(100));
        last = stats(&v);
        requests += 1;
    }
    let after = count(&v.console(), "tick ");
    assert_eq!(before, after, "the guest made progress while paused");
    assert_eq!(
        first.exits, last.exits,
        "VM exits happened while paused ({requests} stats requests in between)"
    );

    let stats = api(&v, r#"{"action":"stats"}"#);
    assert!(stats.contains(r#""ok":true"#), "{stats}");
    assert!(stats.contains(r#""vcpus":1"#), "{stats}");
    assert!(stats.contains(r#""memory_mib":256"#), "{stats}");
    assert!(stats.contains(r#""state":"paused""#), "{stats}");
    assert!(stats.contains(r#""io_out":"#), "{stats}");
    // The same response through the typed client.
    let typed = v.api(&vm::ApiRequest::Stats {}).unwrap();
    assert_eq!(typed.stats.map(|s| s.state), Some(vm::RunState::Paused));
    eprintln!(
        "measured: hull-vmm RSS without guest memory: {} KiB; stats: {}",
        vmm_rss_kib(v.pid(), 256 << 20),
        stats.trim()
    );

    let bad = api(&v, r#"{"action":"fly"}"#);
    assert!(
        bad.starts_with(r#"{"ok":false,"error":"invalid request"#),
        "{bad}"
    );

    let r = api(&v, r#"{"action":"resume"}"#);
    assert_eq!(r.trim(), r#"{"ok":true,"state":"running"}"#);
    wait_console(&v, &format!("tick {}\n", after + 2));

    let r = api(&v, r#"{"action":"shutdown","timeout_ms":60000}"#);
    assert!(r.starts_with(r#"{"ok":true"#), "{r}");
    expect_exit(&mut v, VM_LIMIT, 0, "shut down on API request");
    assert!(!v.log().contains("grace period"), "{}", v.log());
    assert!(!sock.exists(), "the API socket was left behind");
}

#[test]
fn api_shutdown_forced_after_grace_period_and_sigterm_cleanup() {
    let dir = TempDir::new("hull-vmm-force");
    let sock = dir.path().join("api.sock");
    let vsock = dir.path().join("vsock.sock");
    // The guest turns the kernel's Ctrl-Alt-Del restart into SIGINT for PID 1, which ignores it:
    // it ignores the shutdown request.
    let script = "trap '' INT\necho 0 > /proc/sys/kernel/ctrl-alt-del\necho READY\nwhile true; do sleep 1; done\n";
    let mut v = boot(&dir.path().join("vm1"), script, |c| {
        c.api_socket = Some(sock.clone());
        c.vsock = Some(vm::VsockConfig {
            uds_path: vsock.clone(),
            guest_cid: 3,
        });
    });
    wait_console(&v, "READY");
    assert!(vsock.exists() && sock.exists());
    let r = api(&v, r#"{"action":"shutdown","timeout_ms":2000}"#);
    assert!(r.starts_with(r#"{"ok":true"#), "{r}");
    expect_exit(
        &mut v,
        VM_LIMIT,
        0,
        "the guest did not stop within the grace period",
    );
    assert!(!sock.exists() && !vsock.exists(), "sockets left behind");

    // SIGTERM: exit 128+15, sockets removed.
    let sock2 = dir.path().join("api2.sock");
    let mut v = boot(&dir.path().join("vm2"), script, |c| {
        c.api_socket = Some(sock2.clone())
    });
    wait_console(&v, "READY");
    assert!(Command::new("kill")
        .args(["-TERM", &v.pid().to_string()])
        .status()
        .unwrap()
        .success());
    expect_exit(&mut v, VM_LIMIT, 143, "stopped by signal 15");
    assert!(!sock2.exists(), "API socket left behind after SIGTERM");
}

#[test]
fn vsock_device_is_bound_by_the_guest_driver() {
    let dir = TempDir::new("hull-vmm-vsock");
    let uds = dir.path().join("v.sock");
    let mut v = boot(
        dir.path(),
        r#"d=/sys/bus/virtio/devices/virtio0
echo "VIRTIO device=$(cat $d/device) status=$(cat $d/status) driver=$(basename $(readlink $d/driver))"
reboot -f
"#,
        |c| {
            c.vsock = Some(vm::VsockConfig {
                uds_path: uds.clone(),
                guest_cid: 7,
            })
        },
    );
    let stdout = expect_exit(&mut v, VM_LIMIT, 0, "guest rebooted");
    // Device 19 (vsock), status ACKNOWLEDGE|DRIVER|FEATURES_OK|DRIVER_OK, bound to its driver.
    assert!(
        stdout.contains("VIRTIO device=0x0013 status=0x0000000f driver=vmw_vsock_virtio_transport"),
        "{stdout}"
    );
    assert!(!uds.exists(), "vsock socket left behind");
}

#[test]
fn a_serial_file_is_capped_and_keeps_the_newest_output() {
    let dir = TempDir::new("hull-vmm-serial-cap");
    let console = dir.path().join("console.log");
    let mut v = boot(
        dir.path(),
        "i=0\nwhile [ $i -lt 300 ]; do echo \"line $i\"; i=$((i+1)); done\necho LAST-LINE\nreboot -f\n",
        |c| {
            c.serial = vm::SerialConfig::File(console.clone());
            c.serial_max_bytes = 1024;
        },
    );
    let text = expect_exit(&mut v, VM_LIMIT, 0, "guest rebooted");
    let size = std::fs::metadata(&console).unwrap().len();
    assert!(
        size <= 1024,
        "the console file has {size} bytes, over its 1024-byte cap"
    );
    assert!(
        text.contains("line 299\nLAST-LINE"),
        "the newest output is kept:\n{text}"
    );
    assert!(
        !text.contains("line 0\n"),
        "the oldest output is gone:\n{text}"
    );
}

/// hull-vmm confines itself before the guest runs (docs/security.md): every thread under its
/// seccomp filter, capabilities only in the virtio-fs workers, its own mount, IPC and UTS
/// namespaces with a root that holds no host file. A system call outside the event loop's
/// allowlist (the `seccomp_probe` test hook) stops it with exit status 5, the call named in
/// its log, and a launcher reads that status as a seccomp stop.
#[test]
fn the_vmm_is_jailed_and_a_call_outside_its_allowlist_stops_it() {
    let dir = TempDir::new("hull-vmm-jail");
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    let sock = dir.path().join("api.sock");
    let vsock = dir.path().join("vsock.sock");
    let mut v = boot(
        &dir.path().join("vm"),
        "echo READY\nwhile true; do sleep 1; done\n",
        |c| {
            c.api_socket = Some(sock.clone());
            c.vsock = Some(vm::VsockConfig {
                uds_path: vsock.clone(),
                guest_cid: 3,
            });
            c.fs = vec![vm::FsConfig::new("jailtest", share.clone())];
            c.test_hooks = true;
        },
    );
    wait_console(&v, "READY");
    let report = hull_tests::jail::assert_jailed(v.pid() as i32);
    eprintln!("{report}");
    // The API still answers from inside the jail.
    let r = api(&v, r#"{"action":"stats"}"#);
    assert!(r.starts_with(r#"{"ok":true"#), "{r}");

    let _ = v.api_raw(r#"{"action":"seccomp_probe"}"#);
    let e = vm::wait_exit(&mut v, VM_LIMIT);
    let log = v.log();
    assert_eq!(e.status.code(), Some(5), "{}; log:\n{log}", e.exit);
    assert_eq!(e.exit, vm::VmmExit::Seccomp, "{log}");
    assert!(
        e.exit.to_string().contains("seccomp allowlist"),
        "{}",
        e.exit
    );
    assert!(
        log.contains(&format!(
            "system call {} is outside the allowlist of a vmm thread",
            libc::SYS_syslog
        )),
        "{log}"
    );
}

/// Without `test_hooks`, the probe is refused and the VM goes on.
#[test]
fn the_seccomp_probe_is_refused_without_test_hooks() {
    let dir = TempDir::new("hull-vmm-nohooks");
    let sock = dir.path().join("api.sock");
    let mut v = boot(
        &dir.path().join("vm"),
        "echo READY\nwhile true; do sleep 1; done\n",
        |c| c.api_socket = Some(sock.clone()),
    );
    wait_console(&v, "READY");
    let r = api(&v, r#"{"action":"seccomp_probe"}"#);
    assert!(
        r.contains("test hook this VM was not configured with"),
        "{r}"
    );
    let r = api(&v, r#"{"action":"shutdown","timeout_ms":1000}"#);
    assert!(r.starts_with(r#"{"ok":true"#), "{r}");
    vm::wait_exit(&mut v, VM_LIMIT);
}
