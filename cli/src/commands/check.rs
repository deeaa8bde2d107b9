//! `hull check`: what this host has and lacks to run hull, each lack with its fix. Exits 0 when
//! everything required is there, 1 otherwise.

use std::path::Path;
use std::process::ExitCode;

use hull_runtime::config::RuntimeConfig;

#[derive(clap::Args, Debug)]
pub struct Check {}

enum Status {
    Ok,
    /// Works, but not as well as it could.
    Warn,
    /// hull cannot run.
    Fail,
}

struct Item {
    status: Status,
    what: &'static str,
    detail: String,
    fix: Option<String>,
}

fn item(status: Status, what: &'static str, detail: impl Into<String>) -> Item {
    Item {
        status,
        what,
        detail: detail.into(),
        fix: None,
    }
}

impl Item {
    fn fix(mut self, fix: impl Into<String>) -> Item {
        self.fix = Some(fix.into());
        self
    }
}

fn kvm() -> Item {
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return item(Status::Fail, "KVM", "/dev/kvm does not exist")
            .fix("enable virtualisation (VMX/SVM) in the firmware and load kvm_intel or kvm_amd");
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return item(Status::Fail, "KVM", format!("cannot open /dev/kvm: {e}"))
            .fix("run as root or add the user to the kvm group");
    }
    let module = ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .find(|m| Path::new("/sys/module").join(m).exists());
    match module {
        Some("kvm_pvm") => item(
            Status::Fail,
            "KVM",
            "/dev/kvm is backed by PVM (kvm_pvm), which cannot boot an ordinary Linux guest",
        )
        .fix(
            "use a host with hardware virtualisation (VMX/SVM), or run hull inside the emulated \
             KVM host (tests/testhost/run)",
        ),
        Some(m) => item(Status::Ok, "KVM", format!("/dev/kvm ({m})")),
        None => item(
            Status::Warn,
            "KVM",
            "/dev/kvm opens, but its backing module is not kvm_intel or kvm_amd",
        ),
    }
}

fn file(what: &'static str, path: &Path) -> Item {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => item(Status::Ok, what, path.display().to_string()),
        Ok(_) => item(
            Status::Fail,
            what,
            format!("{} is not a file", path.display()),
        ),
        Err(e) => item(Status::Fail, what, format!("{}: {e}", path.display()))
            .fix("run `make install`, or set its path in /etc/hull/config.toml (HULL_CONFIG)"),
    }
}

fn cgroup() -> Item {
    match nix::sys::statfs::statfs("/sys/fs/cgroup") {
        Ok(s) if s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC => {
            item(Status::Ok, "cgroup v2", "/sys/fs/cgroup is cgroup2")
        }
        Ok(_) => item(
            Status::Warn,
            "cgroup v2",
            "/sys/fs/cgroup is not cgroup2 (cgroup v1 or hybrid): the VMM cannot be placed in \
             the cgroup containerd or docker ask for",
        )
        .fix("boot the host with systemd.unified_cgroup_hierarchy=1"),
        Err(e) => item(Status::Warn, "cgroup v2", format!("/sys/fs/cgroup: {e}")),
    }
}

/// What hull-vmm's jail holds with this configuration (docs/security.md).
fn jail(c: &hull_vmm_api::config::JailConfig) -> Item {
    let mut on = Vec::new();
    let mut off = Vec::new();
    let mut part = |enabled: bool, what: &str| {
        if enabled {
            on.push(what.to_string())
        } else {
            off.push(what.to_string())
        }
    };
    part(
        c.namespaces,
        "namespaces (mount, IPC, UTS; root pivoted into an empty read-only tmpfs)",
    );
    part(
        c.capabilities,
        "capabilities (only the virtio-fs workers keep CHOWN, DAC_OVERRIDE, DAC_READ_SEARCH, \
         FOWNER, FSETID, SETFCAP, SETUID, SETGID)",
    );
    part(
        c.seccomp,
        "seccomp (an allowlist per thread: vmm, vcpu, fs)",
    );
    let seccomp_ok = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Seccomp:")))
        .unwrap_or(false);
    let mut detail = format!(
        "{}; no_new_privs, RLIMIT_NOFILE {}, RLIMIT_CORE 0, own cgroup",
        if on.is_empty() {
            "nothing confined".to_string()
        } else {
            on.join("; ")
        },
        c.max_open_files
    );
    if c.seccomp && !seccomp_ok {
        return item(Status::Fail, "VMM jail", "this kernel has no seccomp")
            .fix("use a kernel built with CONFIG_SECCOMP_FILTER, or set [jail] seccomp = false");
    }
    if off.is_empty() {
        item(Status::Ok, "VMM jail", detail)
    } else {
        detail.push_str(&format!("; OFF: {}", off.join("; ")));
        item(Status::Warn, "VMM jail", detail)
            .fix("remove `jail = false` or the [jail] parts set to false in the configuration")
    }
}

/// What will move a sandbox's frames: the host's vhost-net if `/dev/vhost-net` opens (as
/// hull-vmm opens it), hull-vmm's own device otherwise (`net_backend`).
fn net_backend(backend: hull_vmm_api::NetBackend) -> Item {
    use hull_vmm_api::NetBackend;
    const WHAT: &str = "virtio-net";
    if backend == NetBackend::Userspace {
        return item(
            Status::Ok,
            WHAT,
            "hull-vmm's own device (net_backend = \"userspace\")",
        );
    }
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vhost-net")
    {
        Ok(_) => item(
            Status::Ok,
            WHAT,
            "the host kernel's vhost-net (/dev/vhost-net)",
        ),
        Err(e) if backend == NetBackend::Vhost => item(
            Status::Fail,
            WHAT,
            format!("net_backend = \"vhost\", but /dev/vhost-net: {e}"),
        )
        .fix("modprobe vhost_net, or set net_backend = \"auto\""),
        Err(e) => item(
            Status::Warn,
            WHAT,
            format!("hull-vmm's own device (slower): /dev/vhost-net: {e}"),
        )
        .fix("modprobe vhost_net"),
    }
}

fn root() -> Item {
    if nix::unistd::geteuid().is_root() {
        item(Status::Ok, "privileges", "running as root")
    } else {
        item(
            Status::Fail,
            "privileges",
            "not root: hull mounts root file systems and volumes for its VMs",
        )
        .fix("run hull as root")
    }
}

pub fn run(_: &Check) -> anyhow::Result<ExitCode> {
    let mut items = vec![kvm()];
    match RuntimeConfig::load() {
        Ok(c) => {
            items.push(file("guest kernel", &c.kernel));
            items.push(file("guest initramfs", &c.initrd));
            items.push(file("hull-vmm", &c.vmm));
            items.push(jail(&c.jail.config()));
            items.push(net_backend(c.net_backend));
        }
        Err(e) => items.push(
            item(Status::Fail, "configuration", e.to_string())
                .fix("correct the file, or remove it to use the defaults"),
        ),
    }
    items.push(item(
        Status::Ok,
        "vsock",
        "not needed on the host: hull-vmm's vsock is served over a Unix socket",
    ));
    items.push(cgroup());
    items.push(root());
    let mut failed = false;
    for i in &items {
        let tag = match i.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => {
                failed = true;
                "FAIL"
            }
        };
        println!("{tag} {}: {}", i.what, i.detail);
        if let Some(f) = &i.fix {
            println!("     fix: {f}");
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
