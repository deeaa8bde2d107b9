//! Containers: OCI bundles run by the guest agent inside a [`Sandbox`].
//!
//! One sandbox holds one container for the CLI (same id) and several for a pod (the shim). A
//! container's host side is its share directory and its record:
//!
//! ```text
//! <sandbox dir>/containers/<id>.json        ContainerRecord (state.rs), written atomically
//! <sandbox dir>/shared/containers/<id>/     guest /run/hull/shared/containers/<id>/
//!   mounts/<n>     the source of the spec's n-th mount, if it is a bind mount
//!   config.json    the spec translated for the guest (spec.rs)
//! <sandbox dir>/shared/rootfs/<id>@<nonce>/ guest /run/hull/rootfs/<id>@<nonce>/: the bundle's
//!                  rootfs, bind-mounted (rbind), on the cached share (see crate::share)
//! ```
//!
//! Hooks run on the host (hooks.rs): prestart and createRuntime after the agent created the
//! container (a failure undoes the create), poststart after start and poststop after delete
//! (failures are logged). createContainer and startContainer hooks would have to run in the
//! container's namespaces, which are in the guest: they are skipped with a warning. The state a
//! hook reads has the host bundle path and, as `pid`, hull-vmm's pid (the host process that
//! holds the VM; the container's own pids are guest pids). A hook that sets up the network of
//! `/proc/<pid>/ns/net` (docker's `libnetwork-setkey`) so sets up the sandbox's own namespace,
//! which the first container's create then mirrors into the VM ([`Sandbox::attach_network`]).

mod hooks;
mod spec;
mod state;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use hull_agent_protocol::{
    check_container_id, ContainerInfo, ContainerStats, ContainerStatus, ErrorKind, ProcessId,
    StdioSpec,
};
use oci_spec::runtime::{ContainerState as OciStatus, LinuxResources, Process};
use serde::{Deserialize, Serialize};

use crate::agent::AgentClient;
use crate::sandbox::{Sandbox, SandboxError};
use crate::share;
pub use crate::share::SHARE_CONTAINERS;
pub use hooks::HookKind;
pub use spec::{
    bind_mounts, guest_dir, guest_namespaces, load_bundle, parse_spec, translate, BindMount,
    Bundle, DEFAULT_TERMINAL,
};
pub use state::{record_path, rfc3339, ContainerRecord, CONTAINERS_DIR};

/// What went wrong with a container. The messages are meant to be printed as they are.
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container id {id:?}: {reason}")]
    InvalidId { id: String, reason: String },
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("container {0:?} already exists")]
    AlreadyExists(String),
    /// config.json does not say something usable; `field` is its path in the JSON
    /// (`process.args`, `linux.namespaces[0].type`, ...).
    #[error("{}: {field}: {reason}", path.display())]
    InvalidSpec {
        path: PathBuf,
        field: String,
        reason: String,
    },
    /// The bundle directory, its config.json or its rootfs cannot be used.
    #[error("{}: {reason}", path.display())]
    Bundle { path: PathBuf, reason: String },
    /// A bind mount's host source cannot be used.
    #[error("bind mount at {}: source {}: {reason}", destination.display(), host_path.display())]
    MountSource {
        destination: PathBuf,
        host_path: PathBuf,
        reason: String,
    },
    #[error("{which} hook {}: {reason}", path.display())]
    Hook {
        which: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("container {id:?} is {}, it must be {wanted}", status.as_str())]
    WrongState {
        id: String,
        status: ContainerStatus,
        wanted: &'static str,
    },
    #[error("guest agent: {0}")]
    Agent(#[from] crate::agent::Error),
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    #[error("{what}: {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<share::ShareError> for ContainerError {
    fn from(e: share::ShareError) -> ContainerError {
        match e {
            share::ShareError::Io { what, path, source } => {
                ContainerError::Io { what, path, source }
            }
            share::ShareError::MountSource {
                destination,
                host_path,
                reason,
            } => ContainerError::MountSource {
                destination,
                host_path,
                reason,
            },
        }
    }
}

impl ContainerError {
    /// The agent's error kind, if the agent answered with an error.
    pub fn agent_kind(&self) -> Option<ErrorKind> {
        match self {
            ContainerError::Agent(e) => e.agent_kind(),
            _ => None,
        }
    }
}

/// How to create a container.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// The init's stdio. `None`: pipes, or a terminal (`process.consoleSize`, else 24x80) when
    /// `process.terminal` is true. Given, it must agree with `process.terminal`.
    pub stdio: Option<StdioSpec>,
    /// Another container of the same sandbox whose namespaces this one joins where the spec
    /// names a namespace by path (a pod's sandbox container).
    pub join: Option<String>,
}

/// runc's `state` output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciState {
    #[serde(rename = "ociVersion")]
    pub oci_version: String,
    pub id: String,
    /// The host pid ([`Container::host_pid`]); 0 once stopped or when none was set.
    pub pid: u32,
    pub status: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    pub created: String,
    pub owner: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// One container of a sandbox, as recorded on disk. Methods take the [`Sandbox`] it belongs to
/// (whose handle holds the sandbox's lock).
#[derive(Clone, Debug)]
pub struct Container {
    rec: ContainerRecord,
}

fn check_id(id: &str) -> Result<(), ContainerError> {
    check_container_id(id).map_err(|e| ContainerError::InvalidId {
        id: id.to_string(),
        reason: e
            .message
            .split_once(": ")
            .map_or(e.message.clone(), |(_, r)| r.to_string()),
    })
}

/// Whether an agent error means the guest is gone (the VM stopped, the connection closed).
fn guest_gone(sandbox: &Sandbox, e: &crate::agent::Error) -> bool {
    matches!(e, crate::agent::Error::Closed) || !sandbox.vmm_running()
}

impl Container {
    /// Creates container `id` in `sandbox` from `b` (a bundle read and checked once by
    /// [`load_bundle`]): shares its rootfs and bind mounts with the guest, has the agent create
    /// it (init held before the user program), records it, and runs the prestart and
    /// createRuntime hooks. On any failure nothing is left behind (no mount, directory, record
    /// or guest container).
    pub async fn create(
        sandbox: &Sandbox,
        id: &str,
        b: &Bundle,
        opts: &CreateOptions,
    ) -> Result<Container, ContainerError> {
        check_id(id)?;
        if record_path(sandbox.dir(), id).exists() {
            return Err(ContainerError::AlreadyExists(id.to_string()));
        }
        let join = match &opts.join {
            Some(other) => Some((other.as_str(), Container::load(sandbox, other)?.guest_pid())),
            None => None,
        };
        let stdio = spec::init_stdio(b, opts.stdio)?;
        let binds = bind_mounts(b)?;
        let rootfs_name = crate::share::rootfs_name(id);
        let guest_root = spec::guest_rootfs(&rootfs_name);
        let guest_spec = translate(&b.spec, id, join, &binds, &guest_root);
        let agent = sandbox.agent()?;
        let hooks = b.spec.hooks().clone();
        hooks::skip(hooks.as_ref(), HookKind::CreateContainer, id);
        hooks::skip(hooks.as_ref(), HookKind::StartContainer, id);

        let dir = sandbox
            .share()
            .prepare(id, &rootfs_name, &b.rootfs, &binds, &guest_spec)?;
        let guest_bundle = guest_dir(id);
        let mut created = false;
        let result = async {
            let p = agent
                .create_container(id, &guest_bundle, stdio)
                .await
                .map_err(|e| match e.agent_kind() {
                    Some(ErrorKind::ContainerExists) => ContainerError::AlreadyExists(id.into()),
                    _ => e.into(),
                })?;
            created = true;
            let rec = ContainerRecord {
                id: id.to_string(),
                sandbox: sandbox.id().to_string(),
                bundle: b.dir.clone(),
                rootfs: b.rootfs.clone(),
                created: rfc3339(SystemTime::now()),
                annotations: b
                    .spec
                    .annotations()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                init_process: p.process,
                guest_pid: p.pid,
                host_pid: None,
                share: dir.clone(),
                guest_rootfs: guest_root.clone(),
                guest_bundle: guest_bundle.clone(),
                hooks: hooks.clone(),
            };
            rec.write(sandbox.dir())?;
            let c = Container { rec };
            let st = c.hook_state(sandbox, OciStatus::Created);
            hooks::run_all(
                hooks.as_ref(),
                &[HookKind::Prestart, HookKind::CreateRuntime],
                &st,
            )
            .await?;
            // The first container of a sandbox with a network namespace of its own: what its
            // hooks put there (docker's bridge network) goes into the VM before the program
            // runs.
            if Container::ids(sandbox)?.iter().all(|c| c == id) {
                sandbox.attach_network().await?;
            }
            Ok(c)
        }
        .await;
        match result {
            Ok(c) => Ok(c),
            Err(e) => {
                if created {
                    if let Err(d) = agent.delete_container(id, true).await {
                        tracing::warn!("container {id}: undoing the create in the guest: {d}");
                    }
                }
                for undo in [
                    ContainerRecord::remove(sandbox.dir(), id),
                    sandbox.share().remove(id).map_err(Into::into),
                ] {
                    if let Err(u) = undo {
                        tracing::warn!("container {id}: undoing the create: {u}");
                    }
                }
                Err(e)
            }
        }
    }

    /// Container `id` of `sandbox`, from its record.
    pub fn load(sandbox: &Sandbox, id: &str) -> Result<Container, ContainerError> {
        check_id(id)?;
        Ok(Container {
            rec: ContainerRecord::read(sandbox.dir(), id)?,
        })
    }

    /// The ids of the containers of `sandbox`, sorted.
    pub fn ids(sandbox: &Sandbox) -> Result<Vec<String>, ContainerError> {
        ContainerRecord::list(sandbox.dir())
    }

    pub fn id(&self) -> &str {
        &self.rec.id
    }

    /// The host bundle directory (absolute).
    pub fn bundle(&self) -> &Path {
        &self.rec.bundle
    }

    /// The host root file system (absolute).
    pub fn rootfs(&self) -> &Path {
        &self.rec.rootfs
    }

    /// RFC 3339.
    pub fn created(&self) -> &str {
        &self.rec.created
    }

    pub fn annotations(&self) -> &BTreeMap<String, String> {
        &self.rec.annotations
    }

    /// The agent's handle of the init process (streams, wait, resize, close_stdin).
    pub fn init_process(&self) -> ProcessId {
        self.rec.init_process
    }

    /// The init's pid in the guest.
    pub fn guest_pid(&self) -> i32 {
        self.rec.guest_pid
    }

    pub fn host_pid(&self) -> Option<u32> {
        self.rec.host_pid
    }

    /// The whole record.
    pub fn record(&self) -> &ContainerRecord {
        &self.rec
    }

    /// Records the host process that stands for the container (the CLI's pid-file process).
    pub fn set_host_pid(&mut self, sandbox: &Sandbox, pid: u32) -> Result<(), ContainerError> {
        self.rec.host_pid = Some(pid);
        self.rec.write(sandbox.dir())
    }

    fn hook_state(&self, sandbox: &Sandbox, status: OciStatus) -> oci_spec::runtime::State {
        let pid = (status != OciStatus::Stopped)
            .then(|| i32::try_from(sandbox.state().vmm_pid).ok())
            .flatten();
        hooks::state(
            self.id(),
            status,
            pid,
            self.rec.bundle.clone(),
            &self.rec.annotations,
        )
    }

    fn stopped_info(&self) -> ContainerInfo {
        ContainerInfo {
            id: self.id().to_string(),
            status: ContainerStatus::Stopped,
            process: self.rec.init_process,
            pid: self.rec.guest_pid,
            exit: None,
            oom_killed: false,
        }
    }

    /// The agent's view of the container. A guest that is gone (VM stopped, agent unreachable,
    /// the agent no longer knows the container) means status Stopped, not an error.
    pub async fn info(&self, sandbox: &Sandbox) -> Result<ContainerInfo, ContainerError> {
        let Ok(agent) = sandbox.agent() else {
            return Ok(self.stopped_info());
        };
        match agent.container_state(self.id()).await {
            Ok(i) => Ok(i),
            Err(e)
                if guest_gone(sandbox, &e)
                    || e.agent_kind() == Some(ErrorKind::UnknownContainer) =>
            {
                tracing::debug!("container {}: taken as stopped: {e}", self.id());
                Ok(self.stopped_info())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The agent, once the container is in one of `wanted` states (named `what` in errors).
    async fn agent_in<'a>(
        &self,
        sandbox: &'a Sandbox,
        wanted: &[ContainerStatus],
        what: &'static str,
    ) -> Result<&'a AgentClient, ContainerError> {
        let status = self.info(sandbox).await?.status;
        if !wanted.contains(&status) {
            return Err(ContainerError::WrongState {
                id: self.id().to_string(),
                status,
                wanted: what,
            });
        }
        Ok(sandbox.agent()?)
    }

    /// runc's `state` JSON.
    pub async fn oci_state(&self, sandbox: &Sandbox) -> Result<OciState, ContainerError> {
        let status = self.info(sandbox).await?.status;
        let pid = match status {
            ContainerStatus::Stopped => 0,
            _ => self.rec.host_pid.unwrap_or(0),
        };
        Ok(OciState {
            oci_version: oci_spec::runtime::VERSION.to_string(),
            id: self.id().to_string(),
            pid,
            status: status.as_str().to_string(),
            bundle: self.rec.bundle.clone(),
            rootfs: self.rec.rootfs.clone(),
            created: self.rec.created.clone(),
            owner: String::new(),
            annotations: self.rec.annotations.clone(),
        })
    }

    /// Lets the init run the user program, then runs the poststart hooks.
    pub async fn start(&self, sandbox: &Sandbox) -> Result<(), ContainerError> {
        let agent = self
            .agent_in(sandbox, &[ContainerStatus::Created], "created")
            .await?;
        agent.start_container(self.id()).await?;
        let st = self.hook_state(sandbox, OciStatus::Running);
        hooks::run_warn(self.rec.hooks.as_ref(), HookKind::Poststart, &st).await;
        Ok(())
    }

    /// Signals the init, or (`all`) every process of the container.
    pub async fn kill(
        &self,
        sandbox: &Sandbox,
        signal: i32,
        all: bool,
    ) -> Result<(), ContainerError> {
        let wanted = [
            ContainerStatus::Created,
            ContainerStatus::Running,
            ContainerStatus::Paused,
        ];
        let agent = self
            .agent_in(sandbox, &wanted, "created, running or paused")
            .await?;
        Ok(agent.kill_container(self.id(), signal, all).await?)
    }

    /// Runs another process in the running container; returns its handle and guest pid. `stdio`
    /// must be a terminal exactly when `process.terminal` is true.
    pub async fn exec(
        &self,
        sandbox: &Sandbox,
        process: &Process,
        stdio: StdioSpec,
    ) -> Result<(ProcessId, i32), ContainerError> {
        let stdio = spec::stdio_for(Path::new("process"), Some(process), Some(stdio))?;
        let value = serde_json::to_value(process).map_err(|e| ContainerError::InvalidSpec {
            path: "process".into(),
            field: ".".into(),
            reason: e.to_string(),
        })?;
        let agent = self
            .agent_in(sandbox, &[ContainerStatus::Running], "running")
            .await?;
        let p = agent.exec(self.id(), value, stdio).await?;
        Ok((p.process, p.pid))
    }

    /// Guest pids of the container's processes.
    pub async fn pids(&self, sandbox: &Sandbox) -> Result<Vec<i32>, ContainerError> {
        Ok(sandbox.agent()?.container_pids(self.id()).await?)
    }

    pub async fn pause(&self, sandbox: &Sandbox) -> Result<(), ContainerError> {
        let agent = self
            .agent_in(sandbox, &[ContainerStatus::Running], "running")
            .await?;
        Ok(agent.pause_container(self.id()).await?)
    }

    pub async fn resume(&self, sandbox: &Sandbox) -> Result<(), ContainerError> {
        let agent = self
            .agent_in(sandbox, &[ContainerStatus::Paused], "paused")
            .await?;
        Ok(agent.resume_container(self.id()).await?)
    }

    /// Applies new resource limits.
    /// Zero and empty values mean "unchanged", as with runc (docker's `update` sends every
    /// field, zeros for what it does not change): they are left out.
    pub async fn update(
        &self,
        sandbox: &Sandbox,
        resources: &LinuxResources,
    ) -> Result<(), ContainerError> {
        let mut value =
            serde_json::to_value(resources).map_err(|e| ContainerError::InvalidSpec {
                path: "resources".into(),
                field: ".".into(),
                reason: e.to_string(),
            })?;
        drop_unchanged(&mut value);
        Ok(sandbox.agent()?.update_container(self.id(), value).await?)
    }

    /// The container's cgroup figures in the guest.
    pub async fn stats(&self, sandbox: &Sandbox) -> Result<ContainerStats, ContainerError> {
        Ok(sandbox.agent()?.container_stats(self.id()).await?)
    }

    /// Deletes the container: the agent removes it (`force`: kills it first if it runs;
    /// skipped when the guest is gone or no longer knows it), then the poststop hooks run and
    /// the host side goes (share mounts, share directory, record). Without `force` a running
    /// container is the agent's error and nothing is removed.
    pub async fn delete(self, sandbox: &Sandbox, force: bool) -> Result<(), ContainerError> {
        let id = self.id();
        match sandbox.agent() {
            Ok(agent) => match agent.delete_container(id, force).await {
                Ok(()) => {}
                Err(e)
                    if guest_gone(sandbox, &e)
                        || e.agent_kind() == Some(ErrorKind::UnknownContainer) =>
                {
                    tracing::debug!("container {id}: not in the guest any more: {e}");
                }
                Err(e) => return Err(e.into()),
            },
            Err(e) => tracing::debug!("container {id}: the guest is gone ({e}); host side only"),
        }
        let st = self.hook_state(sandbox, OciStatus::Stopped);
        hooks::run_warn(self.rec.hooks.as_ref(), HookKind::Poststop, &st).await;
        sandbox.share().remove(id)?;
        ContainerRecord::remove(sandbox.dir(), id)
    }
}

/// Removes the "unchanged" values of an update: zero numbers and empty strings in the
/// memory, cpu, pids and blockIO sections (runc's update treats them so), then empty sections.
fn drop_unchanged(resources: &mut serde_json::Value) {
    let Some(r) = resources.as_object_mut() else {
        return;
    };
    for section in ["memory", "cpu", "pids", "blockIO"] {
        if let Some(obj) = r.get_mut(section).and_then(|v| v.as_object_mut()) {
            obj.retain(|_, v| match v {
                serde_json::Value::Number(n) => n.as_f64() != Some(0.0),
                serde_json::Value::String(s) => !s.is_empty(),
                serde_json::Value::Null => false,
                _ => true,
            });
        }
    }
    r.retain(|_, v| !v.as_object().is_some_and(|o| o.is_empty()) && !v.is_null());
}

#[cfg(test)]
mod tests;
