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
    r.root = Some(format!("{GUEST_SHARE_DIR}/rootfs"));
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
        busybox_root(&sb.share_dir().join("rootfs"), &["proc", "tmp"]);
        let marker = nonce();
        std::fs::write(sb.share_dir().join("rootfs/marker"), &marker).unwrap();
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
