//! Sandboxes (hull-runtime's `sandbox` module) with a real VM: create boots hull-vmm with the
//! agent initramfs and leaves it running on its own; a later handle reattaches from the state
//! on disk; destroy and cleanup leave no process, socket, mount or directory behind, also after
//! the VMM was killed with SIGKILL; a boot that fails leaves nothing either.

mod common;

use std::process::Command;
use std::time::Duration;

use common::run;
use hull_agent_protocol::SpawnRequest;
use hull_runtime::config::RuntimeConfig;
use hull_runtime::sandbox::{
    cleanup, process_start_time, AgentCalls, Sandbox, SandboxError, SandboxOptions, GUEST_SHARE_DIR,
};
use hull_tests::vm::{busybox_root, mounts_below, nonce};
use hull_tests::{require_kvm, TempDir};

/// Sandbox options whose agent serves every call: these tests drive the agent directly (a
/// process outside every container), as no front end does.
fn all_calls() -> SandboxOptions {
    SandboxOptions {
        agent_calls: AgentCalls::All,
        ..SandboxOptions::default()
    }
}

fn config() -> RuntimeConfig {
    hull_tests::vm::runtime_config()
}

/// `sh -c SCRIPT` chrooted into the busybox root the host put in the share.
fn sh_in_share(script: &str) -> SpawnRequest {
    let mut r = SpawnRequest::new(["/bin/sh", "-c", script]);
    r.env = vec!["PATH=/bin".into()];
    r.root = Some(format!("{GUEST_SHARE_DIR}/testroot"));
    r
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn create_run_reattach_destroy() {
    require_kvm();
    let dir = TempDir::new("hull-sandbox");
    let root = dir.path().join("root");
    let cfg = config();
    runtime().block_on(async {
        let sb = Sandbox::create(&cfg, &root, "sb1", &all_calls())
            .await
            .unwrap_or_else(|e| panic!("create: {e}"));
        let pid = sb.state().vmm_pid;
        for f in [
            "state.json",
            "vm.json",
            "api.sock",
            "vsock.sock",
            "console.log",
        ] {
            assert!(sb.dir().join(f).exists(), "{f} is missing");
        }
        // Private by default: what is in the sandbox (the agent's socket is a root shell in the
        // guest) is root's alone.
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(sb.dir()), 0o700);
            for f in [
                "state.json",
                "vm.json",
                "api.sock",
                "vsock.sock",
                "console.log",
                "vmm.log",
            ] {
                assert_eq!(mode(&sb.dir().join(f)), 0o600, "{f}");
            }
        }
        // The host puts a root file system in the share after boot; the guest runs in it.
        busybox_root(&sb.share_dir().join("testroot"), &["proc", "tmp", "sys"]);
        let marker = nonce();
        std::fs::write(sb.share_dir().join("testroot/marker"), &marker).unwrap();
        // Every virtio device took VIRTIO_RING_F_EVENT_IDX (bit 29 of what the guest shows):
        // vsock and both shares.
        let (status, out, err) = run(
            sb.agent().unwrap(),
            sh_in_share(
                "mount -t sysfs sys /sys && for d in /sys/bus/virtio/devices/*; do \
                 echo \"$(cat $d/device) $(cut -c30 $d/features)\"; done; \
                 for b in /sys/class/bdi/0:*; do echo \"fuse $(cat $b/read_ahead_kb)\"; done",
            ),
        )
        .await;
        assert_eq!(status.code(), Some(0), "stderr: {err}");
        let mut devices: Vec<&str> = out.lines().map(str::trim).collect();
        devices.sort();
        // The agent also set both shares' read-ahead to one FUSE request's most (a FUSE
        // mount's backing device is named after its anonymous device, 0:N; the guest has no
        // other): guest-agent/src/mounts.rs VIRTIOFS_READ_AHEAD_KB (the kernel's own is 128).
        assert_eq!(
            devices,
            ["0x0013 1", "0x001a 1", "0x001a 1", "fuse 1024", "fuse 1024"],
            "{out}"
        );
        let (status, out, err) = run(
            sb.agent().unwrap(),
            sh_in_share("uname -r; hostname; cat /marker"),
        )
        .await;
        assert_eq!(status.code(), Some(0), "stderr: {err}");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 3, "{out}");
        let host_release =
            String::from_utf8(Command::new("uname").arg("-r").output().unwrap().stdout).unwrap();
        assert_ne!(lines[0], host_release.trim(), "ran on the host's kernel?");
        assert_eq!(lines[1], "sb1", "the guest's hostname is the sandbox id");
        assert_eq!(lines[2], marker);

        // The id is taken while the sandbox exists; the failed create leaves it alone.
        let e = Sandbox::create(&cfg, &root, "sb1", &all_calls())
            .await
            .err()
            .expect("a second sb1");
        assert!(matches!(e, SandboxError::IdInUse(_)), "{e}");

        // The VMM outlives the handle; a new handle reattaches from the state on disk.
        drop(sb);
        assert!(
            process_start_time(pid).is_some(),
            "hull-vmm stopped with the handle"
        );
        let sb = Sandbox::load(&root, "sb1").await.unwrap();
        assert_eq!(sb.state().vmm_pid, pid);
        let (status, out, _) = run(sb.agent().unwrap(), sh_in_share("cat /marker")).await;
        assert_eq!((status.code(), out.as_str()), (Some(0), marker.as_str()));

        sb.destroy(Duration::from_secs(60)).await.unwrap();
        assert!(process_start_time(pid).is_none(), "hull-vmm still runs");
        assert!(!root.join("sb1").exists(), "the sandbox directory is left");
        assert!(matches!(
            Sandbox::load(&root, "sb1").await,
            Err(SandboxError::NotFound(_))
        ));
    });
}

#[test]
fn cleanup_after_the_vmm_was_killed_and_after_a_failed_boot() {
    require_kvm();
    let dir = TempDir::new("hull-sandbox-kill");
    let root = dir.path().join("root");
    let cfg = config();
    runtime().block_on(async {
        // A front end's sandbox: its agent serves only what a front end asks.
        let sb = Sandbox::create(&cfg, &root, "sb2", &SandboxOptions::default())
            .await
            .unwrap_or_else(|e| panic!("create: {e}"));
        let pid = sb.state().vmm_pid;
        let sb_dir = sb.dir().to_path_buf();
        // A process outside every container is not one (a leaked socket is no root shell).
        let e = sb
            .agent()
            .unwrap()
            .spawn(SpawnRequest::new(["/bin/true"]))
            .await
            .unwrap_err();
        assert_eq!(
            e.agent_kind(),
            Some(hull_agent_protocol::ErrorKind::NotAllowed),
            "{e}"
        );
        // A host mount inside the share (as a container's root file system will be).
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        let target = sb.share_dir().join("bound");
        std::fs::create_dir(&target).unwrap();
        // The share's own two mounts: the host's side and the guest's read-only view.
        assert_eq!(
            mounts_below(&sb_dir).len(),
            2,
            "{:?}",
            mounts_below(&sb_dir)
        );
        let st = Command::new("mount")
            .arg("--bind")
            .arg(&src)
            .arg(&target)
            .status()
            .unwrap();
        assert!(st.success(), "mount --bind");
        // The bind, and its copy in the guest's view.
        assert_eq!(
            mounts_below(&sb_dir).len(),
            4,
            "{:?}",
            mounts_below(&sb_dir)
        );
        drop(sb);

        // SIGKILL: no clean shutdown, sockets and state stay behind.
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        // Loading never depends on the guest: also while the killed VMM is still going away.
        let sb = Sandbox::load(&root, "sb2").await.unwrap();
        drop(sb);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while process_start_time(pid).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the killed hull-vmm never went away"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let sb = Sandbox::load(&root, "sb2").await.unwrap();
        assert!(!sb.vmm_running());
        assert!(sb.agent().is_err(), "no agent without a VM");
        drop(sb);
        cleanup(&root, "sb2").unwrap();
        assert!(!sb_dir.exists(), "the sandbox directory is left");
        assert!(mounts_below(&sb_dir).is_empty(), "a mount is left");
        assert!(process_start_time(pid).is_none());
        cleanup(&root, "sb2").expect("cleanup is idempotent");

        // A kernel hull-vmm refuses: the error says why, and nothing is left.
        let bad = dir.path().join("not-a-kernel");
        std::fs::write(&bad, "hello").unwrap();
        let cfg = RuntimeConfig {
            kernel: bad,
            ..config()
        };
        let e = Sandbox::create(&cfg, &root, "sb3", &SandboxOptions::default())
            .await
            .err()
            .expect("a text file does not boot");
        assert!(e.to_string().contains("not a kernel image"), "{e}");
        assert!(
            !root.join("sb3").exists(),
            "the failed sandbox's directory is left"
        );
    });
}

/// A runc default spec (`hull spec`) with a busybox rootfs in `dir`, running `args`, edited.
fn pod_bundle(dir: &std::path::Path, args: &[&str], edit: impl FnOnce(&mut serde_json::Value)) {
    std::fs::create_dir_all(dir).unwrap();
    let out = Command::new(hull_tests::bin("hull"))
        .args(["spec", "--bundle"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "hull spec: {:?}", out);
    busybox_root(
        &dir.join("rootfs"),
        &["proc", "sys", "dev", "tmp", "etc", "root", "share", "data"],
    );
    let path = dir.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(args);
    spec["root"]["readonly"] = serde_json::json!(false);
    edit(&mut spec);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

/// Every file below `dir` with its content, sorted.
fn tree(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if std::fs::symlink_metadata(&p).unwrap().is_dir() {
                todo.push(p.clone());
                out.push((p, Vec::new()));
            } else {
                let data = std::fs::read(&p).unwrap_or_default();
                out.push((p, data));
            }
        }
    }
    out.sort();
    out
}

/// The trust boundary in a pod: a privileged container (`a`) mounts the pod's share and, in a
/// loop that runs until it is killed, tries to plant links at every path the host will touch
/// for the next container (`b`, before it exists, while it lives and while it is deleted, and
/// again for a second `b`) and for itself (also while its own delete runs). Every attempt is
/// refused; a host tree the links point at is unchanged; the containers and the sandbox go
/// with nothing left.
#[test]
fn a_pod_container_cannot_plant_links_for_the_next_container() {
    use hull_runtime::container::{load_bundle, Container, CreateOptions};
    require_kvm();
    let dir = TempDir::new("hull-sandbox-pod");
    let root = dir.path().join("root");
    let victim = dir.path().join("victim");
    std::fs::create_dir_all(victim.join("sub")).unwrap();
    std::fs::write(victim.join("precious"), b"host data").unwrap();
    std::fs::write(victim.join("sub/more"), b"more host data").unwrap();
    let before = tree(&victim);
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let v = victim.display();
    let script = format!(
        r#"mount -t virtiofs hull-shared /share || {{ echo NO-MOUNT > /data/first; exit 1; }}
try() {{ if "$@" 2>/dev/null; then echo "ESCAPED: $*"; else echo "refused: $*"; fi; }}
round() {{
  for id in b a; do
    c=/share/containers/$id
    try ln -s {v} /share/containers/$id.new
    try mkdir /share/containers/$id
    try ln -s {v} $c/mounts.new
    try ln -s {v} $c/mounts/9
    try ln -s {v} /share/rootfs/$id@0000000000000000
    try ln -s {v}/precious $c/config.json.new
    try rm $c/config.json
    try mv $c/mounts $c/mounts.old
    try mkdir /share/rootfs/$id@1111111111111111
    try mv $c /share/moved-$id
  done
  try mv /share/containers /share/moved
  try ln -s {v} /share/containers.new
  try mv /share/rootfs /share/rootfs.old
  for r in /share/rootfs/*@*; do try mv $r $r.old; done
}}
round > /data/first
touch /data/planting
n=0
while :; do
  round | grep ESCAPED >> /data/escaped
  n=$((n+1)); echo $n > /data/rounds
done"#
    );
    let caps = serde_json::json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_ADMIN",
        "CAP_SYS_RESOURCE",
        "CAP_MKNOD",
        "CAP_SETFCAP",
    ]);
    let a_dir = dir.path().join("a");
    pod_bundle(&a_dir, &["sh", "-c", &script], |s| {
        s["process"]["capabilities"] =
            serde_json::json!({"bounding": caps, "effective": caps, "permitted": caps});
        s["linux"]["seccomp"] = serde_json::Value::Null;
        s["linux"]["maskedPaths"] = serde_json::json!([]);
        s["linux"]["readonlyPaths"] = serde_json::json!([]);
        s["mounts"].as_array_mut().unwrap().push(serde_json::json!(
            {"destination": "/data", "type": "bind", "source": volume, "options": ["rbind"]}
        ));
    });
    let b_dir = dir.path().join("b");
    pod_bundle(&b_dir, &["sleep", "1000"], |_| {});
    let cfg = config();
    runtime().block_on(async {
        let sb = Sandbox::create(&cfg, &root, "pod", &SandboxOptions::default())
            .await
            .unwrap_or_else(|e| panic!("create: {e}"));
        let sb_dir = sb.dir().to_path_buf();
        let a = Container::create(
            &sb,
            "a",
            &load_bundle(&a_dir).unwrap(),
            &CreateOptions::default(),
        )
        .await
        .unwrap_or_else(|e| panic!("create a: {e}"));
        a.start(&sb).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while !volume.join("planting").exists() {
            assert!(
                std::time::Instant::now() < deadline,
                "a never planted: {:?}",
                std::fs::read_to_string(volume.join("first"))
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let first = std::fs::read_to_string(volume.join("first")).unwrap();
        assert!(!first.contains("ESCAPED"), "{first}");
        // 10 per id, 3 for the share's directories, 1 for `a`'s own root file system.
        assert_eq!(first.matches("refused:").count(), 24, "{first}");
        let rounds = || {
            std::fs::read_to_string(volume.join("rounds"))
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        // Until `a` has planted through `n` more whole rounds (a round starts a few dozen
        // programs: seconds under emulation).
        let rounds_past = |from: u64, n: u64, what: &str| {
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while rounds() < from + n {
                assert!(
                    std::time::Instant::now() < deadline,
                    "a stopped planting ({what}): {} rounds",
                    rounds()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        // The next container's id, twice, while `a` keeps planting: before it exists, while it
        // lives and while it is deleted.
        for _ in 0..2 {
            let b = Container::create(
                &sb,
                "b",
                &load_bundle(&b_dir).unwrap(),
                &CreateOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("create b: {e}"));
            b.start(&sb).await.unwrap();
            rounds_past(rounds(), 2, "while b lived");
            b.delete(&sb, true)
                .await
                .unwrap_or_else(|e| panic!("delete b: {e}"));
            rounds_past(rounds(), 1, "after b's delete");
        }
        a.delete(&sb, true)
            .await
            .unwrap_or_else(|e| panic!("delete a: {e}"));
        let escaped = std::fs::read_to_string(volume.join("escaped")).unwrap_or_default();
        assert!(escaped.is_empty(), "{escaped}");
        eprintln!("a planted for {} rounds", rounds());
        assert_eq!(tree(&victim), before, "the host tree changed");
        sb.destroy(Duration::from_secs(60)).await.unwrap();
        assert!(!sb_dir.exists(), "the sandbox directory is left");
        assert!(mounts_below(&sb_dir).is_empty(), "a mount is left");
        assert!(mounts_below(&root).is_empty(), "a mount is left");
        assert_eq!(tree(&victim), before, "the host tree changed");
    });
}

/// A creator killed after hull-vmm's start and before its pid reached `state.json`: the state
/// file is missing (removed here to stand for that moment). The cleanup finds the VM in the
/// cgroup recorded before the start, kills it, and leaves nothing: no VM, cgroup or directory.
#[test]
fn a_vm_not_yet_on_record_is_found_by_its_cgroup() {
    require_kvm();
    let dir = TempDir::new("hull-sandbox-norecord");
    let root = dir.path().join("root");
    let cfg = config();
    runtime().block_on(async {
        let sb = Sandbox::create(&cfg, &root, "sb4", &SandboxOptions::default())
            .await
            .unwrap_or_else(|e| panic!("create: {e}"));
        let pid = sb.state().vmm_pid;
        let cgroup = sb
            .state()
            .host_cgroup
            .clone()
            .expect("a cgroup v2 host gives hull-vmm a cgroup");
        let sb_dir = sb.dir().to_path_buf();
        drop(sb);
        std::fs::remove_file(sb_dir.join("state.json")).unwrap();
        cleanup(&root, "sb4").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while process_start_time(pid).is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "hull-vmm {pid} survived the cleanup"
            );
            // SAFETY: waitpid(WNOHANG) with a null status pointer only collects an exit.
            unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!sb_dir.exists(), "the sandbox directory is left");
        assert!(!cgroup.exists(), "{} is left", cgroup.display());
        assert!(mounts_below(&sb_dir).is_empty(), "a mount is left");
    });
}

/// Whether the sandbox's VM was restored from a template (its hull-vmm configuration says).
fn restored(sb: &Sandbox) -> bool {
    let vm: serde_json::Value =
        serde_json::from_slice(&std::fs::read(sb.dir().join("vm.json")).unwrap()).unwrap();
    vm.get("restore_from").is_some()
}

#[test]
fn sandboxes_start_from_one_template_made_once_and_a_bad_one_is_booted_past() {
    require_kvm();
    let dir = TempDir::new("hull-templates");
    let root = dir.path().join("root");
    let cfg = RuntimeConfig {
        template_dir: dir.path().join("templates"),
        start: hull_runtime::config::StartPath::Snapshot,
        ..config()
    };
    let uuid = "mount -t proc proc /proc; cat /proc/sys/kernel/random/uuid; hostname";
    let t0 = std::time::Instant::now();
    let phase = |what: &str| eprintln!("{:>7.1} s: {what}", t0.elapsed().as_secs_f64());
    runtime().block_on(async {
        let _ = tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .try_init();
        // Three sandboxes at once, none with a template yet: one is made, all three use it.
        let opts = all_calls();
        let (a, b, c) = tokio::join!(
            Sandbox::create(&cfg, &root, "t1", &opts),
            Sandbox::create(&cfg, &root, "t2", &opts),
            Sandbox::create(&cfg, &root, "t3", &opts),
        );
        let sbs: Vec<Sandbox> = [a, b, c]
            .into_iter()
            .map(|r| r.unwrap_or_else(|e| panic!("create: {e}")))
            .collect();
        phase("three sandboxes created");
        let templates = hull_runtime::template::list(&cfg).unwrap();
        assert_eq!(templates.len(), 1, "{templates:?}");
        assert!(templates[0].1, "the template fits the current files");
        let mut seen = Vec::new();
        for sb in &sbs {
            assert!(restored(sb), "{} booted", sb.id());
            busybox_root(&sb.share_dir().join("testroot"), &["proc", "tmp"]);
            let (status, out, err) = run(sb.agent().unwrap(), sh_in_share(uuid)).await;
            assert_eq!(status.code(), Some(0), "{err}");
            let lines: Vec<&str> = out.lines().collect();
            assert_eq!(lines[1], sb.id(), "the hostname is the sandbox's");
            seen.push(lines[0].to_string());
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3, "random UUIDs repeat across sandboxes");
        phase("three sandboxes ran a process");
        for sb in sbs {
            sb.destroy(Duration::from_secs(60)).await.unwrap();
            phase("a sandbox destroyed");
        }

        // A damaged template: the next sandbox boots (with a log line), the template goes,
        // and the one after makes it again.
        let t = &templates[0].0;
        let state = t.snapshot_dir().join("vmstate");
        let mut bytes = std::fs::read(&state).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        std::fs::write(&state, bytes).unwrap();
        let sb = Sandbox::create(&cfg, &root, "t4", &all_calls())
            .await
            .unwrap_or_else(|e| panic!("create past a damaged template: {e}"));
        assert!(!restored(&sb), "restored from a damaged template");
        assert!(!t.dir.exists(), "the damaged template is still there");
        sb.destroy(Duration::from_secs(60)).await.unwrap();
        let sb = Sandbox::create(&cfg, &root, "t5", &all_calls())
            .await
            .unwrap();
        assert!(restored(&sb));
        assert!(t.dir.exists(), "the template was made again");
        sb.destroy(Duration::from_secs(60)).await.unwrap();

        // start = "boot": no template is used.
        let boot = RuntimeConfig {
            start: hull_runtime::config::StartPath::Boot,
            ..cfg.clone()
        };
        let sb = Sandbox::create(&boot, &root, "t6", &all_calls())
            .await
            .unwrap();
        assert!(!restored(&sb));
        busybox_root(&sb.share_dir().join("testroot"), &["proc", "tmp"]);
        let (status, out, _) = run(sb.agent().unwrap(), sh_in_share(uuid)).await;
        assert_eq!(status.code(), Some(0));
        assert!(out.ends_with("t6\n"), "{out}");
        sb.destroy(Duration::from_secs(60)).await.unwrap();

        // A new hull-vmm (a copy, then the copy rebuilt): each makes its template, and the
        // second one's build removes the template of the copy it replaced (stale: nothing
        // would use it again); the template of the files that did not change stays.
        let vmm = dir.path().join("hull-vmm");
        std::fs::copy(&cfg.vmm, &vmm).unwrap();
        let new_vmm = RuntimeConfig {
            vmm: vmm.clone(),
            ..cfg.clone()
        };
        let sb = Sandbox::create(&new_vmm, &root, "t7", &all_calls())
            .await
            .unwrap();
        assert!(restored(&sb));
        sb.destroy(Duration::from_secs(60)).await.unwrap();
        let before = hull_runtime::template::list(&cfg).unwrap();
        assert_eq!(before.len(), 2, "{before:?}");
        std::fs::remove_file(&vmm).unwrap();
        std::fs::copy(&cfg.vmm, &vmm).unwrap();
        let sb = Sandbox::create(&new_vmm, &root, "t8", &all_calls())
            .await
            .unwrap();
        assert!(restored(&sb));
        sb.destroy(Duration::from_secs(60)).await.unwrap();
        let after = hull_runtime::template::list(&cfg).unwrap();
        assert_eq!(after.len(), 2, "{after:?}");
        assert!(after.iter().all(|(_, fits)| *fits), "{after:?}");
        assert!(after
            .iter()
            .any(|(t, _)| t.dir == before[0].0.dir || t.dir == before[1].0.dir));
        assert!(
            before.iter().any(|(t, _)| !t.dir.exists()),
            "the replaced copy's template is still there"
        );
    });
    // Nothing of the template builds is left: no temporary directory, no network namespace.
    let left: Vec<_> = std::fs::read_dir(dir.path().join("templates"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
