//! Templates: a sandbox VM booted once to its agent and snapshotted (hull-vmm's
//! `snapshot_to`), from which every later sandbox of the same shape is restored instead of
//! booted (hull-vmm's `restore_from`).
//!
//! A template is made for one [`TemplateSpec`]: the kernel, initramfs and hull-vmm it was made
//! with (each by path, size, modification time, inode and device: a rebuilt or replaced file
//! gives a new key), the vCPUs, the memory, the guest command line (the agent's call policy is
//! on it; the hostname is not, a restored guest is given its own) and the NICs' MTUs. The key is
//! the SHA-256 of the spec. Templates live under `template_dir` (default
//! `/var/lib/hull/templates`), one directory per key:
//!
//! ```text
//! <template_dir>/<key>/template.json   the spec, when and how fast it was made
//! <template_dir>/<key>/snapshot/       hull-vmm's vmstate and memory files
//! <template_dir>/<key>.lock            held while the template is made or removed
//! ```
//!
//! Made on first use, once under concurrent first use: the lock is taken, the directory looked
//! for again, the template made in `.b<pid>-<n>` (short: its VM's sockets are made there) and
//! renamed into place. After a template is made, every template made from a kernel, initramfs
//! or hull-vmm that has changed since, or in another template format, is removed (each under
//! its lock, [`remove_stale`]): nothing would ever use it again. (A sandbox restored from one
//! keeps its mapping of the memory file; a restore that was starting from one at that moment
//! fails and boots instead, with a log line.) Templates of other shapes made from the current
//! files stay. The
//! template's VM has the sandbox's devices: the vsock device, the two shares (empty directories:
//! a template's guest never mounts them) and one tap per NIC, made in a network namespace of
//! its own and removed with it; NIC `i` has [`placeholder_mac`]`(i)`, by which the restored
//! guest's agent finds it.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use hull_vmm_api::config::{NetConfig, SerialConfig, VmConfig, VsockConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::agent::{AgentClient, Endpoint};
use crate::config::RuntimeConfig;
pub use crate::network::placeholder_mac;
use crate::vmm::{Launch, VmmProcess};

/// Bumped when what a template holds or how it is keyed changes meaning (2: the root file
/// systems' share, a second virtio-fs device).
pub const TEMPLATE_FORMAT: u32 = 2;
/// The template's description in its directory.
pub const META_FILE: &str = "template.json";
/// hull-vmm's snapshot in the template's directory.
pub const SNAPSHOT_DIR: &str = "snapshot";
/// The vsock CID and share tag a template's VM has: the sandbox's (see `crate::sandbox`).
const GUEST_CID: u64 = 3;
/// Longest a template's guest may take to reach its agent.
const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Longest hull-vmm may take to write the snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a template cannot be made, found or removed.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("making the template: {0}")]
    Build(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TemplateError {
    let path = path.to_path_buf();
    move |source| TemplateError::Io { what, path, source }
}

/// A file a template was made from, as the file system identifies it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileId {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(path: &Path) -> Result<FileId, TemplateError> {
        let md = std::fs::metadata(path).map_err(io("cannot read", path))?;
        Ok(FileId {
            path: path.to_path_buf(),
            size: md.len(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            dev: md.dev(),
            ino: md.ino(),
        })
    }
}

/// What a template is made for (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateSpec {
    pub format: u32,
    pub kernel: FileId,
    pub initrd: FileId,
    pub vmm: FileId,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// The guest command line, without a hostname.
    pub cmdline: String,
    /// One entry per NIC: the MTU its virtio-net device offers, if any.
    pub net_mtus: Vec<Option<u16>>,
}

impl TemplateSpec {
    pub fn new(
        config: &RuntimeConfig,
        vcpus: u32,
        memory_mib: u64,
        cmdline: String,
        net_mtus: Vec<Option<u16>>,
    ) -> Result<TemplateSpec, TemplateError> {
        Ok(TemplateSpec {
            format: TEMPLATE_FORMAT,
            kernel: FileId::of(&config.kernel)?,
            initrd: FileId::of(&config.initrd)?,
            vmm: FileId::of(&config.vmm)?,
            vcpus,
            memory_mib,
            cmdline,
            net_mtus,
        })
    }

    /// The template's key: the SHA-256 of the spec, in hex (32 digits are plenty).
    pub fn key(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = Sha256::digest(&json);
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// What `template.json` holds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TemplateMeta {
    pub key: String,
    pub spec: TemplateSpec,
    /// When it was made (seconds since the epoch).
    pub made: u64,
    /// How long the guest took to reach its agent, and the snapshot to be written (ms).
    pub boot_ms: u64,
    pub snapshot_ms: u64,
}

/// A template ready to restore from.
#[derive(Clone, Debug)]
pub struct Template {
    pub dir: PathBuf,
    pub meta: TemplateMeta,
}

impl Template {
    /// hull-vmm's `restore_from`.
    pub fn snapshot_dir(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_DIR)
    }
}

/// An exclusive `flock` on `<dir>/<key>.lock`, released when dropped (the file is held only
/// for its lock).
struct KeyLock(#[allow(dead_code)] File);

impl KeyLock {
    /// `<dir>/<key>.lock`, made if missing. Lock files are never removed: a process waiting
    /// on one must lock the file the next one will lock too.
    fn open(dir: &Path, key: &str) -> Result<(File, PathBuf), TemplateError> {
        let path = dir.join(format!("{key}.lock"));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io("cannot open", &path))?;
        Ok((f, path))
    }

    /// The lock, waited for.
    async fn acquire(dir: &Path, key: &str) -> Result<KeyLock, TemplateError> {
        let (f, path) = Self::open(dir, key)?;
        // Blocks while another process makes or removes this template: off the async threads.
        // The file moves into the task, so its descriptor stays open for the call whatever
        // happens to this future.
        let locked = tokio::task::spawn_blocking(move || {
            // SAFETY: flock(2) on the descriptor of `f`, which the closure owns for the call.
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if r == 0 {
                Ok(f)
            } else {
                Err(std::io::Error::last_os_error())
            }
        })
        .await
        .map_err(|e| TemplateError::Build(format!("lock task: {e}")))?;
        Ok(KeyLock(locked.map_err(io("cannot lock", &path))?))
    }

    /// The lock if nobody holds it now (`LOCK_NB`), `None` if somebody does.
    fn try_acquire(dir: &Path, key: &str) -> Result<Option<KeyLock>, TemplateError> {
        let (f, path) = Self::open(dir, key)?;
        // SAFETY: flock(2) on the descriptor of `f`, which lives across the call.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(KeyLock(f)));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Ok(None);
        }
        Err(io("cannot lock", &path)(e))
    }
}

/// Whether `key` can name a template: hex digits only (never a path).
fn is_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A template being made: its temporary directory and network namespace, removed when this is
/// dropped (a failed build, or a future dropped halfway) unless the directory was moved into
/// place. Its hull-vmm dies with the thread that launched it (`die_with_parent`), and
/// [`sweep`] removes what a killed process left.
struct Building {
    tmp: PathBuf,
    netns: Option<PathBuf>,
}

impl Drop for Building {
    fn drop(&mut self) {
        if let Some(ns) = self.netns.take() {
            if let Err(e) = crate::network::remove_own(&ns) {
                tracing::warn!(
                    "removing a template's network namespace {}: {e}",
                    ns.display()
                );
            }
        }
        if self.tmp.exists() {
            if let Err(e) = std::fs::remove_dir_all(&self.tmp) {
                tracing::warn!("removing {}: {e}", self.tmp.display());
            }
        }
    }
}

/// Removes what builds of processes that are gone left under `root` (`.b<pid>-<n>`
/// directories: a network namespace, sockets, a half-written snapshot).
fn sweep(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(".b")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        tracing::info!("removing {name}, left by a template build of process {pid}");
        let netns = e.path().join("netns");
        drop(Building {
            tmp: e.path(),
            netns: netns.exists().then_some(netns),
        });
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read_meta(dir: &Path) -> Option<TemplateMeta> {
    let text = std::fs::read(dir.join(META_FILE)).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Makes `<template_dir>` (root's alone) if it is missing.
fn template_root(config: &RuntimeConfig) -> Result<&Path, TemplateError> {
    use std::os::unix::fs::DirBuilderExt;
    let root = config.template_dir.as_path();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(io("cannot create the template directory", root))?;
    Ok(root)
}

/// The template for `spec`: the one made before, or one made now (see the module
/// documentation). Concurrent callers for one spec make it once.
pub async fn ensure(
    config: &RuntimeConfig,
    spec: &TemplateSpec,
) -> Result<Template, TemplateError> {
    let root = template_root(config)?;
    let key = spec.key();
    let dir = root.join(&key);
    if let Some(meta) = read_meta(&dir).filter(|m| &m.spec == spec) {
        return Ok(Template { dir, meta });
    }
    let _lock = KeyLock::acquire(root, &key).await?;
    if let Some(meta) = read_meta(&dir).filter(|m| &m.spec == spec) {
        return Ok(Template { dir, meta });
    }
    sweep(root);
    // A directory without a usable description is a leftover: made again.
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io("cannot remove", &dir))?;
    }
    // Short: hull-vmm's sockets are made in it (a Unix socket path has at most 107 bytes).
    static BUILDS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = BUILDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = root.join(format!(".b{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut building = Building {
        tmp: tmp.clone(),
        netns: None,
    };
    let meta = build(config, spec, &key, &mut building).await?;
    std::fs::rename(&tmp, &dir).map_err(io("cannot move the template to", &dir))?;
    tracing::info!(
        "template {key} made: boot to agent {} ms, snapshot {} ms",
        meta.boot_ms,
        meta.snapshot_ms
    );
    drop(_lock);
    if let Err(e) = remove_stale(config).await {
        tracing::warn!("removing stale templates: {e}");
    }
    Ok(Template { dir, meta })
}

/// Removes every template that no longer fits the files it was made from (see [`list`]);
/// returns their keys. A template whose lock is held (somebody makes or removes it now) is
/// left for a later call rather than waited for; one whose description names another key
/// than its directory is left alone.
pub async fn remove_stale(config: &RuntimeConfig) -> Result<Vec<String>, TemplateError> {
    let root = template_root(config)?;
    let mut removed = Vec::new();
    for (t, fits) in list(config)? {
        let key = &t.meta.key;
        if fits || !is_key(key) || t.dir.file_name() != Some(std::ffi::OsStr::new(key)) {
            continue;
        }
        let Some(_lock) = KeyLock::try_acquire(root, key)? else {
            continue;
        };
        match read_meta(&t.dir) {
            Some(m) if m.made == t.meta.made && m.spec == t.meta.spec => {
                // One that cannot be removed is named and the others are still collected.
                match std::fs::remove_dir_all(&t.dir) {
                    Ok(()) => {
                        tracing::info!(
                            "template {key} removed: the kernel, initramfs or hull-vmm it was \
                             made from changed"
                        );
                        removed.push(key.clone());
                    }
                    Err(e) => tracing::warn!("cannot remove stale template {key}: {e}"),
                }
            }
            _ => {}
        }
    }
    Ok(removed)
}

/// Removes `t` if it is still the template under its key (a template made since by another
/// sandbox is left alone). Returns whether it removed it.
pub async fn remove_if_same(config: &RuntimeConfig, t: &Template) -> Result<bool, TemplateError> {
    let root = template_root(config)?;
    let _lock = KeyLock::acquire(root, &t.meta.key).await?;
    match read_meta(&t.dir) {
        Some(m) if m.made == t.meta.made && m.spec == t.meta.spec => {
            std::fs::remove_dir_all(&t.dir).map_err(io("cannot remove", &t.dir))?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Removes the template `key` (under its lock). Sandboxes restored from it keep their mapping
/// of its memory file; new ones make it again.
pub async fn remove(config: &RuntimeConfig, key: &str) -> Result<bool, TemplateError> {
    if !is_key(key) {
        return Err(TemplateError::Build(format!(
            "{key:?} is not a template key (hex digits, see `hull template list`)"
        )));
    }
    let root = template_root(config)?;
    let _lock = KeyLock::acquire(root, key).await?;
    let dir = root.join(key);
    if !dir.exists() {
        return Ok(false);
    }
    std::fs::remove_dir_all(&dir).map_err(io("cannot remove", &dir))?;
    Ok(true)
}

/// Every template under `template_dir`, with whether it fits the current kernel, initramfs
/// and hull-vmm (a template that does not is never used again: `remove` it).
pub fn list(config: &RuntimeConfig) -> Result<Vec<(Template, bool)>, TemplateError> {
    let root = config.template_dir.as_path();
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("cannot list", root)(e)),
    };
    let current = |f: &FileId| FileId::of(&f.path).is_ok_and(|now| &now == f);
    let mut out = Vec::new();
    for e in entries.flatten() {
        let dir = e.path();
        if !dir.is_dir() || e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if let Some(meta) = read_meta(&dir) {
            let fits = current(&meta.spec.kernel)
                && current(&meta.spec.initrd)
                && current(&meta.spec.vmm)
                && meta.spec.format == TEMPLATE_FORMAT;
            out.push((Template { dir, meta }, fits));
        }
    }
    out.sort_by(|a, b| a.0.meta.key.cmp(&b.0.meta.key));
    Ok(out)
}

/// Boots the template's VM in `tmp`, waits for its agent, snapshots it.
async fn build(
    config: &RuntimeConfig,
    spec: &TemplateSpec,
    key: &str,
    building: &mut Building,
) -> Result<TemplateMeta, TemplateError> {
    let tmp = building.tmp.clone();
    let tmp = tmp.as_path();
    use std::os::unix::fs::DirBuilderExt;
    let mkdir = |p: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(p)
            .map_err(io("cannot create", p))
    };
    let snapshot = tmp.join(SNAPSHOT_DIR);
    let share = tmp.join("share");
    for d in [&snapshot, &share] {
        mkdir(d)?;
    }
    let mut vm = VmConfig::new(spec.kernel.path.clone());
    vm.initrd = Some(spec.initrd.path.clone());
    vm.vcpus = spec.vcpus;
    vm.memory_mib = spec.memory_mib;
    vm.cmdline = spec.cmdline.clone();
    vm.jail = config.jail.config();
    let uds = tmp.join("v.sock");
    vm.vsock = Some(VsockConfig {
        uds_path: uds.clone(),
        guest_cid: GUEST_CID,
    });
    let api = tmp.join("api.sock");
    vm.api_socket = Some(api.clone());
    vm.serial = SerialConfig::File(tmp.join("console.log"));
    // The sandbox's devices, as a sandbox has them (a restore needs the same set).
    let rootfs = share.join(crate::share::SHARE_ROOTFS);
    mkdir(&rootfs)?;
    vm.fs = crate::sandbox::share_devices(&share, &rootfs);
    vm.snapshot_to = Some(snapshot);

    let netns = tmp.join("netns");
    let taps = if spec.net_mtus.is_empty() {
        Vec::new()
    } else {
        let taps = crate::network::create_taps(&netns, spec.net_mtus.len())
            .map_err(|e| TemplateError::Build(format!("the template's taps: {e}")))?;
        building.netns = Some(netns.clone());
        taps
    };
    for (tap, mtu) in taps.iter().zip(&spec.net_mtus) {
        let mut net = NetConfig::new(tap.name.clone());
        net.mac = tap.mac.parse().ok();
        net.mtu = *mtu;
        // A vhost-net device's queue positions are in the host kernel, where a snapshot
        // cannot reach them: the template runs on hull-vmm's own device, and a sandbox
        // restored from it on whichever backend its configuration chooses.
        net.backend = hull_vmm_api::NetBackend::Userspace;
        vm.net.push(net);
    }
    let result = boot_and_snapshot(
        config,
        &vm,
        tmp,
        &uds,
        &api,
        (!taps.is_empty()).then_some(netns.as_path()),
    )
    .await;
    // The namespace goes now (a template keeps none); a failure to remove it fails the build.
    if let Some(ns) = building.netns.take() {
        crate::network::remove_own(&ns).map_err(|e| {
            TemplateError::Build(format!("removing the template's network namespace: {e}"))
        })?;
    }
    let (boot_ms, snapshot_ms) = result?;
    let meta = TemplateMeta {
        key: key.to_string(),
        spec: spec.clone(),
        made: now_secs(),
        boot_ms,
        snapshot_ms,
    };
    // Only what a restore needs stays: the console and hull-vmm's files go.
    let _ = std::fs::remove_file(tmp.join("console.log"));
    let _ = std::fs::remove_dir_all(tmp.join("vmm"));
    let _ = std::fs::remove_dir(tmp.join("share").join(crate::share::SHARE_ROOTFS));
    let _ = std::fs::remove_dir(tmp.join("share"));
    let path = tmp.join(META_FILE);
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| TemplateError::Build(e.to_string()))?;
    std::fs::write(&path, json).map_err(io("cannot write", &path))?;
    Ok(meta)
}

async fn boot_and_snapshot(
    config: &RuntimeConfig,
    vm: &VmConfig,
    tmp: &Path,
    uds: &Path,
    api: &Path,
    netns: Option<&Path>,
) -> Result<(u64, u64), TemplateError> {
    let build = |e: String| TemplateError::Build(e);
    let started = Instant::now();
    let mut vmm = VmmProcess::launch_with(
        &config.vmm,
        vm,
        &tmp.join("vmm"),
        &Launch {
            env: &[("HULL_LOG", config.log_level.as_str())],
            cgroup: None,
            netns,
            die_with_parent: true,
        },
    )
    .map_err(|e| build(e.to_string()))?;
    let connect = AgentClient::connect_retry(Endpoint::vm(uds), BOOT_TIMEOUT);
    tokio::pin!(connect);
    let agent = loop {
        tokio::select! {
            r = &mut connect => break r.map_err(|e| build(format!("the agent did not answer: {e}")))?,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if let Some(e) = vmm.try_wait().map_err(|e| build(e.to_string()))? {
                    return Err(build(format!("hull-vmm ended: {}: {}", e.exit, vmm.log())));
                }
            }
        }
    };
    agent
        .health()
        .await
        .map_err(|e| build(format!("the agent: {e}")))?;
    // The connection goes before the snapshot: a restored guest starts without it.
    drop(agent);
    let boot_ms = started.elapsed().as_millis() as u64;
    let t = Instant::now();
    let api = api.to_path_buf();
    let reply = tokio::task::spawn_blocking(move || {
        crate::vmm::api_request_within(&api, r#"{"action":"snapshot"}"#, SNAPSHOT_TIMEOUT)
    })
    .await
    .map_err(|e| build(format!("snapshot task: {e}")))?
    .map_err(|e| build(format!("snapshot: {e}")))?;
    if !reply.contains(r#""ok":true"#) {
        return Err(build(format!("snapshot refused: {reply}")));
    }
    let exited = tokio::task::spawn_blocking(move || {
        let r = vmm.wait_timeout(SNAPSHOT_TIMEOUT);
        (r, vmm)
    })
    .await
    .map_err(|e| build(format!("wait task: {e}")))?;
    match exited {
        (Ok(Some(e)), _) if e.status.success() => {}
        (Ok(Some(e)), vmm) => return Err(build(format!("hull-vmm: {}: {}", e.exit, vmm.log()))),
        (Ok(None), _) => return Err(build("hull-vmm did not stop after the snapshot".into())),
        (Err(e), _) => return Err(build(e.to_string())),
    }
    Ok((boot_ms, t.elapsed().as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration whose kernel, initramfs and hull-vmm are small files in `dir`.
    fn config(dir: &Path) -> RuntimeConfig {
        RuntimeConfig {
            kernel: dir.join("k"),
            initrd: dir.join("i"),
            vmm: dir.join("v"),
            template_dir: dir.join("templates"),
            ..RuntimeConfig::default()
        }
    }

    fn spec(dir: &Path) -> TemplateSpec {
        for f in ["k", "i", "v"] {
            std::fs::write(dir.join(f), f).unwrap();
        }
        TemplateSpec::new(
            &config(dir),
            1,
            256,
            "console=ttyS0".into(),
            vec![Some(1500)],
        )
        .unwrap()
    }

    #[test]
    fn the_key_changes_with_anything_a_template_is_made_from() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        assert_eq!(s.key(), s.clone().key());
        assert_eq!(s.key().len(), 32);
        let variants = [
            TemplateSpec {
                vcpus: 2,
                ..s.clone()
            },
            TemplateSpec {
                memory_mib: 512,
                ..s.clone()
            },
            TemplateSpec {
                cmdline: "x".into(),
                ..s.clone()
            },
            TemplateSpec {
                net_mtus: vec![],
                ..s.clone()
            },
            TemplateSpec {
                net_mtus: vec![None],
                ..s.clone()
            },
            TemplateSpec {
                format: TEMPLATE_FORMAT + 1,
                ..s.clone()
            },
        ];
        for v in &variants {
            assert_ne!(v.key(), s.key(), "{v:?}");
        }
        // A rebuilt kernel (new contents, new inode) is another template.
        std::thread::sleep(Duration::from_millis(10));
        let k = dir.path().join("k");
        std::fs::remove_file(&k).unwrap();
        std::fs::write(&k, "a new kernel").unwrap();
        assert_ne!(spec(dir.path()).key(), s.key());
    }

    #[tokio::test]
    async fn listing_and_removing_templates() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        let config = config(dir.path());
        assert!(list(&config).unwrap().is_empty());
        // A template as `ensure` leaves one (its snapshot is hull-vmm's business).
        let t = config.template_dir.join(s.key());
        std::fs::create_dir_all(t.join(SNAPSHOT_DIR)).unwrap();
        let meta = TemplateMeta {
            key: s.key(),
            spec: s.clone(),
            made: 1,
            boot_ms: 2,
            snapshot_ms: 3,
        };
        std::fs::write(t.join(META_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
        let found = ensure(&config, &s).await.unwrap();
        assert_eq!(found.dir, t, "an existing template is used, not made again");
        let l = list(&config).unwrap();
        assert_eq!(l.len(), 1);
        assert!(l[0].1, "it fits the current files");
        // The kernel changes: the template no longer fits, and is collected as stale (a
        // template of the current files stays).
        std::fs::write(dir.path().join("k"), "changed kernel").unwrap();
        assert!(!list(&config).unwrap()[0].1);
        let s2 = spec(dir.path());
        let t2 = config.template_dir.join(s2.key());
        std::fs::create_dir_all(t2.join(SNAPSHOT_DIR)).unwrap();
        let meta2 = TemplateMeta {
            key: s2.key(),
            spec: s2.clone(),
            ..meta.clone()
        };
        std::fs::write(t2.join(META_FILE), serde_json::to_vec(&meta2).unwrap()).unwrap();
        // Held by somebody (a build or a removal of it): left for later, not waited for.
        let held = KeyLock::try_acquire(&config.template_dir, &s.key())
            .unwrap()
            .unwrap();
        assert!(KeyLock::try_acquire(&config.template_dir, &s.key())
            .unwrap()
            .is_none());
        assert!(remove_stale(&config).await.unwrap().is_empty());
        assert!(t.exists());
        drop(held);
        assert_eq!(remove_stale(&config).await.unwrap(), vec![s.key()]);
        assert!(!t.exists() && t2.exists());
        assert!(remove_stale(&config).await.unwrap().is_empty());
        std::fs::create_dir_all(t.join(SNAPSHOT_DIR)).unwrap();
        std::fs::write(t.join(META_FILE), serde_json::to_vec(&meta).unwrap()).unwrap();
        let e = remove(&config, "../etc").await.unwrap_err();
        assert!(e.to_string().contains("not a template key"), "{e}");
        assert!(remove(&config, &s.key()).await.unwrap());
        assert!(!t.exists());
        assert!(!remove(&config, &s.key()).await.unwrap());
    }

    #[tokio::test]
    async fn a_template_that_cannot_be_made_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = spec(dir.path());
        // Its hull-vmm is not a program: the launch fails.
        let config = config(dir.path());
        let spec0 = TemplateSpec {
            net_mtus: vec![],
            ..s
        };
        let e = ensure(&config, &spec0).await.unwrap_err();
        assert!(e.to_string().contains("making the template"), "{e}");
        let left: Vec<_> = std::fs::read_dir(&config.template_dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| !n.to_string_lossy().ends_with(".lock"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn what_a_dead_build_left_is_swept_and_a_live_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        // No process has this pid (above the kernel's pid_max limit of 2^22).
        let dead = dir.path().join(".b4194305-0");
        let live = dir.path().join(format!(".b{}-7", std::process::id()));
        for d in [&dead, &live] {
            std::fs::create_dir_all(d.join("snapshot")).unwrap();
            std::fs::write(d.join("snapshot/memory"), "x").unwrap();
        }
        let other = dir.path().join("0123");
        std::fs::create_dir(&other).unwrap();
        sweep(dir.path());
        assert!(!dead.exists());
        assert!(live.exists() && other.exists());
    }
}
