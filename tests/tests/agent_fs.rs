//! The agent mounts virtio-fs shares where the runtime asks and runs processes chrooted into
//! them: hull-vmm boots the agent initramfs (nothing but /init) with a busybox root file system
//! built on the host shared as `--fs rootfs=DIR,cache=never`, and hull-runtime's client drives
//! the agent: mount, spawn with `root`, data both ways, read-only shares, unmount, shutdown.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{run, CALL_LIMIT};
use hull_agent_protocol::{ErrorKind, MountRequest, SpawnRequest, StdStream};
use hull_runtime::agent::{AgentClient, Endpoint, Error};
use hull_tests::vm::{self, agent_initrd, busybox_root, sha256 as sha256_of};
use hull_tests::{pattern, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous: everything runs under software emulation inside the emulated KVM host.
const VM_LIMIT: Duration = Duration::from_secs(900);
const ROOT: &str = "/run/rootfs";
/// What the busybox roots hold besides /bin.
const ROOT_DIRS: &[&str] = &["etc", "tmp", "dev", "proc", "data"];

/// `busybox sh -c SCRIPT` chrooted into `root`.
fn sh_in(root: &str, script: &str) -> SpawnRequest {
    let mut r = SpawnRequest::new(["/bin/busybox", "sh", "-c", script]);
    r.env = vec!["PATH=/bin".into()];
    r.root = Some(root.into());
    r
}

struct Shares {
    rootfs: PathBuf,
    ro: PathBuf,
}

async fn drive(uds: &Path, console: &Path, shares: &Shares) {
    let mut c = AgentClient::connect_retry(Endpoint::vm(uds), VM_LIMIT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "agent did not come up: {e}\nconsole:\n{}",
                fs::read_to_string(console).unwrap_or_default()
            )
        });
    c.set_call_timeout(CALL_LIMIT);

    // A tag the VM does not have: refused, naming the tag and the likely cause; no directory
    // is left behind.
    let e = c
        .mount(MountRequest::virtiofs("no-such-tag", "/run/nowhere/x"))
        .await
        .unwrap_err();
    let Error::Agent(e) = e else { panic!("{e}") };
    assert!(
        e.message.contains("\"no-such-tag\"") && e.message.contains("--fs TAG=DIR"),
        "{e:?}"
    );
    // Bad requests are refused by the agent itself, too (sent without the client's checks).
    let bad = c
        .call(
            hull_agent_protocol::Request::Mount(MountRequest::virtiofs("rootfs", "/run/../etc")),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(bad.agent_kind(), Some(ErrorKind::InvalidArgument), "{bad}");

    // Mount the share (the target is created), plus /dev and /proc inside it.
    c.mount(MountRequest::virtiofs("rootfs", ROOT))
        .await
        .unwrap();
    c.mount(MountRequest::bind("/dev", &format!("{ROOT}/dev")))
        .await
        .unwrap();
    c.mount(MountRequest::proc(&format!("{ROOT}/proc")))
        .await
        .unwrap();
    let (status, out, err) = run(&c, SpawnRequest::new(["/bin/nothing-here"])).await;
    assert_eq!(status.code(), Some(127), "{out}{err}");
    // The agent's own root holds nothing but /init: the busybox below comes from the share.
    let (status, out, err) = run(
        &c,
        sh_in(
            ROOT,
            "cat /proc/1/comm; grep -c virtiofs /proc/mounts; ls /dev/null",
        ),
    )
    .await;
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(out, "init\n1\n/dev/null\n");

    // (a) A file the host writes now (cache=never: no stale view) is read in the guest, and
    // its sha256 there matches the host's.
    let host_file = shares.rootfs.join("data/from-host.bin");
    fs::write(&host_file, pattern(7, 3 << 20 | 12345)).unwrap();
    let (status, out, err) = run(&c, sh_in(ROOT, "cd /data && sha256sum from-host.bin")).await;
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(
        out,
        format!("{}  from-host.bin\n", sha256_of(&host_file)),
        "guest and host disagree on the file's contents"
    );

    // (b) 1 MiB of pseudo-random bytes streamed from the host on stdin, written by the guest
    // into the share, read back on the host byte-exact.
    const LEN: usize = 1 << 20;
    let data = pattern(0x5eed, LEN);
    let p = c
        .spawn(sh_in(
            ROOT,
            "cat > /data/from-guest.bin && sync && wc -c < /data/from-guest.bin",
        ))
        .await
        .unwrap();
    let mut stdout = c.open_stream(p.process, StdStream::Stdout).await.unwrap();
    let mut stderr = c.open_stream(p.process, StdStream::Stderr).await.unwrap();
    let mut stdin = c.open_stream(p.process, StdStream::Stdin).await.unwrap();
    let feed = async {
        stdin.write_all(&data).await.unwrap();
        stdin.shutdown().await.unwrap();
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (_, o, e) = tokio::time::timeout(CALL_LIMIT, async {
        tokio::join!(
            feed,
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err)
        )
    })
    .await
    .expect("the copy finishes");
    o.unwrap();
    e.unwrap();
    let status = c.wait(p.process).await.unwrap();
    let err = String::from_utf8_lossy(&err);
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(String::from_utf8_lossy(&out).trim(), LEN.to_string());
    let back = fs::read(shares.rootfs.join("data/from-guest.bin")).unwrap();
    assert_eq!(back.len(), LEN);
    assert!(
        back == data,
        "the file the guest wrote differs from what the host sent"
    );

    // Read-only, two ways. A share the VMM exports read-only (`--fs ro=DIR,ro`), mounted
    // read-write by the guest: the device refuses the write.
    c.mount(MountRequest::virtiofs("ro", "/run/ro"))
        .await
        .unwrap();
    let (status, _, err) = run(&c, sh_in("/run/ro", "cat /hello; echo x > /written")).await;
    assert_ne!(status.code(), Some(0));
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(!shares.ro.join("written").exists());
    // The read-write share mounted read-only by the agent: the guest kernel refuses it.
    c.mount(MountRequest::virtiofs("rootfs", "/run/rootfs-ro").read_only())
        .await
        .unwrap();
    let (status, out, err) = run(
        &c,
        sh_in(
            "/run/rootfs-ro",
            "cat /data/from-host.bin | wc -c; echo x > /data/written",
        ),
    )
    .await;
    assert_ne!(status.code(), Some(0));
    assert_eq!(out.trim(), (3 << 20 | 12345).to_string());
    assert!(
        err.contains("can't create /data/written: Read-only file system"),
        "{err}"
    );
    assert!(!shares.rootfs.join("data/written").exists());

    // Unmount: busy while something is mounted below it, then in order.
    let e = c.unmount(ROOT, false).await.unwrap_err();
    assert_eq!(e.agent_kind(), Some(ErrorKind::Busy), "{e}");
    // The /dev bind is recursive (it carries /dev/pts and /dev/shm): detach the tree lazily.
    c.unmount(&format!("{ROOT}/dev"), true).await.unwrap();
    for t in [
        format!("{ROOT}/proc"),
        ROOT.to_string(),
        "/run/rootfs-ro".into(),
        "/run/ro".into(),
    ] {
        c.unmount(&t, false)
            .await
            .unwrap_or_else(|e| panic!("unmount {t}: {e}"));
    }
    let e = c.unmount(ROOT, false).await.unwrap_err();
    assert!(e.to_string().contains("nothing is mounted there"), "{e}");
    // The mount point stays, empty: busybox is gone from it.
    let (status, _, err) = run(&c, sh_in(ROOT, "true")).await;
    assert_eq!(status.code(), Some(127), "{err}");
    assert!(
        err.contains("/bin/busybox: No such file or directory"),
        "{err}"
    );

    // Shutdown through the agent.
    c.shutdown(Some(Duration::from_millis(500))).await.unwrap();
}

#[test]
fn agent_mounts_a_virtiofs_root_and_runs_chrooted_processes() {
    let dir = TempDir::new("hull-agent-fs");
    let shares = Shares {
        rootfs: dir.path().join("rootfs"),
        ro: dir.path().join("ro"),
    };
    busybox_root(&shares.rootfs, ROOT_DIRS);
    busybox_root(&shares.ro, ROOT_DIRS);
    fs::write(shares.ro.join("hello"), "hello from a read-only share\n").unwrap();
    let console = dir.path().join("console.log");
    let mut c = vm::config(&agent_initrd());
    c.cmdline = "console=ttyS0 hull.hostname=agent-fs".into();
    let uds = vm::add_vsock(&mut c, dir.path());
    c.serial = vm::SerialConfig::File(console.clone());
    let mut rootfs = vm::FsConfig::new("rootfs", &shares.rootfs);
    rootfs.cache = vm::CachePolicy::Never;
    let mut ro = vm::FsConfig::new("ro", &shares.ro);
    ro.read_only = true;
    c.fs = vec![rootfs, ro];
    let mut vmm = vm::launch(&c, dir.path());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(drive(&uds, &console, &shares));
    vm::expect_exit(&mut vmm, VM_LIMIT, 0, "hull-vmm: ");
    let console = fs::read_to_string(&console).unwrap_or_default();
    assert!(console.contains("rebooting to end the VM"), "{console}");
    assert!(!uds.exists(), "hull-vmm left {} behind", uds.display());
    // The shares hold what the test put there and what the guest wrote, nothing else.
    let mut names: Vec<_> = fs::read_dir(shares.rootfs.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["from-guest.bin", "from-host.bin"]);
    assert!(!shares.ro.join("written").exists());
}
