//! Sandboxes: one microVM each, with its `hull-vmm` process, one virtio-fs share, the agent
//! connection, the host cgroup its VM was started in, and a state directory ([`Layout`] says
//! where everything is).
//!
//! A sandbox owns what it makes: the VMM (its exit too: [`Sandbox::watch_vmm`]), the share and
//! what is mounted in it, the network it plumbed, its sockets and its host cgroup. Every path
//! out (a failed create, [`Sandbox::destroy`], [`cleanup`] after a crash) removes all of it.
//!
//! Several processes use one sandbox over its life (each CLI command is a new process; a shim
//! can restart), so [`Sandbox::create`] leaves hull-vmm running on its own and everything needed
//! to reattach is on disk: [`Sandbox::load`]. [`Sandbox::stop`] asks the agent, then the VMM's
//! API, then SIGKILL; [`cleanup`] removes whatever is left (the VMM, mounts under the
//! directory, the directory) and works whatever died halfway. A create that fails leaves
//! nothing behind.

mod layout;
mod options;
mod state;
mod watch;

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use hull_agent_protocol::NetworkConfig;
use hull_agent_protocol::{MountOption, MountRequest};
use hull_vmm_api::{CachePolicy, FsConfig, NetConfig, SerialConfig, VmConfig, VsockConfig};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::agent::{AgentClient, Endpoint};
use crate::config::{RuntimeConfig, StartPath};
use crate::template;
use crate::vmm::api::exit::VmmExit;
use crate::vmm::{Launch, VmmProcess};
pub use layout::{
    sandbox_name, Layout, LOCK_FILE, MAX_SOCKET_PATH, SHARE_DIR, SHARE_RW_DIR, SOCKET_ROOT,
    STATE_FILE,
};
pub use options::{
    AgentCalls, SandboxNetwork, SandboxOptions, MIN_MEMORY_MIB, VM_MEMORY_MIB, VM_VCPUS,
};
pub use state::{process_start_time, process_stopped, OwnNetwork, SandboxState, StateLock};
pub use watch::VmmWatch;

/// The virtio-fs tag of the sandbox's share.
pub const SHARE_TAG: &str = "hull-shared";
/// Where the agent mounts the share in the guest.
pub const GUEST_SHARE_DIR: &str = "/run/hull/shared";
/// The tag of the root file systems' share (see [`crate::share`]).
pub const ROOTFS_TAG: &str = "hull-rootfs";
/// Where the guest mounts the root file systems' share.
pub const GUEST_ROOTFS_DIR: &str = "/run/hull/rootfs";
/// The guest's vsock context id.
const GUEST_CID: u64 = 3;
/// Longest a sandbox id may be.
pub const MAX_ID_LEN: usize = hull_agent_protocol::MAX_CONTAINER_ID;
/// How long a guest may take to boot to its agent (generous: nested emulation is slow).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long hull-vmm gets to answer its API (a stats request on load, a shutdown on stop)
/// before it is taken for hung. Its API thread answers whatever the guest does.
const VMM_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong with a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    Cgroup(#[from] crate::host_cgroup::CgroupError),
    #[error("invalid sandbox id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("sandbox id {0:?} is already in use")]
    IdInUse(String),
    #[error("sandbox {0:?} does not exist")]
    NotFound(String),
    #[error("{what}: {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    BadState { path: PathBuf, reason: String },
    #[error("{what} {}: {reason}", path.display())]
    Missing {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("sandbox directory {} is too deep for its sockets ({len} bytes, at most {MAX_SOCKET_PATH}): use a shorter --root or id", path.display())]
    PathTooLong { path: PathBuf, len: usize },
    #[error(transparent)]
    Vmm(#[from] crate::vmm::VmmError),
    #[error("pod network: {0}")]
    Network(#[from] crate::network::NetworkError),
    #[error("hull-vmm stopped while the guest was booting ({exit}); its log:\n{log}")]
    VmmDied { exit: String, log: String },
    #[error("the guest agent did not come up: {0}")]
    AgentBoot(#[source] crate::agent::Error),
    #[error("guest agent: {0}")]
    Agent(#[from] crate::agent::Error),
    #[error("the sandbox's VM is not running")]
    NotRunning,
    #[error("the sandbox's guest agent cannot be reached: {0}")]
    AgentUnavailable(String),
    #[error("cannot remove what is in its share: {0}")]
    Share(#[from] crate::share::ShareError),
    #[error("annotation {key}={value:?}: {reason}")]
    BadAnnotation {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot {what} (pid {pid}): {source}")]
    Signal {
        what: &'static str,
        pid: u32,
        #[source]
        source: nix::Error,
    },
}

/// One sandbox, attached: its state, its lock (held for this handle's life) and its agent.
pub struct Sandbox {
    layout: Layout,
    state: SandboxState,
    agent: Option<AgentClient>,
    /// Why the agent could not be reached when the sandbox was loaded.
    agent_error: Option<String>,
    /// hull-vmm runs but answers nothing (stopped, or its API silent): nothing is asked of it
    /// any more, stopping it is a SIGKILL.
    vmm_hung: bool,
    _lock: StateLock,
}

/// The sandbox's virtio-fs devices: the share (`view`, tag [`SHARE_TAG`]) and the root file
/// systems' share (`rootfs_view`, tag [`ROOTFS_TAG`]); see [`crate::share`].
pub(crate) fn share_devices(view: &Path, rootfs_view: &Path) -> Vec<FsConfig> {
    // The host changes the share (volumes, bundles) while the guest runs: nothing cached.
    let mut share = FsConfig::new(SHARE_TAG, view);
    share.cache = CachePolicy::Never;
    // A root file system is the guest's own (the host writes there only to copy files in, and
    // never reuses a name): names and attributes cached for a second, file data kept while
    // the file is unchanged (close-to-open), as virtiofsd's and Kata's `auto`.
    let mut rootfs = FsConfig::new(ROOTFS_TAG, rootfs_view);
    rootfs.cache = CachePolicy::Auto;
    vec![share, rootfs]
}

/// Checks a sandbox id: the same set as a container id ([`hull_agent_protocol::check_container_id`],
/// what runc accepts: letters, digits, `_ + - .`, not `.` or `..`, at most 128 bytes), so a
/// name the runtime takes is one the agent takes too, checked before anything starts.
pub fn validate_id(id: &str) -> Result<(), SandboxError> {
    hull_agent_protocol::check_container_id(id).map_err(|e| SandboxError::InvalidId {
        id: id.to_string(),
        reason: e
            .message
            .split_once(": ")
            .map_or(e.message.clone(), |(_, r)| r.to_string()),
    })
}

fn check_file(what: &'static str, path: &Path) -> Result<(), SandboxError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(SandboxError::Missing {
            what,
            path: path.to_path_buf(),
            reason: "is not a regular file".into(),
        }),
        Err(e) => Err(SandboxError::Missing {
            what,
            path: path.to_path_buf(),
            reason: format!("{e} (set it in /etc/hull/config.toml or run `make install`)"),
        }),
    }
}

/// Creates directory `path` with mode 0700 (and its missing parents too, with `recursive`; an
/// existing directory is fine then).
fn private_dir(path: &Path, recursive: bool) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(recursive)
        .mode(0o700)
        .create(path)
}

/// Writes the record of the namespace whose taps the cleanup removes.
fn record_netns(layout: &Layout, ns: &Path) -> Result<(), SandboxError> {
    let record = layout.netns_record();
    std::fs::write(&record, ns.as_os_str().as_bytes()).map_err(|source| SandboxError::Io {
        what: "cannot record the network namespace",
        path: record.clone(),
        source,
    })
}

/// The VMM's NIC on `tap`.
fn net_config(tap: &crate::network::TapDevice) -> Result<NetConfig, SandboxError> {
    let mut net = NetConfig::new(tap.name.clone());
    net.mac = Some(tap.mac.parse().map_err(|e| {
        SandboxError::Network(crate::network::NetworkError::Unsupported {
            name: tap.name.clone(),
            reason: format!("MAC {}: {e}", tap.mac),
        })
    })?);
    net.mtu = u16::try_from(tap.mtu).ok();
    Ok(net)
}

/// The hostname a template's guest boots with (a restored guest is given its own).
const TEMPLATE_HOSTNAME: &str = "hull";

/// The guest's kernel command line: the console, `quiet` (every console byte is a VM exit),
/// `dummy.numdummies=0` (the guest kernel's dummy driver is built in, since a privileged
/// container may add dummy links, and would otherwise make a `dummy0` at boot, which a stock
/// kernel's module only does when it is loaded), the hostname and the agent's call policy.
fn guest_cmdline(hostname: &str, opts: &SandboxOptions) -> String {
    format!(
        "console=ttyS0 quiet dummy.numdummies=0 hull.hostname={hostname} {}={}",
        hull_agent_protocol::CALL_POLICY_PARAM,
        opts.agent_calls.policy().as_param()
    )
}

/// What the template of a sandbox with `opts`, `vcpus`, `memory_mib` and NICs of `net_mtus`
/// is made for (`hull template build` makes one ahead of the first sandbox).
pub fn template_spec(
    config: &RuntimeConfig,
    opts: &SandboxOptions,
    vcpus: u32,
    memory_mib: u64,
    net_mtus: Vec<Option<u16>>,
) -> Result<template::TemplateSpec, template::TemplateError> {
    template::TemplateSpec::new(
        config,
        vcpus,
        memory_mib,
        guest_cmdline(TEMPLATE_HOSTNAME, opts),
        net_mtus,
    )
}

/// The sandbox's id as a guest hostname (the kernel takes at most 64 bytes).
fn guest_hostname(id: &str) -> String {
    let mut end = id.len().min(hull_agent_protocol::MAX_HOSTNAME);
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    id[..end].to_string()
}

/// 64 bytes from the host's random number generator, for a restored guest's.
fn host_entropy() -> Result<Vec<u8>, SandboxError> {
    let mut b = vec![0u8; 64];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(|source| SandboxError::Io {
            what: "cannot read",
            path: PathBuf::from("/dev/urandom"),
            source,
        })?;
    Ok(b)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Sandbox {
    /// Creates sandbox `id` under `root`: starts hull-vmm (which outlives the caller), waits
    /// for the agent, sets the guest clock and mounts the share. On any failure, whatever was
    /// made is removed again.
    pub async fn create(
        config: &RuntimeConfig,
        root: &Path,
        id: &str,
        opts: &SandboxOptions,
    ) -> Result<Sandbox, SandboxError> {
        validate_id(id)?;
        for (what, p) in [
            ("guest kernel", &config.kernel),
            ("guest initramfs", &config.initrd),
            ("hull-vmm", &config.vmm),
        ] {
            check_file(what, p)?;
        }
        let layout = Layout::new(root, id);
        layout.check_sockets()?;
        // The root and each sandbox's directory are root's alone (0700): what is in them (the
        // agent's socket: a root shell in the guest) is nobody else's.
        private_dir(root, true).map_err(|source| SandboxError::Io {
            what: "cannot create the state root",
            path: root.to_path_buf(),
            source,
        })?;
        match private_dir(layout.dir(), false) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SandboxError::IdInUse(id.to_string()))
            }
            Err(source) => {
                return Err(SandboxError::Io {
                    what: "cannot create the sandbox directory",
                    path: layout.dir().to_path_buf(),
                    source,
                })
            }
        }
        let lock = match StateLock::acquire(layout.dir()) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(layout.dir());
                return Err(e);
            }
        };
        // hull-vmm always runs in a cgroup of its own: the spec's, else one made for it.
        let mut opts = opts.clone();
        if opts.host_cgroup.is_none() {
            match crate::host_cgroup::prepare_default(&layout.default_cgroup_name()) {
                Ok(cg) => opts.host_cgroup = cg,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(layout.dir());
                    return Err(e.into());
                }
            }
        }
        // On record before hull-vmm starts: a creator killed between the start and the state
        // file leaves a VM that the cleanup finds in this cgroup.
        if let Some(cg) = &opts.host_cgroup {
            let record = layout.cgroup_record();
            let written = crate::vmm::private_file(&record)
                .and_then(|mut f| std::io::Write::write_all(&mut f, cg.as_os_str().as_bytes()));
            if let Err(source) = written {
                let _ = std::fs::remove_dir_all(layout.dir());
                crate::host_cgroup::remove_dir(cg);
                return Err(SandboxError::Io {
                    what: "cannot record the sandbox's cgroup",
                    path: record,
                    source,
                });
            }
        }
        let opts = &opts;
        match Sandbox::boot(config, &layout, id, opts).await {
            Ok((state, agent)) => Ok(Sandbox {
                layout,
                state,
                agent: Some(agent),
                agent_error: None,
                vmm_hung: false,
                _lock: lock,
            }),
            Err(e) => {
                if let Err(c) = cleanup_dir(&layout) {
                    tracing::warn!("cleaning up after a failed create: {c}");
                }
                // The cgroup is the sandbox's from the start (the state that records it may
                // not have been written).
                if let Some(cg) = &opts.host_cgroup {
                    crate::host_cgroup::remove_dir(cg);
                }
                Err(e)
            }
        }
    }

    async fn boot(
        config: &RuntimeConfig,
        layout: &Layout,
        id: &str,
        opts: &SandboxOptions,
    ) -> Result<(SandboxState, AgentClient), SandboxError> {
        let t0 = Instant::now();
        // The host's side, and the guest's read-only view of it that virtio-fs exports.
        let share = layout.share();
        share.create()?;
        let vcpus = opts.vcpus.unwrap_or(config.vcpus);
        let memory_mib = opts.memory_mib.unwrap_or(config.memory_mib);
        if layout.separate_sockets() {
            let sockets = layout.socket_dir();
            private_dir(sockets, true).map_err(|source| SandboxError::Io {
                what: "cannot create the sandbox's socket directory",
                path: sockets.to_path_buf(),
                source,
            })?;
        }
        let uds = layout.vsock_socket();
        let mut vm = VmConfig::new(config.kernel.clone());
        vm.jail = config.jail.config();
        vm.initrd = Some(config.initrd.clone());
        vm.vcpus = vcpus;
        vm.memory_mib = memory_mib;
        // `dummy.numdummies=0`: the guest kernel's dummy driver is built in (a privileged
        // container may add dummy links), and would otherwise make a `dummy0` at boot, which a
        // stock kernel's module only does when it is loaded.
        vm.cmdline = guest_cmdline(id, opts);
        vm.vsock = Some(VsockConfig {
            uds_path: uds.clone(),
            guest_cid: GUEST_CID,
        });
        vm.api_socket = Some(layout.api_socket());
        // A file hull-vmm caps (serial_max_bytes), so a guest printing forever cannot fill the
        // host's disk.
        vm.serial = SerialConfig::File(layout.console_log());
        vm.fs = share_devices(share.view(), &share.rootfs_view());
        let mut own_network = None;
        let (network, netns) = match &opts.network {
            SandboxNetwork::Join(ns) => {
                // Recorded first, so that a cleanup after a crash anywhere below removes the
                // taps and filters too.
                record_netns(layout, ns)?;
                let cfg = crate::network::inspect(Some(ns))?;
                for tap in crate::network::plumb(ns, &cfg)? {
                    vm.net.push(net_config(&tap)?);
                }
                (cfg, Some(ns.clone()))
            }
            SandboxNetwork::Own => {
                let ns = layout.own_netns();
                record_netns(layout, &ns)?;
                let tap = crate::network::create_own(&ns)?;
                let mut net = net_config(&tap)?;
                // The interface's MTU is not known yet: the guest sets it.
                net.mtu = None;
                vm.net.push(net);
                own_network = Some(OwnNetwork {
                    netns: ns.clone(),
                    tap: tap.name,
                });
                (NetworkConfig::default(), Some(ns))
            }
            SandboxNetwork::Loopback => (NetworkConfig::default(), None),
        };
        for n in &mut vm.net {
            n.backend = config.net_backend;
        }
        let mut network = network;
        tracing::debug!(
            "sandbox {id}: share and network prepared after {:?}",
            t0.elapsed()
        );
        let template = if config.start == StartPath::Snapshot {
            Self::template_for(config, id, opts, &vm).await
        } else {
            None
        };
        let start = |vm: VmConfig| {
            let (netns, own) = (netns.clone(), own_network.clone());
            async move { Self::start_vm(config, layout, id, opts, &vm, netns.as_deref(), own).await }
        };
        let mut restored = false;
        let started = match &template {
            Some(t) => {
                let mut warm = vm.clone();
                warm.restore_from = Some(t.snapshot_dir());
                warm.cmdline = t.meta.spec.cmdline.clone();
                // The guest's NICs have the template's MACs: the agent finds each by it.
                for (i, n) in warm.net.iter_mut().enumerate() {
                    n.mac = template::placeholder_mac(i).parse().ok();
                }
                // Before anything else: a restored guest shares the template's RNG state,
                // clock and hostname until it is told its own.
                tracing::debug!("sandbox {id}: template ready after {:?}", t0.elapsed());
                let attempt = async {
                    let (vmm, state, agent) = start(warm).await?;
                    tracing::debug!(
                        "sandbox {id}: agent of the restored VM after {:?}",
                        t0.elapsed()
                    );
                    agent
                        .set_identity(&guest_hostname(id), SystemTime::now(), host_entropy()?)
                        .await?;
                    Ok::<_, SandboxError>((vmm, state, agent))
                };
                match attempt.await {
                    Ok(s) => {
                        restored = true;
                        Some(s)
                    }
                    Err(e) => {
                        // Whatever failed (the snapshot refused, the VMM gone, the guest not
                        // answering), this sandbox boots: its VMM from the attempt is gone
                        // (killed with its handle), and so are its sockets.
                        let refused = matches!(&e, SandboxError::VmmDied { exit, .. }
                            if *exit == VmmExit::SnapshotRefused.to_string());
                        tracing::warn!(
                            "sandbox {id}: not restored from template {}, booting instead: {e}",
                            t.meta.key
                        );
                        for sock in [layout.vsock_socket(), layout.api_socket()] {
                            let _ = std::fs::remove_file(sock);
                        }
                        // A template hull-vmm refuses is made again by the next sandbox.
                        if refused {
                            if let Err(e) = template::remove_if_same(config, t).await {
                                tracing::warn!("removing template {}: {e}", t.meta.key);
                            }
                        }
                        None
                    }
                }
            }
            None => None,
        };
        let (vmm, state, agent) = match started {
            Some(s) => s,
            None => {
                let s = start(vm).await?;
                s.2.set_time(SystemTime::now()).await?;
                s
            }
        };
        tracing::debug!(
            "sandbox {id}: VM up with its identity after {:?}",
            t0.elapsed()
        );
        if restored {
            for (i, nic) in network.interfaces.iter_mut().enumerate() {
                nic.device_mac = Some(template::placeholder_mac(i));
            }
        }
        // A shared mount in the guest, as the host's volumes under the kubelet are: a
        // container's bind of it takes `shared`/`slave`/`private`/`unbindable` as under runc.
        for (tag, dir) in [(SHARE_TAG, GUEST_SHARE_DIR), (ROOTFS_TAG, GUEST_ROOTFS_DIR)] {
            let mut share = MountRequest::virtiofs(tag, dir);
            share.options.push(MountOption::Shared);
            agent.mount(share).await?;
        }
        // Before any container: the guest's NICs as the namespace had them (or loopback only).
        tracing::debug!("sandbox {id}: share mounted after {:?}", t0.elapsed());
        agent.configure_network(network).await?;
        tracing::debug!("sandbox {id}: network configured after {:?}", t0.elapsed());
        // From here on the VMM runs on its own: the state file is how it is found again.
        vmm.detach();
        Ok((state, agent))
    }

    /// Launches hull-vmm with `vm` and waits for the agent (not past hull-vmm's end: then
    /// [`SandboxError::VmmDied`] with its log). hull-vmm is on record (the state file) before
    /// the guest runs.
    async fn start_vm(
        config: &RuntimeConfig,
        layout: &Layout,
        id: &str,
        opts: &SandboxOptions,
        vm: &VmConfig,
        netns: Option<&Path>,
        own_network: Option<OwnNetwork>,
    ) -> Result<(VmmProcess, SandboxState, AgentClient), SandboxError> {
        let dir = layout.dir();
        let mut vmm = VmmProcess::launch_with(
            &config.vmm,
            vm,
            dir,
            &Launch {
                env: &[("HULL_LOG", config.log_level.as_str())],
                cgroup: opts.host_cgroup.as_deref(),
                netns,
                die_with_parent: false,
            },
        )?;

        // hull-vmm is on record before the guest runs: whatever kills this process from here
        // on (a Ctrl-C, containerd's create timeout), `delete --force` or `cleanup` finds the
        // VM and removes it.
        let pid = vmm.pid();
        let state = SandboxState {
            id: id.to_string(),
            vmm_pid: pid,
            vmm_start_time: process_start_time(pid).ok_or(SandboxError::NotRunning)?,
            vcpus: vm.vcpus,
            memory_mib: vm.memory_mib,
            created: now_secs(),
            own_network,
            host_cgroup: opts.host_cgroup.clone(),
        };
        state.write(dir)?;

        // Wait for the agent, but not past the VMM's death.
        let deadline = opts.boot_timeout.unwrap_or(DEFAULT_BOOT_TIMEOUT);
        let connect = AgentClient::connect_retry(Endpoint::vm(layout.vsock_socket()), deadline);
        tokio::pin!(connect);
        let agent = loop {
            tokio::select! {
                r = &mut connect => break r.map_err(SandboxError::AgentBoot)?,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    if let Some(e) = vmm.try_wait()? {
                        return Err(SandboxError::VmmDied { exit: e.exit.to_string(), log: vmm.log() });
                    }
                }
            }
        };
        Ok((vmm, state, agent))
    }

    /// The template this sandbox's VM is restored from (made now if it is the first), or None
    /// with a log line saying why it boots instead.
    async fn template_for(
        config: &RuntimeConfig,
        id: &str,
        opts: &SandboxOptions,
        vm: &VmConfig,
    ) -> Option<template::Template> {
        let spec = template_spec(
            config,
            opts,
            vm.vcpus,
            vm.memory_mib,
            vm.net.iter().map(|n| n.mtu).collect(),
        );
        let made = match spec {
            Ok(spec) => template::ensure(config, &spec).await,
            Err(e) => Err(e),
        };
        match made {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("sandbox {id}: no template, booting: {e}");
                None
            }
        }
    }

    /// Attaches to sandbox `id` under `root` (waiting for another command that holds its
    /// lock). The agent is connected if the VM runs and it answers; loading never fails because
    /// of the guest, so a sandbox whose VM died or is dying can still be stopped and cleaned up
    /// ([`Sandbox::agent`] then says why there is no agent).
    pub async fn load(root: &Path, id: &str) -> Result<Sandbox, SandboxError> {
        validate_id(id)?;
        let layout = Layout::new(root, id);
        if !layout.state_file().exists() {
            return Err(SandboxError::NotFound(id.to_string()));
        }
        let lock = StateLock::acquire(layout.dir())?;
        let state = SandboxState::read(layout.dir())?;
        let mut sb = Sandbox {
            layout,
            state,
            agent: None,
            agent_error: None,
            vmm_hung: false,
            _lock: lock,
        };
        if sb.vmm_running() {
            if let Some(why) = vmm_unresponsive(&sb.layout, sb.state.vmm_pid).await {
                tracing::warn!("sandbox {id}: {why}");
                sb.agent_error = Some(why);
                sb.vmm_hung = true;
                return Ok(sb);
            }
            let endpoint = Endpoint::vm(sb.layout.vsock_socket());
            match AgentClient::connect(endpoint, Duration::from_secs(30)).await {
                Ok(a) => sb.agent = Some(a),
                Err(e) => {
                    tracing::warn!("sandbox {id}: the agent cannot be reached: {e}");
                    sb.agent_error = Some(e.to_string());
                }
            }
        }
        Ok(sb)
    }

    /// The endpoint of the agent of sandbox `id` under `root`, without loading the sandbox or
    /// taking its lock: for a process that lives as long as a container process and must not
    /// hold the sandbox (the CLI's pid-file process). What it reaches is checked by the
    /// agent's handshake, and a sandbox that is gone is a connection error.
    pub fn agent_endpoint(root: &Path, id: &str) -> Result<Endpoint, SandboxError> {
        validate_id(id)?;
        Ok(Endpoint::vm(Layout::new(root, id).vsock_socket()))
    }

    pub fn id(&self) -> &str {
        &self.state.id
    }

    pub fn dir(&self) -> &Path {
        self.layout.dir()
    }

    /// Where everything of this sandbox is.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Moves `pid` (a host process that stands for one of the sandbox's containers, such as
    /// the CLI's pid-file process) into the host cgroup the VM was started in, if there is one.
    pub fn join_host_cgroup(&self, pid: u32) {
        if let Some(cg) = &self.state.host_cgroup {
            crate::host_cgroup::join_dir(cg, pid);
        }
    }

    /// Watches hull-vmm: the returned [`VmmWatch`] says once it has exited, and why (its exit
    /// decoded when this process started it, and the end of its log).
    pub fn watch_vmm(&self) -> VmmWatch {
        VmmWatch::start(&self.state, &self.layout)
    }

    pub fn state(&self) -> &SandboxState {
        &self.state
    }

    /// The share: what the host writes, and the guest sees read-only at [`GUEST_SHARE_DIR`].
    pub fn share(&self) -> crate::share::Share {
        self.layout.share()
    }

    /// The host's side of the share (the guest sees it at [`GUEST_SHARE_DIR`], read-only but for
    /// the mounts the host makes in it).
    pub fn share_dir(&self) -> PathBuf {
        self.layout.share().host_dir().to_path_buf()
    }

    /// The guest console so far.
    pub fn console(&self) -> String {
        std::fs::read(self.layout.console_log())
            .map(|b| String::from_utf8_lossy(&b).replace("\r\n", "\n"))
            .unwrap_or_default()
    }

    /// For a sandbox with a network namespace of its own ([`SandboxNetwork::Own`]), after the
    /// prestart hooks put the container's interface there: mirrors it into the VM's NIC and
    /// has the agent configure the guest (the NIC takes the interface's MAC, name, MTU,
    /// addresses and routes). Nothing to do for other sandboxes, or when the namespace has no
    /// interface (loopback only).
    pub async fn attach_network(&self) -> Result<(), SandboxError> {
        let Some(own) = &self.state.own_network else {
            return Ok(());
        };
        let cfg = crate::network::attach(&own.netns, &own.tap)?;
        if cfg.interfaces.is_empty() {
            return Ok(());
        }
        tracing::info!(
            sandbox = %self.state.id,
            interfaces = cfg.interfaces.len(),
            routes = cfg.routes.len(),
            "attaching the network the prestart hooks made"
        );
        self.agent()?.configure_network(cfg).await?;
        Ok(())
    }

    /// Whether this sandbox's hull-vmm (the same process, not a recycled pid) still runs.
    pub fn vmm_running(&self) -> bool {
        vmm_alive(&self.state)
    }

    /// The agent connection.
    pub fn agent(&self) -> Result<&AgentClient, SandboxError> {
        match (&self.agent, &self.agent_error) {
            (Some(a), _) => Ok(a),
            (None, Some(e)) if self.vmm_running() => Err(SandboxError::AgentUnavailable(e.clone())),
            (None, _) => Err(SandboxError::NotRunning),
        }
    }

    /// Kills hull-vmm with SIGKILL, and so the VM and everything in it: what a SIGKILL to a
    /// container must still do when its VM does not answer (the directory stays for
    /// [`Sandbox::destroy`] / [`cleanup`]).
    pub async fn kill_vm(&self) -> Result<(), SandboxError> {
        kill_vmm(&self.state)?;
        self.wait_vmm_gone(Duration::from_secs(10)).await;
        Ok(())
    }

    /// Stops the VM: the agent shuts the guest down; if the VMM is still there after `grace`,
    /// its API stops the VM at once; if even that fails, SIGKILL (at once for a VMM found hung
    /// on load). Leaves the directory for [`Sandbox::destroy`] / [`cleanup`].
    pub async fn stop(&mut self, grace: Duration) -> Result<(), SandboxError> {
        if self.vmm_hung {
            return self.kill_vm().await;
        }
        if let Some(agent) = self.agent.take() {
            if let Err(e) = agent.shutdown(Some(grace)).await {
                tracing::debug!("agent shutdown: {e}");
            }
        }
        if self.wait_vmm_gone(grace).await {
            return Ok(());
        }
        let api = self.layout.api_socket();
        if api.exists() {
            let line = serde_json::to_string(&hull_vmm_api::ApiRequest::Shutdown {
                timeout_ms: Some(0),
            })
            .unwrap_or_default();
            if let Err(e) = crate::vmm::api_request_within(&api, &line, VMM_PROBE_TIMEOUT) {
                tracing::debug!("API shutdown: {e}");
            }
            if self.wait_vmm_gone(Duration::from_secs(5)).await {
                return Ok(());
            }
        }
        kill_vmm(&self.state)?;
        self.wait_vmm_gone(Duration::from_secs(10)).await;
        Ok(())
    }

    /// Stops the VM (see [`Sandbox::stop`]) and removes everything.
    pub async fn destroy(mut self, grace: Duration) -> Result<(), SandboxError> {
        self.stop(grace).await?;
        cleanup_dir(&self.layout)
    }

    /// A sandbox handle over an existing directory (with `state`), without a VM: for tests of
    /// what is built on sandboxes, with a fake agent or none.
    #[cfg(test)]
    pub(crate) fn fake(dir: &Path, state: SandboxState, agent: Option<AgentClient>) -> Sandbox {
        Sandbox {
            layout: Layout::of_dir(dir),
            state,
            agent,
            agent_error: None,
            vmm_hung: false,
            _lock: StateLock::acquire(dir).expect("lock a test sandbox"),
        }
    }

    async fn wait_vmm_gone(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            reap(self.state.vmm_pid);
            if !self.vmm_running() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Reaps `pid` if it is a child of this process that has exited (a sandbox created by this
/// process); does nothing otherwise.
fn reap(pid: u32) {
    let _ = nix::sys::wait::waitpid(
        Pid::from_raw(pid as i32),
        Some(nix::sys::wait::WaitPidFlag::WNOHANG),
    );
}

/// Why the hull-vmm with `pid` of the sandbox in `dir` is taken for hung, if it is: it is
/// stopped (SIGSTOP), or its API does not answer a stats request within
/// [`VMM_PROBE_TIMEOUT`]. A VMM answers its API whatever its guest does, so a silent API means
/// the VMM itself is stuck; asking its agent anything would only wait for a time-out.
async fn vmm_unresponsive(layout: &Layout, pid: u32) -> Option<String> {
    if process_stopped(pid) {
        return Some(format!(
            "hull-vmm (pid {pid}) is stopped and answers nothing"
        ));
    }
    let api = layout.api_socket();
    if !api.exists() {
        return None;
    }
    let line = serde_json::to_string(&hull_vmm_api::ApiRequest::Stats {}).unwrap_or_default();
    let probe = tokio::task::spawn_blocking(move || {
        crate::vmm::api_request_within(&api, &line, VMM_PROBE_TIMEOUT)
    });
    match probe.await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) if vmm_alive_pid(pid) => {
            Some(format!("hull-vmm (pid {pid}) does not answer its API: {e}"))
        }
        // It exited meanwhile: not hung, gone (the caller sees that).
        Ok(Err(_)) => None,
        Err(e) => Some(format!("probing hull-vmm (pid {pid}): {e}")),
    }
}

fn vmm_alive_pid(pid: u32) -> bool {
    process_start_time(pid).is_some()
}

fn vmm_alive(state: &SandboxState) -> bool {
    process_start_time(state.vmm_pid) == Some(state.vmm_start_time)
}

fn kill_vmm(state: &SandboxState) -> Result<(), SandboxError> {
    if !vmm_alive(state) {
        return Ok(());
    }
    match nix::sys::signal::kill(Pid::from_raw(state.vmm_pid as i32), Signal::SIGKILL) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(source) => Err(SandboxError::Signal {
            what: "kill hull-vmm",
            pid: state.vmm_pid,
            source,
        }),
    }
}

/// Removes sandbox `id` under `root` whatever state it is in: kills its VMM if it still runs,
/// unmounts whatever is mounted below its directory, and removes the directory. Nothing to
/// remove is not an error.
pub fn cleanup(root: &Path, id: &str) -> Result<(), SandboxError> {
    validate_id(id)?;
    let layout = Layout::new(root, id);
    if !layout.dir().exists() {
        return Ok(());
    }
    let _lock = StateLock::acquire(layout.dir())?;
    cleanup_dir(&layout)
}

/// What every path out of a sandbox ends with: the VMM killed and reaped, the network it
/// plumbed torn down, every container's share unmounted and removed (never recursively
/// through a mount), whatever else is mounted below the directory unmounted, the socket
/// directory and the sandbox directory removed, and the host cgroup removed.
fn cleanup_dir(layout: &Layout) -> Result<(), SandboxError> {
    let dir = layout.dir();
    let state = SandboxState::read(dir).ok();
    // The cgroup hull-vmm was started in: the state's, or the record written before the start.
    let cgroup = state
        .as_ref()
        .and_then(|s| s.host_cgroup.clone())
        .or_else(|| {
            let rec = std::fs::read(layout.cgroup_record()).ok()?;
            let p = PathBuf::from(std::ffi::OsString::from_vec(rec));
            crate::host_cgroup::is_own_dir(&p).then_some(p)
        });
    if state.is_none() {
        // No pid on record: a creator killed right after hull-vmm's start. The VM, if any, is
        // in its cgroup.
        if let Some(cg) = &cgroup {
            crate::host_cgroup::kill_all(cg, Duration::from_secs(10));
        }
    }
    if let Some(state) = &state {
        kill_vmm(state)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while vmm_alive(state) && Instant::now() < deadline {
            reap(state.vmm_pid);
            std::thread::sleep(Duration::from_millis(20));
        }
        reap(state.vmm_pid);
    }
    // The taps and tc filters in the network namespace (hull-vmm, which held the taps, is
    // gone). A namespace that is gone already took them with it.
    if let Ok(ns) = std::fs::read(layout.netns_record()) {
        let ns = PathBuf::from(std::ffi::OsString::from_vec(ns));
        crate::network::teardown(&ns)?;
        if ns == layout.own_netns() {
            crate::network::remove_own(&ns)?;
        }
    }
    // Each container's share first, then the share's own mounts: removal never deletes
    // through a mount it could not undo (the bundle's rootfs and bind sources are the host's
    // files).
    layout.share().destroy()?;
    crate::mount::unmount_below(dir).map_err(|source| SandboxError::Io {
        what: "cannot unmount what is mounted in the sandbox",
        path: dir.to_path_buf(),
        source,
    })?;
    if layout.separate_sockets() {
        if let Err(e) = std::fs::remove_dir_all(layout.socket_dir()) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", layout.socket_dir().display());
            }
        }
    }
    // Nothing may be mounted below the directory any more: its removal must never reach a
    // host directory through a mount that could not be undone.
    let left = crate::mount::mounts_at_or_below(dir).map_err(|source| SandboxError::Io {
        what: "cannot read the mount table",
        path: dir.to_path_buf(),
        source,
    })?;
    if let Some(m) = left.first() {
        return Err(SandboxError::Io {
            what: "cannot remove the sandbox directory: something is still mounted in it",
            path: m.clone(),
            source: std::io::Error::from_raw_os_error(libc::EBUSY),
        });
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(SandboxError::Io {
                what: "cannot remove the sandbox directory",
                path: dir.to_path_buf(),
                source,
            })
        }
    }
    // Last: the VM that was charged to it is gone.
    if let Some(cg) = &cgroup {
        crate::host_cgroup::remove_dir(cg);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "abc-123_x.y+z", &"f".repeat(64)] {
            validate_id(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn bad_input_leaves_nothing_behind() {
        let root = std::env::temp_dir().join(format!("hull-sb-bad-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let mut cfg = RuntimeConfig {
            kernel: root.join("no-such-vmlinux"),
            ..RuntimeConfig::default()
        };
        let e = Sandbox::create(&cfg, &root, "x", &SandboxOptions::default())
            .await
            .err()
            .expect("a missing kernel is an error");
        assert!(e.to_string().contains("no-such-vmlinux"), "{e}");
        assert!(!root.join("x").exists());
        let e = Sandbox::load(&root, "x").await.err().expect("not found");
        assert!(matches!(e, SandboxError::NotFound(_)), "{e}");
        cleanup(&root, "x").unwrap();
        let deep = root.join("d".repeat(100));
        std::fs::create_dir_all(&root).unwrap();
        let k = root.join("k");
        std::fs::write(&k, b"x").unwrap();
        cfg.kernel = k.clone();
        cfg.initrd = k.clone();
        cfg.vmm = k;
        // A directory too deep for sockets gets a short socket directory; a create that
        // fails (the "hull-vmm" here cannot run) removes that too.
        // The state root is made 0700 (the agent's socket is a root shell in the guest).
        let fresh = root.join("fresh-root");
        let e = Sandbox::create(&cfg, &fresh, "x", &SandboxOptions::default())
            .await
            .err()
            .expect("the fake hull-vmm cannot start");
        assert!(!fresh.join("x").exists(), "{e}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{mode:o}");
        let sockets = Layout::of_dir(&deep.join("x")).socket_dir().to_path_buf();
        assert!(sockets.starts_with(SOCKET_ROOT), "{}", sockets.display());
        let e = Sandbox::create(&cfg, &deep, "x", &SandboxOptions::default())
            .await
            .err()
            .expect("the fake hull-vmm cannot start");
        assert!(!matches!(e, SandboxError::PathTooLong { .. }), "{e}");
        assert!(!deep.join("x").exists());
        assert!(!sockets.exists(), "{} is left", sockets.display());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
