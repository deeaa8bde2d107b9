//! Reading an OCI bundle and translating its spec for the guest.
//!
//! The guest's `config.json` is the bundle's with host-only parts rewritten or removed (each
//! rule is a function below, each tested): the root is its own in the root file systems'
//! share (`/run/hull/rootfs/<id>@<nonce>`, see [`crate::share`]), bind mount
//! sources are their copies in the share, the cgroup is `/hull/<id>`, namespaces the guest
//! cannot use are dropped (or rewritten to another container's in the same sandbox), host
//! device nodes and LSM labels are dropped, and hooks are taken out (they run on the host).

use std::path::{Path, PathBuf};

use hull_agent_protocol::StdioSpec;
use oci_spec::runtime::{Hook, Linux, LinuxNamespace, LinuxNamespaceType, Spec};

use super::hooks::HookKind;
use super::ContainerError;

pub use crate::process::DEFAULT_TERMINAL;

/// A bundle as read from disk and checked.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute bundle directory.
    pub dir: PathBuf,
    pub spec: Spec,
    /// Absolute host root file system.
    pub rootfs: PathBuf,
}

pub use crate::share::BindMount;

fn invalid(config: &Path, field: impl Into<String>, reason: impl Into<String>) -> ContainerError {
    ContainerError::InvalidSpec {
        path: config.to_path_buf(),
        field: field.into(),
        reason: reason.into(),
    }
}

fn bundle_err(path: &Path, reason: impl Into<String>) -> ContainerError {
    ContainerError::Bundle {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Reads and checks `<dir>/config.json` and finds the root file system.
pub fn load_bundle(dir: &Path) -> Result<Bundle, ContainerError> {
    let dir = match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => std::fs::canonicalize(dir)
            .map_err(|e| bundle_err(dir, format!("cannot resolve the bundle directory: {e}")))?,
        Ok(_) => return Err(bundle_err(dir, "the bundle is not a directory")),
        Err(e) => {
            return Err(bundle_err(
                dir,
                format!("cannot use the bundle directory: {e}"),
            ))
        }
    };
    let config = dir.join("config.json");
    let data = std::fs::read(&config)
        .map_err(|e| bundle_err(&config, format!("cannot read the bundle's config: {e}")))?;
    let spec = parse_spec(&config, &data)?;
    check_spec(&config, &spec)?;
    let root = spec.root().as_ref().ok_or_else(|| {
        invalid(
            &config,
            "root",
            "missing: a container needs a root file system",
        )
    })?;
    let rootfs = dir.join(root.path());
    match std::fs::metadata(&rootfs) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(bundle_err(
                &rootfs,
                "the root file system (root.path in config.json) is not a directory",
            ))
        }
        Err(e) => {
            return Err(bundle_err(
                &rootfs,
                format!("the root file system (root.path in config.json): {e}"),
            ))
        }
    }
    Ok(Bundle { dir, spec, rootfs })
}

/// Parses a config.json; an error names the field (`process.args: invalid type: ...`).
/// Unknown fields are accepted.
pub fn parse_spec(config: &Path, data: &[u8]) -> Result<Spec, ContainerError> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        invalid(config, field, e.into_inner().to_string())
    })
}

/// What must hold beyond the JSON types: a process with arguments, absolute hook paths and
/// positive hook timeouts.
fn check_spec(config: &Path, spec: &Spec) -> Result<(), ContainerError> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid(config, "process", "missing: a container needs a process"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid(config, "process.args", "missing or empty"));
    }
    for kind in HookKind::ALL {
        for (i, hook) in kind.hooks(spec.hooks().as_ref()).iter().enumerate() {
            check_hook(config, &format!("hooks.{}[{i}]", kind.name()), hook)?;
        }
    }
    let namespaces = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().as_deref());
    for (i, ns) in namespaces.unwrap_or_default().iter().enumerate() {
        if let Some(path) = ns.path() {
            check_namespace_path(ns.typ(), path)
                .map_err(|reason| invalid(config, format!("linux.namespaces[{i}].path"), reason))?;
        }
    }
    Ok(())
}

/// Each namespace type: its name in the OCI spec, and its `clone` flag, which is what
/// `NS_GET_NSTYPE` reports.
const NS_TYPES: [(LinuxNamespaceType, &str, libc::c_int); 8] = [
    (LinuxNamespaceType::Mount, "mount", libc::CLONE_NEWNS),
    (LinuxNamespaceType::Cgroup, "cgroup", libc::CLONE_NEWCGROUP),
    (LinuxNamespaceType::Uts, "uts", libc::CLONE_NEWUTS),
    (LinuxNamespaceType::Ipc, "ipc", libc::CLONE_NEWIPC),
    (LinuxNamespaceType::User, "user", libc::CLONE_NEWUSER),
    (LinuxNamespaceType::Pid, "pid", libc::CLONE_NEWPID),
    (LinuxNamespaceType::Network, "network", libc::CLONE_NEWNET),
    (LinuxNamespaceType::Time, "time", libc::CLONE_NEWTIME),
];

/// A namespace entry's `path` must be a namespace of its type, as runc checks before it
/// starts anything (even though hull then maps the entry into the guest or drops it): the
/// kernel says what the file is (`NS_GET_NSTYPE`). The reason when it is not.
pub fn check_namespace_path(t: LinuxNamespaceType, path: &Path) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    /// `_IO(0xb7, 0x3)` (linux/nsfs.h).
    const NS_GET_NSTYPE: libc::c_ulong = 0xb703;
    let (_, wanted, flag) = NS_TYPES
        .into_iter()
        .find(|(typ, ..)| *typ == t)
        .ok_or_else(|| {
            format!(
                "{}: namespace type {t:?} is not known to hull",
                path.display()
            )
        })?;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd we own; on a file that is
    // not a namespace it fails with ENOTTY.
    let got = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_NSTYPE) };
    if got == flag {
        return Ok(());
    }
    let what = match NS_TYPES.into_iter().find(|(.., f)| *f == got) {
        _ if got < 0 => "not a namespace".to_string(),
        Some((_, name, _)) => format!("a {name} namespace"),
        None => format!("namespace type {got:#x}"),
    };
    Err(format!(
        "{} is {what}, but the entry's type is {wanted}",
        path.display()
    ))
}

fn check_hook(config: &Path, field: &str, hook: &Hook) -> Result<(), ContainerError> {
    if !hook.path().is_absolute() {
        return Err(invalid(
            config,
            format!("{field}.path"),
            format!("{} is not an absolute path", hook.path().display()),
        ));
    }
    if let Some(t) = hook.timeout() {
        if t <= 0 {
            return Err(invalid(
                config,
                format!("{field}.timeout"),
                format!("{t}: must be greater than zero"),
            ));
        }
    }
    Ok(())
}

/// Whether a spec mount is a bind mount (type `bind`, or a `bind`/`rbind` option), and if so
/// whether it is recursive.
fn bind_kind(m: &oci_spec::runtime::Mount) -> Option<bool> {
    let opts = m.options().as_deref().unwrap_or_default();
    let has = |o: &str| opts.iter().any(|x| x == o);
    let recursive = has("rbind");
    (m.typ().as_deref() == Some("bind") || recursive || has("bind")).then_some(recursive)
}

/// The spec's bind mounts with their host sources (relative ones are relative to the bundle),
/// each checked to exist.
pub fn bind_mounts(bundle: &Bundle) -> Result<Vec<BindMount>, ContainerError> {
    let mut out = Vec::new();
    for (index, m) in bundle.spec.mounts().iter().flatten().enumerate() {
        let Some(recursive) = bind_kind(m) else {
            continue;
        };
        let err = |source: &Path, reason: String| ContainerError::MountSource {
            destination: m.destination().clone(),
            host_path: source.to_path_buf(),
            reason,
        };
        let source = m
            .source()
            .as_ref()
            .ok_or_else(|| err(Path::new(""), "a bind mount needs a source".into()))?;
        let source = bundle.dir.join(source);
        let meta = std::fs::metadata(&source).map_err(|e| err(&source, e.to_string()))?;
        let readonly = m
            .options()
            .as_deref()
            .unwrap_or_default()
            .iter()
            .any(|o| o == "ro");
        out.push(BindMount {
            index,
            destination: m.destination().clone(),
            source,
            is_dir: meta.is_dir(),
            recursive,
            readonly,
        });
    }
    Ok(out)
}

/// The stdio for the init: `requested`, or pipes, or a terminal of `process.consoleSize` (else
/// 24x80) when `process.terminal` is true. A request that disagrees with the spec is an error.
pub fn init_stdio(
    bundle: &Bundle,
    requested: Option<StdioSpec>,
) -> Result<StdioSpec, ContainerError> {
    let process = bundle.spec.process().as_ref();
    let config = bundle.dir.join("config.json");
    stdio_for(&config, process, requested)
}

/// [`init_stdio`] for any process object (exec's too); `config` names where it came from.
pub fn stdio_for(
    config: &Path,
    process: Option<&oci_spec::runtime::Process>,
    requested: Option<StdioSpec>,
) -> Result<StdioSpec, ContainerError> {
    let terminal = process.and_then(|p| p.terminal()).unwrap_or(false);
    match requested {
        None if terminal => {
            let (rows, cols) = crate::process::terminal_size(None, process);
            Ok(StdioSpec::Terminal { rows, cols })
        }
        None => Ok(StdioSpec::default()),
        Some(s) => {
            let asked = matches!(s, StdioSpec::Terminal { .. });
            if asked != terminal {
                let reason = if terminal {
                    "is true, but pipes were asked for (a terminal needs a console socket)"
                } else {
                    "is false, but a terminal was asked for"
                };
                return Err(invalid(config, "process.terminal", reason));
            }
            Ok(s)
        }
    }
}

/// The guest path of container `id`'s directory in the share.
pub fn guest_dir(id: &str) -> String {
    format!("{}/containers/{id}", crate::sandbox::GUEST_SHARE_DIR)
}

/// The guest's namespace name of a type (`/proc/<pid>/ns/<name>`), for the types a container
/// may join in another container of the sandbox.
fn joinable_ns(t: LinuxNamespaceType) -> Option<&'static str> {
    match t {
        LinuxNamespaceType::Pid => Some("pid"),
        LinuxNamespaceType::Ipc => Some("ipc"),
        LinuxNamespaceType::Uts => Some("uts"),
        LinuxNamespaceType::Mount => Some("mnt"),
        LinuxNamespaceType::Cgroup => Some("cgroup"),
        _ => None,
    }
}

/// The namespaces for the guest. The network namespace is dropped (the container uses the VM's
/// network). An entry with a host `path` cannot be joined in the guest: with `join` (another
/// container of the sandbox and its guest init pid) pid/ipc/uts/mount/cgroup entries are
/// rewritten to that container's namespaces, otherwise (and for user and time namespaces) they
/// are dropped with a warning. Entries without a path (new namespaces) are kept.
pub fn guest_namespaces(
    id: &str,
    namespaces: &[LinuxNamespace],
    join: Option<(&str, i32)>,
) -> Vec<LinuxNamespace> {
    let mut out = Vec::new();
    for ns in namespaces {
        let t = ns.typ();
        if t == LinuxNamespaceType::Network {
            tracing::debug!("container {id}: the network namespace is the VM's");
            continue;
        }
        let Some(path) = ns.path() else {
            out.push(ns.clone());
            continue;
        };
        match (joinable_ns(t), join) {
            (Some(name), Some((other, pid))) => {
                let mut n = ns.clone();
                let guest = PathBuf::from(format!("/proc/{pid}/ns/{name}"));
                tracing::debug!(
                    "container {id}: {t:?} namespace {} is container {other}'s: {}",
                    path.display(),
                    guest.display()
                );
                n.set_path(Some(guest));
                out.push(n);
            }
            _ => tracing::warn!(
                "container {id}: dropping the {t:?} namespace {}: a host namespace cannot be \
                 joined in the guest",
                path.display()
            ),
        }
    }
    out
}

/// The guest path of root file system `name` (a [`crate::share::rootfs_name`]).
pub fn guest_rootfs(name: &str) -> String {
    format!("{}/{name}", crate::sandbox::GUEST_ROOTFS_DIR)
}

/// The spec the guest runs: see the module docs. `binds` are [`bind_mounts`] of the same spec;
/// `guest_root` is where the guest finds the root file system ([`guest_rootfs`]).
pub fn translate(
    spec: &Spec,
    id: &str,
    join: Option<(&str, i32)>,
    binds: &[BindMount],
    guest_root: &str,
) -> Spec {
    let mut g = spec.clone();
    let share = guest_dir(id);

    let readonly = spec.root().as_ref().and_then(|r| r.readonly());
    let root = serde_json::json!({"path": guest_root, "readonly": readonly});
    g.set_root(serde_json::from_value(root).ok());

    if let Some(mounts) = g.mounts_mut() {
        for b in binds {
            if let Some(m) = mounts.get_mut(b.index) {
                m.set_source(Some(PathBuf::from(format!("{share}/mounts/{}", b.index))));
            }
        }
    }

    for m in spec.mounts().iter().flatten() {
        let opts = m.options().as_deref().unwrap_or_default();
        if let Some(mode) = opts.iter().find(|o| *o == "shared" || *o == "rshared") {
            tracing::warn!(
                "container {id}: mount {} asks for {mode} propagation: mounts the host makes \
                 under it reach the container, but mounts made in the container stay in the \
                 guest (they cannot cross the VM to the host)",
                m.destination().display(),
            );
        }
    }

    if g.hooks().is_some() {
        tracing::debug!("container {id}: hooks run on the host, not in the guest");
        g.set_hooks(None);
    }

    if let Some(p) = g.process_mut() {
        if let Some(profile) = p.apparmor_profile() {
            tracing::warn!("container {id}: ignoring process.apparmorProfile {profile:?}");
            p.set_apparmor_profile(None);
        }
        if let Some(label) = p.selinux_label() {
            tracing::warn!("container {id}: ignoring process.selinuxLabel {label:?}");
            p.set_selinux_label(None);
        }
    }

    // A spec without `linux` gets one with nothing but the cgroup (Linux::default() would add
    // default namespaces and paths the bundle did not ask for).
    let linux = g.linux_mut().get_or_insert_with(|| {
        serde_json::from_value::<Linux>(serde_json::json!({})).unwrap_or_default()
    });
    linux.set_cgroups_path(Some(PathBuf::from(format!("/hull/{id}"))));
    if let Some(ns) = linux.namespaces().as_deref() {
        let ns = guest_namespaces(id, ns, join);
        linux.set_namespaces(Some(ns));
    }
    // `linux.devices` are kept: the guest makes each node with its type, numbers, mode and
    // owner in the container's /dev, as runc does on the host, and the node means the guest
    // kernel's device of that number (docs/kubernetes.md says which drivers it has).
    if let Some(label) = linux.mount_label() {
        tracing::warn!("container {id}: ignoring linux.mountLabel {label:?}");
        linux.set_mount_label(None);
    }
    g
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const ROOT: &str = "/run/hull/rootfs/c1@0123456789abcdef";

    fn spec(v: Value) -> Spec {
        serde_json::from_value(v).unwrap()
    }

    fn minimal() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "root": {"path": "/somewhere/rootfs", "readonly": true},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]},
        })
    }

    fn to_json(s: &Spec) -> Value {
        serde_json::to_value(s).unwrap()
    }

    #[test]
    fn root_and_cgroup() {
        let g = to_json(&translate(&spec(minimal()), "c1", None, &[], ROOT));
        assert_eq!(g["root"], json!({"path": ROOT, "readonly": true}));
        assert_eq!(g["linux"]["cgroupsPath"], "/hull/c1");
        let mut v = minimal();
        v["root"] = json!({"path": "rootfs"});
        v.as_object_mut().unwrap().remove("linux");
        let g = to_json(&translate(&spec(v), "c1", None, &[], ROOT));
        assert_eq!(g["root"], json!({"path": ROOT}));
        // No linux section: one with just the cgroup, no default namespaces.
        assert_eq!(g["linux"], json!({"cgroupsPath": "/hull/c1"}));
    }

    /// A namespace path is checked for its type, as runc checks it: the reason names the path
    /// and what it is.
    #[test]
    fn namespace_paths_must_be_namespaces_of_their_type() {
        use LinuxNamespaceType::*;
        for (t, name) in [
            (Pid, "pid"),
            (Network, "net"),
            (Ipc, "ipc"),
            (Uts, "uts"),
            (Mount, "mnt"),
        ] {
            let p = PathBuf::from(format!("/proc/self/ns/{name}"));
            assert_eq!(check_namespace_path(t, &p), Ok(()), "{name}");
        }
        let e = check_namespace_path(Pid, Path::new("/proc/self/ns/net")).unwrap_err();
        assert_eq!(
            e,
            "/proc/self/ns/net is a network namespace, but the entry's type is pid"
        );
        let e = check_namespace_path(Network, Path::new("/proc/self/status")).unwrap_err();
        assert_eq!(
            e,
            "/proc/self/status is not a namespace, but the entry's type is network"
        );
        let e = check_namespace_path(Ipc, Path::new("/nonexistent/ns")).unwrap_err();
        assert!(
            e.starts_with("/nonexistent/ns: ") && e.contains("No such file"),
            "{e}"
        );

        // In a bundle: refused before anything starts, the entry named.
        let dir = std::env::temp_dir().join(format!("hull-nscheck-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc", "path": "/proc/self/ns/uts"}]},
        });
        std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
        let e = load_bundle(&dir).map(|_| ()).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            e.contains("linux.namespaces[1].path")
                && e.contains("/proc/self/ns/uts is a uts namespace, but the entry's type is ipc"),
            "{e}"
        );
    }

    #[test]
    fn namespaces() {
        let mut v = minimal();
        v["linux"]["namespaces"] = json!([
            {"type": "pid", "path": "/proc/10/ns/pid"},
            {"type": "network", "path": "/var/run/netns/x"},
            {"type": "ipc", "path": "/proc/10/ns/ipc"},
            {"type": "uts", "path": "/proc/10/ns/uts"},
            {"type": "mount", "path": "/proc/10/ns/mnt"},
            {"type": "cgroup", "path": "/proc/10/ns/cgroup"},
            {"type": "user", "path": "/proc/10/ns/user"},
            {"type": "user"},
            {"type": "time", "path": "/proc/10/ns/time"},
            {"type": "network"},
        ]);
        let s = spec(v);
        let g = to_json(&translate(&s, "c1", None, &[], ROOT));
        // Without join, host paths are dropped; new namespaces stay; network always goes.
        assert_eq!(g["linux"]["namespaces"], json!([{"type": "user"}]));
        let g = to_json(&translate(&s, "c2", Some(("sb", 42)), &[], ROOT));
        assert_eq!(
            g["linux"]["namespaces"],
            json!([
                {"type": "pid", "path": "/proc/42/ns/pid"},
                {"type": "ipc", "path": "/proc/42/ns/ipc"},
                {"type": "uts", "path": "/proc/42/ns/uts"},
                {"type": "mount", "path": "/proc/42/ns/mnt"},
                {"type": "cgroup", "path": "/proc/42/ns/cgroup"},
                {"type": "user"},
            ])
        );
        let g = to_json(&translate(&spec(minimal()), "c1", None, &[], ROOT));
        assert_eq!(
            g["linux"]["namespaces"],
            json!([{"type": "pid"}, {"type": "mount"}])
        );
    }

    #[test]
    fn labels_and_hooks_are_removed_the_rest_kept() {
        let mut v = minimal();
        v["process"]["apparmorProfile"] = json!("docker-default");
        v["process"]["selinuxLabel"] = json!("system_u:system_r:container_t:s0");
        v["process"]["rlimits"] = json!([{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]);
        v["process"]["env"] = json!(["A=b"]);
        v["hostname"] = json!("h");
        v["hooks"] = json!({"prestart": [{"path": "/bin/true"}]});
        v["linux"]["mountLabel"] = json!("system_u:object_r:container_file_t:s0");
        v["linux"]["devices"] =
            json!([{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]);
        v["linux"]["resources"] = json!({
            "devices": [{"allow": false, "access": "rwm"}],
            "pids": {"limit": 10},
        });
        v["linux"]["maskedPaths"] = json!(["/proc/kcore"]);
        v["linux"]["readonlyPaths"] = json!(["/proc/sys"]);
        v["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
        v["linux"]["seccomp"] = json!({"defaultAction": "SCMP_ACT_ALLOW"});
        let before = to_json(&spec(v));
        let g = to_json(&translate(&spec(before.clone()), "c1", None, &[], ROOT));
        assert!(g.get("hooks").is_none(), "{g}");
        assert!(g["process"].get("apparmorProfile").is_none(), "{g}");
        assert!(g["process"].get("selinuxLabel").is_none(), "{g}");
        assert!(g["linux"].get("mountLabel").is_none(), "{g}");
        for kept in [
            "devices",
            "resources",
            "maskedPaths",
            "readonlyPaths",
            "sysctl",
            "seccomp",
        ] {
            assert_eq!(g["linux"][kept], before["linux"][kept], "{kept}");
        }
        for kept in ["rlimits", "env", "args", "cwd", "user"] {
            assert_eq!(g["process"][kept], before["process"][kept], "{kept}");
        }
        assert_eq!(g["hostname"], "h");
    }

    #[test]
    fn bind_mounts_are_found_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path();
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        std::fs::create_dir_all(b.join("data")).unwrap();
        std::fs::write(b.join("hosts"), b"").unwrap();
        let mut v = minimal();
        v["root"] = json!({"path": "rootfs"});
        v["mounts"] = json!([
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/data", "type": "bind", "source": b.join("data"), "options": ["rbind", "ro"]},
            {"destination": "/etc/hosts", "type": "none", "source": "hosts", "options": ["bind"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        ]);
        std::fs::write(b.join("config.json"), v.to_string()).unwrap();
        let bundle = load_bundle(b).unwrap();
        let binds = bind_mounts(&bundle).unwrap();
        let root = std::fs::canonicalize(b).unwrap();
        assert_eq!(
            binds,
            vec![
                BindMount {
                    index: 1,
                    destination: "/data".into(),
                    source: root.join("data"),
                    is_dir: true,
                    recursive: true,
                    readonly: true,
                },
                BindMount {
                    index: 2,
                    destination: "/etc/hosts".into(),
                    source: root.join("hosts"),
                    is_dir: false,
                    recursive: false,
                    readonly: false,
                },
            ]
        );
        let g = to_json(&translate(&bundle.spec, "c1", None, &binds, ROOT));
        let m = &g["mounts"];
        assert_eq!(
            m[0],
            json!({"destination": "/proc", "type": "proc", "source": "proc"})
        );
        assert_eq!(m[1]["source"], "/run/hull/shared/containers/c1/mounts/1");
        assert_eq!(m[1]["options"], json!(["rbind", "ro"]));
        assert_eq!(m[2]["source"], "/run/hull/shared/containers/c1/mounts/2");
        assert_eq!(m[3]["source"], "tmpfs");

        // A source that does not exist: the error names the destination and the source.
        v["mounts"][1]["source"] = json!(b.join("nope"));
        std::fs::write(b.join("config.json"), v.to_string()).unwrap();
        let e = bind_mounts(&load_bundle(b).unwrap()).unwrap_err();
        assert!(matches!(e, ContainerError::MountSource { .. }), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("/data") && msg.contains("nope"), "{msg}");
    }

    #[test]
    fn invalid_config_names_the_field() {
        let p = Path::new("/b/config.json");
        let mut v = minimal();
        v["process"]["args"] = json!("sh -c true");
        v["someFutureField"] = json!({"x": 1});
        let e = parse_spec(p, v.to_string().as_bytes()).unwrap_err();
        assert!(matches!(e, ContainerError::InvalidSpec { .. }), "{e}");
        let msg = e.to_string();
        assert!(
            msg.starts_with("/b/config.json: process.args: invalid type: string"),
            "{msg}"
        );
        let mut v = minimal();
        v["linux"]["namespaces"][0]["type"] = json!("bogus");
        let e = parse_spec(p, v.to_string().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("linux.namespaces[0].type: unknown variant"),
            "{e}"
        );
        let e = parse_spec(p, b"{\"ociVersion\": ").unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        // Unknown fields are fine.
        let mut v = minimal();
        v["someFutureField"] = json!({"x": 1});
        v["process"]["newThing"] = json!(true);
        parse_spec(p, v.to_string().as_bytes()).unwrap();
        // Checks beyond the types.
        let mut v = minimal();
        v["process"]["args"] = json!([]);
        let e = check_spec(p, &spec(v)).unwrap_err().to_string();
        assert!(e.contains("process.args: missing or empty"), "{e}");
        let mut v = minimal();
        v["hooks"] = json!({"poststart": [{"path": "/ok"}, {"path": "/x", "timeout": 0}]});
        let e = check_spec(p, &spec(v)).unwrap_err().to_string();
        assert!(e.contains("hooks.poststart[1].timeout"), "{e}");
        let mut v = minimal();
        v["hooks"] = json!({"createRuntime": [{"path": "relative"}]});
        let e = check_spec(p, &spec(v)).unwrap_err().to_string();
        assert!(e.contains("hooks.createRuntime[0].path"), "{e}");
    }

    #[test]
    fn missing_bundle_config_and_rootfs_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let b = dir.path().join("bundle");
        let e = load_bundle(&b).unwrap_err();
        assert!(matches!(e, ContainerError::Bundle { .. }), "{e}");
        assert!(e.to_string().contains("bundle"), "{e}");
        std::fs::create_dir(&b).unwrap();
        let e = load_bundle(&b).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
        let mut v = minimal();
        v["root"] = json!({"path": "rootfs"});
        std::fs::write(b.join("config.json"), v.to_string()).unwrap();
        let e = load_bundle(&b).unwrap_err();
        assert!(matches!(e, ContainerError::Bundle { .. }), "{e}");
        assert!(e.to_string().contains("bundle/rootfs"), "{e}");
        // An absolute root path is used as it is.
        let abs = dir.path().join("elsewhere");
        std::fs::create_dir(&abs).unwrap();
        v["root"] = json!({"path": abs});
        std::fs::write(b.join("config.json"), v.to_string()).unwrap();
        assert_eq!(load_bundle(&b).unwrap().rootfs, abs);
        v.as_object_mut().unwrap().remove("root");
        std::fs::write(b.join("config.json"), v.to_string()).unwrap();
        let e = load_bundle(&b).unwrap_err().to_string();
        assert!(e.contains("config.json: root: missing"), "{e}");
    }

    #[test]
    fn stdio_follows_process_terminal() {
        let p = Path::new("/b/config.json");
        let pipes = StdioSpec::default();
        let mut v = minimal();
        let s = spec(v.clone());
        assert_eq!(stdio_for(p, s.process().as_ref(), None).unwrap(), pipes);
        v["process"]["terminal"] = json!(true);
        let s = spec(v.clone());
        assert_eq!(
            stdio_for(p, s.process().as_ref(), None).unwrap(),
            StdioSpec::Terminal { rows: 24, cols: 80 }
        );
        let e = stdio_for(p, s.process().as_ref(), Some(pipes)).unwrap_err();
        assert!(e.to_string().contains("process.terminal: is true"), "{e}");
        v["process"]["consoleSize"] = json!({"height": 50, "width": 132});
        let s = spec(v);
        assert_eq!(
            stdio_for(p, s.process().as_ref(), None).unwrap(),
            StdioSpec::Terminal {
                rows: 50,
                cols: 132
            }
        );
        let t = StdioSpec::Terminal { rows: 1, cols: 2 };
        assert_eq!(stdio_for(p, s.process().as_ref(), Some(t)).unwrap(), t);
        let s = spec(minimal());
        let e = stdio_for(p, s.process().as_ref(), Some(t)).unwrap_err();
        assert!(e.to_string().contains("process.terminal: is false"), "{e}");
    }
}
