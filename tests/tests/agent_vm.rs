//! hull-agent as PID 1: hull-vmm boots the guest kernel with the agent initramfs
//! (build/hull-initrd.img), and hull-runtime's client drives it through the hybrid vsock socket.
//!
//! The agent initramfs holds only /init. For processes to run, a second archive with busybox is
//! appended (the kernel unpacks concatenated archives in order); the agent's own /init stays.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{run, CALL_LIMIT};
use hull_agent_protocol::{AgentMode, ExitStatus, SpawnRequest, StdStream, StdioSpec};
use hull_runtime::agent::{AgentClient, Endpoint};
use hull_tests::vm::{self, VmmProcess};
use hull_tests::TempDir;
use tokio::io::AsyncReadExt;

/// Generous: everything runs under software emulation inside the emulated KVM host.
const VM_LIMIT: Duration = Duration::from_secs(900);

struct Vm {
    vmm: VmmProcess,
    uds: PathBuf,
    _dir: TempDir,
}

fn boot(tag: &str) -> Vm {
    let dir = TempDir::new(tag);
    let mut c = vm::config(&vm::agent_initrd_with_busybox(dir.path()));
    c.cmdline = "console=ttyS0 hull.hostname=agent-vm hull.time=1900000000".into();
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
}

fn sh(script: &str) -> SpawnRequest {
    let mut r = SpawnRequest::new(["/bin/sh", "-c", script]);
    r.env = vec!["PATH=/bin:/sbin:/usr/bin:/usr/sbin".into()];
    r
}

async fn drive(vm: &Vm) {
    let start = Instant::now();
    let mut c = AgentClient::connect_retry(Endpoint::vm(&vm.uds), VM_LIMIT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "agent did not come up: {e}\nconsole:\n{}",
                vm.console_text()
            )
        });
    c.set_call_timeout(CALL_LIMIT);
    eprintln!(
        "agent answered {:.1} s after hull-vmm started",
        start.elapsed().as_secs_f64()
    );

    // version / health
    let v = c.version().await.unwrap();
    assert_eq!(v.mode, AgentMode::Guest);
    assert_eq!(v.protocol, hull_agent_protocol::PROTOCOL_VERSION);
    c.health().await.unwrap();

    // A process streams its output and exit code back.
    let (status, out, err) =
        run(&c, sh("echo hello from $(hostname); echo oops >&2; exit 7")).await;
    assert_eq!(status, ExitStatus::Exited { code: 7 });
    assert_eq!(out, "hello from agent-vm\n");
    assert_eq!(err, "oops\n");

    // PID 1 duties: the agent is PID 1, and the file systems are mounted.
    let (status, out, _) = run(&c, sh("cat /proc/1/comm; cat /proc/mounts")).await;
    assert_eq!(status.code(), Some(0));
    assert!(out.starts_with("init\n"), "{out}");
    for (dir, fs) in [
        ("/proc", "proc"),
        ("/sys", "sysfs"),
        ("/dev", "devtmpfs"),
        ("/dev/pts", "devpts"),
        ("/dev/shm", "tmpfs"),
        ("/run", "tmpfs"),
        ("/sys/fs/cgroup", "cgroup2"),
    ] {
        assert!(
            out.lines().any(|l| l.split_whitespace().nth(1) == Some(dir)
                && l.split_whitespace().nth(2) == Some(fs)),
            "{fs} on {dir} missing from /proc/mounts:\n{out}"
        );
    }

    // Exec failures.
    let (status, _, err) = run(&c, SpawnRequest::new(["/no/such/program"])).await;
    assert_eq!(status.code(), Some(127));
    assert!(err.contains("No such file or directory"), "{err}");

    // A terminal of the requested size.
    let mut req = sh("stty size");
    req.stdio = StdioSpec::Terminal { rows: 30, cols: 90 };
    let (status, out, _) = run(&c, req).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(out.trim(), "30 90");

    // The clock: set from the command line at boot, then by the set_time call.
    let (_, out, _) = run(&c, sh("date +%s")).await;
    let boot_time: u64 = out.trim().parse().unwrap();
    assert!(
        (1_900_000_000..1_900_000_000 + 900).contains(&boot_time),
        "{boot_time}"
    );
    c.set_time(std::time::UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        .await
        .unwrap();
    let (_, out, _) = run(&c, sh("date +%s")).await;
    let now: u64 = out.trim().parse().unwrap();
    assert!((2_000_000_000..2_000_000_000 + 600).contains(&now), "{now}");

    // Orphans are reaped by PID 1.
    let (_, out, _) = run(&c, sh("sleep 0.5 & echo $!")).await;
    let orphan = out.trim();
    let (status, _, _) = run(
        &c,
        sh(&format!(
            "for i in $(seq 300); do [ -e /proc/{orphan} ] || exit 0; sleep 0.1; done; \
             cat /proc/{orphan}/status; exit 1"
        )),
    )
    .await;
    assert_eq!(status.code(), Some(0), "orphan {orphan} was not reaped");

    // Stats.
    let s = c.stats().await.unwrap();
    assert!(s.memory.total_bytes > 100 << 20 && s.memory.total_bytes <= 256 << 20);
    assert_eq!(s.cpu.online_cpus, 1);

    // 8 MiB of output through vsock, every byte.
    const LEN: usize = 8 << 20;
    let p = c
        .spawn(sh(&format!("yes 0123456789abcde | head -c {LEN}")))
        .await
        .unwrap();
    let mut stdout = c.open_stream(p.process, StdStream::Stdout).await.unwrap();
    let t = Instant::now();
    let mut data = Vec::new();
    tokio::time::timeout(CALL_LIMIT, stdout.read_to_end(&mut data))
        .await
        .expect("output arrives")
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(c.wait(p.process).await.unwrap().code(), Some(0));
    assert_eq!(data.len(), LEN);
    assert!(data
        .chunks(16)
        .all(|ch| ch == &b"0123456789abcde\n"[..ch.len()]));
    eprintln!(
        "8 MiB stdout through vsock: {secs:.2} s ({:.1} MiB/s, emulated host)",
        8.0 / secs
    );

    // The agent's log reaches the host.
    let mut log = c.open_log().await.unwrap();
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&text).contains("listening on") {
        let n = tokio::time::timeout(CALL_LIMIT, log.read(&mut buf))
            .await
            .expect("log lines")
            .unwrap();
        assert!(n > 0);
        text.extend_from_slice(&buf[..n]);
    }

    // Shutdown with a process still running: the VM powers off.
    c.spawn(sh("sleep 1000")).await.unwrap();
    c.shutdown(Some(Duration::from_millis(500))).await.unwrap();
}

#[test]
fn agent_pid1_serves_the_host_and_powers_off() {
    let mut vm = boot("hull-agent-vm");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(drive(&vm));
    let console = vm::expect_exit(&mut vm.vmm, VM_LIMIT, 0, "hull-vmm: ");
    assert!(console.contains("rebooting to end the VM"), "{console}");
    assert!(
        !vm.uds.exists(),
        "hull-vmm left {} behind",
        vm.uds.display()
    );
}
