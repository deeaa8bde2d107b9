//! What a running hull-vmm is confined with, read from `/proc` as an outside observer sees it
//! (docs/security.md lists what each part must be).

use std::path::Path;

/// CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER, CAP_FSETID, CAP_SETGID,
/// CAP_SETUID, CAP_SETFCAP: what the virtio-fs workers keep (docs/security.md).
pub const FS_WORKER_CAPS: u64 =
    (1 << 0) | (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 6) | (1 << 7) | (1 << 31);

fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name} in status:\n{status}"))
}

fn hex(v: &str) -> u64 {
    u64::from_str_radix(v, 16).unwrap_or_else(|e| panic!("{v}: {e}"))
}

/// `PF_USER_WORKER` (include/linux/sched.h): a thread the kernel made in the process for its own
/// work, which never runs in user mode (vhost-net's worker since Linux 6.4).
const PF_USER_WORKER: u64 = 0x4000;

/// Whether the thread whose `/proc/<pid>/task/<tid>` is `task` is a kernel user worker.
fn is_user_worker(task: &Path) -> bool {
    let Ok(stat) = std::fs::read_to_string(task.join("stat")) else {
        return false;
    };
    // The flags are the 9th field; the 2nd, the name, may hold spaces, so count after it.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(6)?.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_USER_WORKER != 0)
}

/// Asserts that hull-vmm `pid` is jailed: every thread under seccomp (mode 2) with
/// no_new_privs; the virtio-fs workers (`fs-*`) with exactly [`FS_WORKER_CAPS`] effective and
/// every other thread with none; the bounding set no wider than the workers'; its own mount,
/// IPC and UTS namespaces, whose root holds no host file. A kernel user worker (vhost-net's,
/// Linux 6.4 on) never runs in user mode, so no seccomp filter applies to it: it must have
/// no_new_privs, no capability and the jail's root. Returns one line per thread.
pub fn assert_jailed(pid: i32) -> String {
    let mut report = String::new();
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    for t in tasks {
        let t = t.unwrap().path();
        let Ok(status) = std::fs::read_to_string(t.join("status")) else {
            continue; // a thread that just ended
        };
        let name = field(&status, "Name");
        let seccomp = field(&status, "Seccomp");
        let nnp = field(&status, "NoNewPrivs");
        let eff = hex(&field(&status, "CapEff"));
        let bnd = hex(&field(&status, "CapBnd"));
        let line =
            format!("{name}: Seccomp {seccomp} NoNewPrivs {nnp} CapEff {eff:#x} CapBnd {bnd:#x}\n");
        report.push_str(&line);
        if is_user_worker(&t) {
            assert_eq!(nnp, "1", "a kernel worker: {line}");
            assert_eq!(eff, 0, "a kernel worker: {line}");
            for host_file in ["etc/passwd", "usr", "bin", "dev/kvm"] {
                assert!(
                    !t.join("root").join(host_file).exists(),
                    "{host_file} is in the kernel worker's root: {line}"
                );
            }
            continue;
        }
        assert_eq!(seccomp, "2", "a thread without its seccomp filter: {line}");
        assert_eq!(nnp, "1", "{line}");
        let want = if name.starts_with("fs-") {
            kinds.insert("fs");
            FS_WORKER_CAPS
        } else {
            kinds.insert(if name.starts_with("vcpu") {
                "vcpu"
            } else {
                "vmm"
            });
            0
        };
        assert_eq!(eff, want, "{line}");
        assert_eq!(bnd & !FS_WORKER_CAPS, 0, "bounding set too wide: {line}");
    }
    assert!(
        kinds.contains("vmm") && kinds.contains("vcpu") && kinds.contains("fs"),
        "threads of every kind: {report}"
    );
    for ns in ["mnt", "ipc", "uts"] {
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        assert_ne!(theirs, ours, "hull-vmm shares the host's {ns} namespace");
        report.push_str(&format!("{ns} namespace {}\n", theirs.display()));
    }
    let root = format!("/proc/{pid}/root");
    for host_file in ["etc/passwd", "usr", "bin", "dev/kvm"] {
        assert!(
            !Path::new(&root).join(host_file).exists(),
            "{host_file} is in hull-vmm's root"
        );
    }
    report
}
