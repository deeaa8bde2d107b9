//! Sandboxes: one microVM each, with its `hull-vmm` process, one virtio-fs share, the agent
//! connection and a state directory.
//!
//! ```text
//! <root>/<id>/            the sandbox's directory (root: /run/hull for the CLI)
//!   state.json            SandboxState: the VMM's pid and start time, size, creation time
//!   lock                  flock held by the command acting on the sandbox
//!   vm.json console.log vmm.log   hull-vmm's config, guest console and log (crate::vmm)
//!   api.sock vsock.sock   hull-vmm's API socket and hybrid vsock socket (in [`SOCKET_ROOT`]
//!                         `/<hash of the directory>/` instead when the directory's path is too
//!                         long for a Unix socket, as docker's and containerd's roots are)
//!   shared/               shared with the guest (virtio-fs tag `hull-shared`), mounted by the
//!                         agent at /run/hull/shared; containers' root file systems go below it
//!   containers/<cid>.json the sandbox's containers (crate::container)
//!   netns                 the path of the network namespace the VM's taps are in (cleanup)
//!   net.ns                the sandbox's own network namespace, bind-mounted
//!                         ([`SandboxNetwork::Own`])
//! ```
//!
//! Several processes use one sandbox over its life (each CLI command is a new process; a shim
//! can restart), so [`Sandbox::create`] leaves hull-vmm running on its own and everything needed
//! to reattach is on disk: [`Sandbox::load`]. [`Sandbox::stop`] asks the agent, then the VMM's
//! API, then SIGKILL; [`cleanup`] removes whatever is left (the VMM, mounts under the
//! directory, the directory) and works whatever died halfway. A create that fails leaves
//! nothing behind.

mod state;

use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use hull_agent_protocol::MountRequest;
use hull_agent_protocol::NetworkConfig;
use hull_vmm_api::{CachePolicy, FsConfig, NetConfig, SerialConfig, VmConfig, VsockConfig};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::agent::{AgentClient, Endpoint};
use crate::config::RuntimeConfig;
use crate::vmm::{Launch, VmmProcess};
pub use state::{
    process_start_time, process_stopped, OwnNetwork, SandboxState, StateLock, LOCK_FILE, STATE_FILE,
};

/// The virtio-fs tag of the sandbox's share.
pub const SHARE_TAG: &str = "hull-shared";
/// Where the agent mounts the share in the guest.
pub const GUEST_SHARE_DIR: &str = "/run/hull/shared";
/// The share's directory inside the sandbox's directory.
pub const SHARE_DIR: &str = "shared";
/// The guest's vsock context id.
const GUEST_CID: u64 = 3;
/// Longest a sandbox id may be.
pub const MAX_ID_LEN: usize = 128;
/// How long a guest may take to boot to its agent (generous: nested emulation is slow).
pub const DEFAULT_BOOT_TIMEOUT: Duration = Duration::from_secs(300);
/// The sandbox directory's record of the network namespace it plumbed (its path), for the
/// cleanup.
const NETNS_FILE: &str = "netns";
/// Where a sandbox's own network namespace is bind-mounted ([`SandboxNetwork::Own`]).
const OWN_NETNS: &str = "net.ns";
/// How long hull-vmm gets to answer its API (a stats request on load, a shutdown on stop)
/// before it is taken for hung. Its API thread answers whatever the guest does.
const VMM_PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of a Unix socket path.
const MAX_SOCKET_PATH: usize = 107;
/// Where a sandbox's sockets go when its directory is too deep for them.
pub const SOCKET_ROOT: &str = "/run/hull-sockets";

/// The directory of a sandbox's sockets: the sandbox directory itself when the longest socket
/// path (`vsock.sock_<port>`) fits in a Unix socket address, else a short directory under
/// [`SOCKET_ROOT`] named by a hash of the sandbox directory's path (the same in every process,
/// so a later command finds it again).
pub fn socket_dir(dir: &Path) -> PathBuf {
    if dir.join("vsock.sock_4294967295").as_os_str().len() <= MAX_SOCKET_PATH {
        return dir.to_path_buf();
    }
    // FNV-1a, 64 bits: stable across builds and releases (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.as_os_str().as_encoded_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Path::new(SOCKET_ROOT).join(format!("{h:016x}"))
}

/// What went wrong with a sandbox.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("invalid sandbox id {id:?}: {reason}")]
    InvalidId { id: String, reason: &'static str },
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
    #[error("cannot remove its containers: {0}")]
    Containers(#[source] Box<crate::container::ContainerError>),
    #[error("cannot {what} (pid {pid}): {source}")]
    Signal {
        what: &'static str,
        pid: u32,
        #[source]
        source: nix::Error,
    },
}

/// What a new sandbox looks like; unset fields come from the runtime configuration.
#[derive(Clone, Debug, Default)]
pub struct SandboxOptions {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// How long the guest may take to reach its agent (default [`DEFAULT_BOOT_TIMEOUT`]).
    pub boot_timeout: Option<Duration>,
    /// A cgroup v2 directory hull-vmm starts in (see [`crate::host_cgroup::prepare`]), so that
    /// the whole VM is accounted to the container or pod that asked for it.
    pub host_cgroup: Option<PathBuf>,
    /// Where the VM's network comes from.
    pub network: SandboxNetwork,
}

/// Where a sandbox's VM gets its network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SandboxNetwork {
    /// None: the guest has loopback only.
    #[default]
    Loopback,
    /// A network namespace that exists, whose interfaces the VM takes over (CRI's pod
    /// namespace, the OCI spec's network namespace path): each gets a tap mirrored to it with
    /// tc there, and a guest NIC with its MAC, MTU, addresses and routes.
    Join(PathBuf),
    /// A namespace of the sandbox's own (`<dir>/net.ns`), which hull-vmm runs in with one NIC
    /// on a placeholder tap. A prestart hook given hull-vmm's pid (docker's
    /// `libnetwork-setkey`) puts the container's interface there; the first container's create
    /// then mirrors it into that NIC ([`crate::network::attach`]). No interface: loopback only.
    Own,
}

impl SandboxNetwork {
    /// What an OCI spec asks for: a network namespace with a path is joined, one without a
    /// path (a new namespace, as docker's bridge and `none` networks give) is the sandbox's
    /// own, and no network namespace (the host's network) gives loopback only.
    pub fn from_spec(spec: &oci_spec::runtime::Spec) -> SandboxNetwork {
        if let Some(p) = crate::network::spec_netns(spec) {
            return SandboxNetwork::Join(p);
        }
        let new_netns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            });
        if new_netns {
            SandboxNetwork::Own
        } else {
            SandboxNetwork::Loopback
        }
    }
}

/// One sandbox, attached: its state, its lock (held for this handle's life) and its agent.
pub struct Sandbox {
    dir: PathBuf,
    state: SandboxState,
    agent: Option<AgentClient>,
    /// Why the agent could not be reached when the sandbox was loaded.
    agent_error: Option<String>,
    /// hull-vmm runs but answers nothing (stopped, or its API silent): nothing is asked of it
    /// any more, stopping it is a SIGKILL.
    vmm_hung: bool,
    _lock: StateLock,
}

/// Checks a sandbox id: what runc accepts (letters, digits, `_ + - .`), not `.` or `..`.
pub fn validate_id(id: &str) -> Result<(), SandboxError> {
    let bad = |reason| SandboxError::InvalidId {
        id: id.to_string(),
        reason,
    };
    if id.is_empty() {
        return Err(bad("it is empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(bad("it is longer than 128 bytes"));
    }
    if id == "." || id == ".." {
        return Err(bad("it is . or .."));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_+-.".contains(&b))
    {
        return Err(bad("only letters, digits and _ + - . are allowed"));
    }
    Ok(())
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

/// Writes `<dir>/netns`: the namespace whose taps the cleanup removes.
fn record_netns(dir: &Path, ns: &Path) -> Result<(), SandboxError> {
    let record = dir.join(NETNS_FILE);
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
        let dir = root.join(id);
        let sockets = socket_dir(&dir);
        let len = sockets.join("vsock.sock_4294967295").as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(SandboxError::PathTooLong { path: dir, len });
        }
        std::fs::create_dir_all(root).map_err(|source| SandboxError::Io {
            what: "cannot create the state root",
            path: root.to_path_buf(),
            source,
        })?;
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SandboxError::IdInUse(id.to_string()))
            }
            Err(source) => {
                return Err(SandboxError::Io {
                    what: "cannot create the sandbox directory",
                    path: dir,
                    source,
                })
            }
        }
        let lock = match StateLock::acquire(&dir) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        match Sandbox::boot(config, &dir, id, opts).await {
            Ok((state, agent)) => Ok(Sandbox {
                dir,
                state,
                agent: Some(agent),
                agent_error: None,
                vmm_hung: false,
                _lock: lock,
            }),
            Err(e) => {
                if let Err(c) = cleanup_dir(&dir) {
                    tracing::warn!("cleaning up after a failed create: {c}");
                }
                Err(e)
            }
        }
    }

    async fn boot(
        config: &RuntimeConfig,
        dir: &Path,
        id: &str,
        opts: &SandboxOptions,
    ) -> Result<(SandboxState, AgentClient), SandboxError> {
        let share = dir.join(SHARE_DIR);
        std::fs::create_dir(&share).map_err(|source| SandboxError::Io {
            what: "cannot create the share",
            path: share.clone(),
            source,
        })?;
        let vcpus = opts.vcpus.unwrap_or(config.vcpus);
        let memory_mib = opts.memory_mib.unwrap_or(config.memory_mib);
        let sockets = socket_dir(dir);
        if sockets != dir {
            std::fs::create_dir_all(&sockets).map_err(|source| SandboxError::Io {
                what: "cannot create the sandbox's socket directory",
                path: sockets.clone(),
                source,
            })?;
        }
        let uds = sockets.join("vsock.sock");
        let mut vm = VmConfig::new(config.kernel.clone());
        vm.initrd = Some(config.initrd.clone());
        vm.vcpus = vcpus;
        vm.memory_mib = memory_mib;
        vm.cmdline = format!("console=ttyS0 quiet hull.hostname={id}");
        vm.vsock = Some(VsockConfig {
            uds_path: uds.clone(),
            guest_cid: GUEST_CID,
        });
        vm.api_socket = Some(sockets.join("api.sock"));
        // A file hull-vmm caps (serial_max_bytes), so a guest printing forever cannot fill the
        // host's disk.
        vm.serial = SerialConfig::File(dir.join(crate::vmm::CONSOLE_FILE));
        let mut fs = FsConfig::new(SHARE_TAG, &share);
        // The host changes the share (mounts, bundles) while the guest runs.
        fs.cache = CachePolicy::Never;
        vm.fs = vec![fs];
        let mut own_network = None;
        let (network, netns) = match &opts.network {
            SandboxNetwork::Join(ns) => {
                // Recorded first, so that a cleanup after a crash anywhere below removes the
                // taps and filters too.
                record_netns(dir, ns)?;
                let cfg = crate::network::inspect(Some(ns))?;
                for tap in crate::network::plumb(ns, &cfg)? {
                    vm.net.push(net_config(&tap)?);
                }
                (cfg, Some(ns.clone()))
            }
            SandboxNetwork::Own => {
                let ns = dir.join(OWN_NETNS);
                record_netns(dir, &ns)?;
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
        let mut vmm = VmmProcess::launch_with(
            &config.vmm,
            &vm,
            dir,
            &Launch {
                env: &[("HULL_LOG", config.log_level.as_str())],
                cgroup: opts.host_cgroup.as_deref(),
                netns: netns.as_deref(),
            },
        )?;

        // Wait for the agent, but not past the VMM's death.
        let deadline = opts.boot_timeout.unwrap_or(DEFAULT_BOOT_TIMEOUT);
        let connect = AgentClient::connect_retry(Endpoint::vm(&uds), deadline);
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
        agent.set_time(SystemTime::now()).await?;
        agent
            .mount(MountRequest::virtiofs(SHARE_TAG, GUEST_SHARE_DIR))
            .await?;
        // Before any container: the guest's NICs as the namespace had them (or loopback only).
        agent.configure_network(network).await?;
        let pid = vmm.pid();
        let state = SandboxState {
            id: id.to_string(),
            vmm_pid: pid,
            vmm_start_time: process_start_time(pid).ok_or(SandboxError::NotRunning)?,
            vcpus,
            memory_mib,
            created: now_secs(),
            own_network,
        };
        state.write(dir)?;
        // From here on the VMM runs on its own: the state file is how it is found again.
        vmm.detach();
        Ok((state, agent))
    }

    /// Attaches to sandbox `id` under `root` (waiting for another command that holds its
    /// lock). The agent is connected if the VM runs and it answers; loading never fails because
    /// of the guest, so a sandbox whose VM died or is dying can still be stopped and cleaned up
    /// ([`Sandbox::agent`] then says why there is no agent).
    pub async fn load(root: &Path, id: &str) -> Result<Sandbox, SandboxError> {
        validate_id(id)?;
        let dir = root.join(id);
        if !dir.join(STATE_FILE).exists() {
            return Err(SandboxError::NotFound(id.to_string()));
        }
        let lock = StateLock::acquire(&dir)?;
        let state = SandboxState::read(&dir)?;
        let mut sb = Sandbox {
            dir,
            state,
            agent: None,
            agent_error: None,
            vmm_hung: false,
            _lock: lock,
        };
        if sb.vmm_running() {
            if let Some(why) = vmm_unresponsive(&sb.dir, sb.state.vmm_pid).await {
                tracing::warn!("sandbox {id}: {why}");
                sb.agent_error = Some(why);
                sb.vmm_hung = true;
                return Ok(sb);
            }
            let endpoint = Endpoint::vm(socket_dir(&sb.dir).join("vsock.sock"));
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

    pub fn id(&self) -> &str {
        &self.state.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state(&self) -> &SandboxState {
        &self.state
    }

    /// The host directory shared with the guest at [`GUEST_SHARE_DIR`].
    pub fn share_dir(&self) -> PathBuf {
        self.dir.join(SHARE_DIR)
    }

    /// The guest console so far.
    pub fn console(&self) -> String {
        std::fs::read(self.dir.join(crate::vmm::CONSOLE_FILE))
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
        let api = socket_dir(&self.dir).join("api.sock");
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
        cleanup_dir(&self.dir)
    }

    /// A sandbox handle over an existing directory (with `state`), without a VM: for tests of
    /// what is built on sandboxes, with a fake agent or none.
    #[cfg(test)]
    pub(crate) fn fake(dir: &Path, state: SandboxState, agent: Option<AgentClient>) -> Sandbox {
        Sandbox {
            dir: dir.to_path_buf(),
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
async fn vmm_unresponsive(dir: &Path, pid: u32) -> Option<String> {
    if process_stopped(pid) {
        return Some(format!(
            "hull-vmm (pid {pid}) is stopped and answers nothing"
        ));
    }
    let api = socket_dir(dir).join("api.sock");
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
    let dir = root.join(id);
    if !dir.exists() {
        return Ok(());
    }
    let _lock = StateLock::acquire(&dir)?;
    cleanup_dir(&dir)
}

fn cleanup_dir(dir: &Path) -> Result<(), SandboxError> {
    if let Ok(state) = SandboxState::read(dir) {
        kill_vmm(&state)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while vmm_alive(&state) && Instant::now() < deadline {
            reap(state.vmm_pid);
            std::thread::sleep(Duration::from_millis(20));
        }
        reap(state.vmm_pid);
    }
    // The taps and tc filters in the network namespace (hull-vmm, which held the taps, is
    // gone). A namespace that is gone already took them with it.
    let record = dir.join(NETNS_FILE);
    if let Ok(ns) = std::fs::read(&record) {
        let ns = PathBuf::from(std::ffi::OsString::from_vec(ns));
        crate::network::teardown(&ns)?;
        if ns == dir.join(OWN_NETNS) {
            crate::network::remove_own(&ns)?;
        }
    }
    // Each container's share first: its removal never deletes through a mount it could not
    // undo (the bundle's rootfs and bind sources are the host's files).
    crate::container::cleanup_all(dir).map_err(|e| SandboxError::Containers(Box::new(e)))?;
    crate::mount::unmount_below(dir).map_err(|source| SandboxError::Io {
        what: "cannot unmount what is mounted in the sandbox",
        path: dir.to_path_buf(),
        source,
    })?;
    let sockets = socket_dir(dir);
    if sockets != dir {
        if let Err(e) = std::fs::remove_dir_all(&sockets) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove {}: {e}", sockets.display());
            }
        }
    }
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(SandboxError::Io {
            what: "cannot remove the sandbox directory",
            path: dir.to_path_buf(),
            source,
        }),
    }
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

    #[test]
    fn socket_dirs_are_short_and_stable() {
        let shallow = Path::new("/run/hull/abc");
        assert_eq!(socket_dir(shallow), shallow);
        let deep = PathBuf::from(format!(
            "/var/run/docker/runtime-hull/moby/{}",
            "f".repeat(64)
        ));
        let s = socket_dir(&deep);
        assert_eq!(s, socket_dir(&deep), "the same in every process");
        assert_ne!(s, socket_dir(&deep.with_file_name("other")));
        assert!(s.join("vsock.sock_4294967295").as_os_str().len() <= MAX_SOCKET_PATH);
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
        let sockets = socket_dir(&deep.join("x"));
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
