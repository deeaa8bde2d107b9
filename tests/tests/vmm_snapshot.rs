//! hull-vmm's snapshot and restore, end to end: a template run boots the agent, is snapshotted
//! through the API and stops; VMs restored from it (new vsock sockets, new consoles) answer the
//! agent protocol without booting, see what the template's guest left in its memory, and run
//! processes side by side; a snapshot that is damaged or does not fit the VM is refused with
//! the reason, and nothing is left running.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{run, CALL_LIMIT};
use hull_agent_protocol::SpawnRequest;
use hull_runtime::agent::{AgentClient, Endpoint};
use hull_tests::vm::{self, expect_exit, VmConfig, VmmProcess};
use hull_tests::TempDir;

/// Generous: everything runs under software emulation inside the emulated KVM host.
const VM_LIMIT: Duration = Duration::from_secs(900);
const MEMORY_MIB: u64 = 256;

fn sh(script: &str) -> SpawnRequest {
    let mut r = SpawnRequest::new(["/bin/sh", "-c", script]);
    r.env = vec!["PATH=/bin:/sbin:/usr/bin:/usr/sbin".into()];
    r
}

/// The agent of `vm`, once it answers; fails at once if hull-vmm exits meanwhile.
async fn agent(uds: &Path, vm: &mut VmmProcess) -> AgentClient {
    let connect = AgentClient::connect_retry(Endpoint::vm(uds), VM_LIMIT);
    tokio::pin!(connect);
    let mut c = loop {
        tokio::select! {
            r = &mut connect => break r.unwrap_or_else(|e| panic!(
                "the agent did not answer: {e}\nconsole:\n{}\nlog:\n{}", vm.console(), vm.log()
            )),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if let Ok(Some(e)) = vm.try_wait() {
                    panic!("hull-vmm ended: {}\nlog:\n{}", e.exit, vm.log());
                }
            }
        }
    };
    c.set_call_timeout(CALL_LIMIT);
    c
}

/// The configuration every VM of this test shares; `name` gives each its own sockets.
fn config(initrd: &Path, dir: &Path, name: &str) -> VmConfig {
    let mut c = vm::config(initrd);
    c.memory_mib = MEMORY_MIB;
    c.cmdline = "console=ttyS0 hull.hostname=template hull.time=1900000000".into();
    c.vsock = Some(vm::VsockConfig {
        uds_path: dir.join(format!("{name}.sock")),
        guest_cid: 3,
    });
    c.api_socket = Some(dir.join(format!("{name}.api")));
    // A share of its own (the template's guest never mounts it; a restored one does).
    let share = dir.join(format!("{name}.share"));
    std::fs::create_dir_all(&share).unwrap();
    std::fs::write(share.join("who"), name).unwrap();
    c.fs = vec![vm::FsConfig::new("share", share)];
    c
}

#[test]
fn restored_vms_resume_the_template_and_bad_snapshots_are_refused() {
    let dir = TempDir::new("vmm-snapshot");
    let initrd = vm::agent_initrd_with_busybox(dir.path());
    let snap = dir.path().join("template");
    std::fs::create_dir(&snap).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // The template: boot, leave a mark in the guest's RAM (a tmpfs file), let go of the agent,
    // snapshot.
    let mut c = config(&initrd, dir.path(), "t");
    c.snapshot_to = Some(snap.clone());
    let tdir = dir.path().join("t");
    let mut t = vm::launch(&c, &tdir);
    let booted = Instant::now();
    rt.block_on(async {
        let a = agent(&dir.path().join("t.sock"), &mut t).await;
        let (status, _, err) = run(&a, sh("echo made-in-the-template > /run/mark")).await;
        assert_eq!(status.code(), Some(0), "{err}");
    });
    let boot_time = booted.elapsed();
    let r = hull_runtime::vmm::api_request_within(
        &dir.path().join("t.api"),
        r#"{"action":"snapshot"}"#,
        VM_LIMIT,
    )
    .unwrap();
    assert!(r.contains(r#""ok":true"#), "{r}\nlog:\n{}", t.log());
    expect_exit(&mut t, VM_LIMIT, 0, "snapshot written, VM stopped");
    let log = t.log();
    eprintln!("template booted to the agent in {boot_time:?}; {log}");
    let state = std::fs::metadata(snap.join("vmstate")).unwrap();
    let memory = std::fs::metadata(snap.join("memory")).unwrap();
    assert!(state.len() > 1000, "{}", state.len());
    assert_eq!(memory.len(), MEMORY_MIB << 20);
    assert!(
        memory.blocks() * 512 < (MEMORY_MIB << 20) / 2,
        "the memory file keeps zero pages as holes ({} KiB allocated)",
        memory.blocks() / 2
    );
    assert_eq!(state.mode() & 0o777, 0o600);
    // A second snapshot request cannot happen (the VM is gone) and the API socket is removed.
    assert!(!dir.path().join("t.api").exists());

    // Two VMs from the one template, side by side.
    let mut restored: Vec<_> = ["r1", "r2"]
        .iter()
        .map(|name| {
            let mut c = config(&initrd, dir.path(), name);
            c.restore_from = Some(snap.clone());
            (name.to_string(), vm::launch(&c, &dir.path().join(name)))
        })
        .collect();
    let started = Instant::now();
    let mut seen = Vec::new();
    rt.block_on(async {
        for (name, v) in restored.iter_mut() {
            let a = agent(&dir.path().join(format!("{name}.sock")), v).await;
            eprintln!(
                "{name}: the agent answered {:?} after launch",
                started.elapsed()
            );
            a.health().await.unwrap();
            // What the runtime does first with a restored guest: its own identity.
            let mut entropy = vec![0u8; 64];
            std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut entropy))
                .unwrap();
            a.set_identity(name, SystemTime::now(), entropy)
                .await
                .unwrap();
            // The share is this VM's: virtio-fs came back with the new directory.
            a.mount(hull_agent_protocol::MountRequest::virtiofs("share", "/mnt"))
                .await
                .unwrap();
            let (_, who, _) = run(&a, sh("cat /mnt/who")).await;
            assert_eq!(who, name.as_str());
            // The guest's timers fire (a TSC deadline restored before the LAPIC's timer mode
            // was dropped, and every sleep in the guest hung): the call's own limit bounds it.
            let (status, out, _) = run(&a, sh("sleep 1; echo slept")).await;
            assert_eq!((status.code(), out.as_str()), (Some(0), "slept\n"));
            let before = SystemTime::now();
            let (status, out, err) = run(
                &a,
                sh(&format!(
                    "cat /run/mark; hostname; echo {name} > /run/mine; cat /run/mine; \
                     cat /proc/uptime; cat /proc/sys/kernel/random/uuid; \
                     head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; date +%s"
                )),
            )
            .await;
            let after = SystemTime::now();
            assert_eq!(status.code(), Some(0), "{err}");
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines.len(), 7, "{out}");
            assert_eq!(
                lines[..3],
                ["made-in-the-template", name.as_str(), name.as_str()],
                "{out}"
            );
            // The guest's clock went on from the template's, it did not start again.
            let uptime: f64 = lines[3].split_whitespace().next().unwrap().parse().unwrap();
            assert!(uptime > 1.0, "uptime {uptime}: the guest booted again?");
            // Its wall clock is the host's, within a second.
            let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_secs();
            let guest: u64 = lines[6].parse().unwrap();
            assert!(
                (secs(before).saturating_sub(1)..=secs(after) + 1).contains(&guest),
                "guest clock {guest}, host {}..{}",
                secs(before),
                secs(after)
            );
            seen.push((lines[4].to_string(), lines[5].to_string()));
        }
    });
    // Two guests from one template draw different numbers once reseeded.
    assert_ne!(seen[0].0, seen[1].0, "the same random UUID in both VMs");
    assert_ne!(
        seen[0].1, seen[1].1,
        "the same /dev/urandom bytes in both VMs"
    );
    assert_eq!(seen[0].1.len(), 64, "{:?}", seen[0]);
    for (name, v) in &restored {
        let log = v.log();
        assert!(!log.contains("ERROR"), "{name}:\n{log}");
    }
    drop(restored);

    // Snapshots that must be refused, each with its reason, leaving nothing behind.
    let copy = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for f in ["vmstate", "memory"] {
            // cp keeps the memory file sparse.
            let ok = std::process::Command::new("cp")
                .arg("--sparse=always")
                .arg(snap.join(f))
                .arg(d.join(f))
                .status()
                .unwrap()
                .success();
            assert!(ok);
        }
        d
    };
    let flipped = copy("flipped");
    let mut bytes = std::fs::read(flipped.join("vmstate")).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(flipped.join("vmstate"), bytes).unwrap();
    let truncated_state = copy("truncated-state");
    let len = std::fs::metadata(truncated_state.join("vmstate"))
        .unwrap()
        .len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(truncated_state.join("vmstate"))
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let truncated_memory = copy("truncated-memory");
    std::fs::OpenOptions::new()
        .write(true)
        .open(truncated_memory.join("memory"))
        .unwrap()
        .set_len(4096)
        .unwrap();

    type Change = Box<dyn Fn(&mut VmConfig)>;
    let cases: Vec<(&str, PathBuf, Change, &str)> = vec![
        ("flip", flipped, Box::new(|_| {}), "checksum mismatch"),
        ("tstate", truncated_state, Box::new(|_| {}), "truncated"),
        (
            "tmem",
            truncated_memory,
            Box::new(|_| {}),
            "truncated or foreign",
        ),
        (
            "mem",
            snap.clone(),
            Box::new(|c| c.memory_mib = 2 * MEMORY_MIB),
            "256 MiB of memory in the snapshot, 512 configured",
        ),
        (
            "cpus",
            snap.clone(),
            Box::new(|c| c.vcpus = 2),
            "1 vCPUs in the snapshot, 2 configured",
        ),
        (
            "dev",
            snap.clone(),
            Box::new(|c| c.vsock = None),
            "2 virtio devices in the snapshot, 1 configured",
        ),
    ];
    for (name, from, change, reason) in cases {
        let mut c = config(&initrd, dir.path(), name);
        c.restore_from = Some(from);
        change(&mut c);
        let mut v = vm::launch(&c, &dir.path().join(name));
        expect_exit(&mut v, VM_LIMIT, 6, reason);
        for sock in [format!("{name}.sock"), format!("{name}.api")] {
            assert!(!dir.path().join(&sock).exists(), "{sock} left behind");
        }
    }
}
