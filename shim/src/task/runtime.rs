//! The real pod backend: hull-runtime's `Sandbox` is the pod's VM, its `Container`s the
//! tasks' containers, and `hull_runtime::process::ContainerProcess` drives their processes.
//!
//! This is the only file of the shim's task code that calls `hull_runtime::sandbox` and
//! `hull_runtime::container`: kept small and direct, so that a change of the runtime's
//! Sandbox API changes this file only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use hull_agent_protocol::{ContainerStats, ErrorKind as AgentKind, ProcessId, StdioSpec};
use hull_runtime::agent::{AgentClient, Error as AgentError};
use hull_runtime::config::RuntimeConfig;
use hull_runtime::container::{Bundle, Container, ContainerError, CreateOptions};
use hull_runtime::forward::PortForwarder;
use hull_runtime::process::{ContainerProcess, Exit, Streams, Target, Want};
use hull_runtime::sandbox::{Sandbox, SandboxError, SandboxNetwork, SandboxOptions, VmmWatch};
use oci_spec::runtime::{LinuxResources, Process, Spec};
use tokio::sync::watch;

use super::{Backend, Result, TaskError, Vm, VmGone};
use crate::pod;

/// How long the agent may take to stop the guest when the pod's last task is gone.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Boots pods under the shim's state root of one containerd namespace.
pub struct RuntimeBackend {
    root: PathBuf,
}

impl RuntimeBackend {
    pub fn new(namespace: &str) -> RuntimeBackend {
        RuntimeBackend {
            root: pod::state_root(namespace),
        }
    }
}

/// The pod's sandbox (which owns its VM, share, network and host cgroup).
pub struct RuntimeVm {
    sandbox: Sandbox,
    /// Says once hull-vmm has exited, and why.
    gone: VmmWatch,
    /// The pod's port-forward (listeners in its network namespace); stopped before the VM.
    forward: std::sync::Mutex<Option<PortForwarder>>,
}

/// The sandbox name under `root` of the pod `group` (its sandbox container's id, hashed when it
/// does not fit a socket path).
pub fn sandbox_name(root: &Path, group: &str) -> String {
    hull_runtime::sandbox::sandbox_name(root, group)
}

/// Removes what the sandbox `name` under `root` left (`containerd-shim-hull-v2 delete`, after
/// the shim died).
pub fn cleanup(root: &Path, name: &str) -> std::result::Result<(), SandboxError> {
    hull_runtime::sandbox::cleanup(root, name)
}

/// The task error for a runtime error (containerd turns the kind back into its errdefs).
pub fn container_error(e: ContainerError) -> TaskError {
    let m = e.to_string();
    match e {
        ContainerError::NotFound(_) => TaskError::NotFound(m),
        ContainerError::AlreadyExists(_) => TaskError::AlreadyExists(m),
        ContainerError::WrongState { .. } => TaskError::FailedPrecondition(m),
        ContainerError::InvalidId { .. }
        | ContainerError::InvalidSpec { .. }
        | ContainerError::Bundle { .. }
        | ContainerError::MountSource { .. } => TaskError::InvalidArgument(m),
        _ => TaskError::Internal(m),
    }
}

fn agent_error(e: AgentError) -> TaskError {
    match e.agent_kind() {
        Some(AgentKind::InvalidArgument) => TaskError::InvalidArgument(e.to_string()),
        _ => TaskError::Internal(e.to_string()),
    }
}

#[async_trait]
impl Backend for RuntimeBackend {
    type Vm = RuntimeVm;

    fn load_bundle(&self, bundle: &Path) -> Result<Bundle> {
        hull_runtime::container::load_bundle(bundle).map_err(container_error)
    }

    async fn boot(&self, id: &str, spec: &Spec) -> Result<RuntimeVm> {
        // The VM's size, the pod's host cgroup (the whole VM is accounted to the pod) and its
        // network (the pod's namespace, which CNI filled) from the sandbox container's spec,
        // as the CLI does.
        let opts = SandboxOptions::from_spec(spec)
            .map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
        let config = RuntimeConfig::load().map_err(|e| TaskError::Internal(e.to_string()))?;
        let name = sandbox_name(&self.root, id);
        tracing::info!(
            "pod {id}: booting sandbox {name} under {} (vcpus {:?}, memory {:?} MiB)",
            self.root.display(),
            opts.vcpus,
            opts.memory_mib
        );
        let sandbox = Sandbox::create(&config, &self.root, &name, &opts)
            .await
            .map_err(|e| TaskError::Internal(format!("creating the pod's VM: {e}")))?;
        // containerd's port-forward dials 127.0.0.1 in the pod's namespace, or in the host's
        // for a host-network pod: the guest's listening ports are forwarded from there.
        let netns = match &opts.network {
            SandboxNetwork::Join(p) => Some(Some(p.clone())),
            SandboxNetwork::Loopback => Some(None),
            SandboxNetwork::Own => None,
        };
        let forward = match (netns, sandbox.agent()) {
            (Some(ns), Ok(agent)) => Some(PortForwarder::start(agent.endpoint().clone(), ns)),
            _ => None,
        };
        Ok(RuntimeVm {
            gone: sandbox.watch_vmm(),
            sandbox,
            forward: std::sync::Mutex::new(forward),
        })
    }

    /// Waits (up to 5 s) for the calls in flight to drop their handles, then stops the VM and
    /// removes its directory; if a handle is still held, kills hull-vmm (containerd's
    /// `delete` of the shim removes the rest).
    async fn destroy(&self, mut vm: Arc<RuntimeVm>) {
        // The port-forward's listeners close first: no new connection reaches a stopping VM.
        drop(vm.forward.lock().unwrap_or_else(|p| p.into_inner()).take());
        for _ in 0..100 {
            match Arc::try_unwrap(vm) {
                Ok(vm) => {
                    let id = vm.sandbox.id().to_string();
                    match vm.sandbox.destroy(STOP_GRACE).await {
                        Ok(()) => tracing::info!("sandbox {id}: destroyed"),
                        Err(e) => tracing::error!("sandbox {id}: destroying: {e}"),
                    }
                    return;
                }
                Err(again) => {
                    vm = again;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        let pid = vm.sandbox.state().vmm_pid;
        tracing::error!(
            "sandbox {}: still in use; killing hull-vmm {pid}",
            vm.sandbox.id()
        );
        if let Err(e) = vm.sandbox.kill_vm().await {
            tracing::error!("sandbox {}: {e}", vm.sandbox.id());
        }
    }
}

impl RuntimeVm {
    fn agent(&self) -> Result<&AgentClient> {
        self.sandbox
            .agent()
            .map_err(|e| TaskError::Internal(e.to_string()))
    }
}

#[async_trait]
impl Vm for RuntimeVm {
    type Container = Container;

    fn pid(&self) -> u32 {
        self.sandbox.state().vmm_pid
    }

    fn gone(&self) -> watch::Receiver<Option<String>> {
        self.gone.receiver()
    }

    async fn create(
        &self,
        id: &str,
        bundle: &Bundle,
        stdio: StdioSpec,
        join: Option<&str>,
    ) -> Result<(Container, ProcessId)> {
        let opts = CreateOptions {
            stdio: Some(stdio),
            join: join.map(str::to_string),
        };
        let c = Container::create(&self.sandbox, id, bundle, &opts)
            .await
            .map_err(container_error)?;
        let init = c.init_process();
        Ok((c, init))
    }

    async fn start(&self, c: &Container) -> Result<()> {
        c.start(&self.sandbox).await.map_err(container_error)
    }

    async fn exec(&self, c: &Container, process: &Process, stdio: StdioSpec) -> Result<ProcessId> {
        let (handle, guest_pid) = c
            .exec(&self.sandbox, process, stdio)
            .await
            .map_err(container_error)?;
        tracing::info!("container {}: exec'd guest pid {guest_pid}", c.id());
        Ok(handle)
    }

    async fn signal(&self, process: &ContainerProcess, signal: i32, all: bool) -> Result<()> {
        let finished =
            |why: String| TaskError::NotFound(format!("process already finished: {why}"));
        let agent = self.sandbox.agent().map_err(|e| finished(e.to_string()))?;
        let r = match (&process.target, all) {
            (Target::Init { container }, true) => {
                agent.kill_container(container, signal, true).await
            }
            _ => process.signal(agent, signal).await,
        };
        r.map_err(|e| match e.agent_kind() {
            Some(
                AgentKind::ProcessExited
                | AgentKind::WrongState
                | AgentKind::UnknownProcess
                | AgentKind::UnknownContainer,
            ) => finished(e.to_string()),
            _ if matches!(e, AgentError::Closed) || !self.sandbox.vmm_running() => {
                finished(e.to_string())
            }
            _ => agent_error(e),
        })
    }

    async fn delete(&self, c: Container) -> Result<()> {
        c.delete(&self.sandbox, true).await.map_err(container_error)
    }

    async fn pause(&self, c: &Container) -> Result<()> {
        c.pause(&self.sandbox).await.map_err(container_error)
    }

    async fn resume(&self, c: &Container) -> Result<()> {
        c.resume(&self.sandbox).await.map_err(container_error)
    }

    async fn update(&self, c: &Container, resources: &LinuxResources) -> Result<()> {
        c.update(&self.sandbox, resources)
            .await
            .map_err(container_error)
    }

    async fn stats(&self, c: &Container) -> Result<ContainerStats> {
        c.stats(&self.sandbox).await.map_err(container_error)
    }

    async fn pids(&self, c: &Container) -> Result<Vec<i32>> {
        c.pids(&self.sandbox).await.map_err(container_error)
    }

    async fn oom_killed(&self, c: &Container) -> bool {
        match c.info(&self.sandbox).await {
            Ok(info) => info.oom_killed,
            Err(e) => {
                tracing::debug!("container {}: state after exit: {e}", c.id());
                false
            }
        }
    }

    async fn attach(&self, process: &ContainerProcess, want: Want) -> Result<Streams> {
        process
            .attach(self.agent()?, want)
            .await
            .map_err(agent_error)
    }

    async fn wait(&self, process: &ContainerProcess, vm_gone: VmGone) -> Exit {
        match self.sandbox.agent() {
            Ok(agent) => process.wait(agent, vm_gone).await,
            Err(e) => {
                tracing::warn!("{}: taken as killed: {e}", process.name());
                Exit::gone()
            }
        }
    }

    async fn input_ended(&self, process: &ContainerProcess, sent: Option<u64>) -> Result<()> {
        process
            .input_ended(self.agent()?, sent)
            .await
            .map_err(agent_error)
    }

    async fn resize(&self, process: &ContainerProcess, rows: u16, cols: u16) -> Result<()> {
        process
            .resize(self.agent()?, rows, cols)
            .await
            .map_err(agent_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::ErrorKind;

    #[test]
    fn runtime_errors_keep_their_kind() {
        let cases = [
            (ContainerError::NotFound("x".into()), ErrorKind::NotFound),
            (
                ContainerError::AlreadyExists("x".into()),
                ErrorKind::AlreadyExists,
            ),
            (
                ContainerError::WrongState {
                    id: "x".into(),
                    status: hull_agent_protocol::ContainerStatus::Stopped,
                    wanted: "running",
                },
                ErrorKind::FailedPrecondition,
            ),
            (
                ContainerError::InvalidId {
                    id: "a/b".into(),
                    reason: "slash".into(),
                },
                ErrorKind::InvalidArgument,
            ),
            (
                ContainerError::Sandbox(SandboxError::NotRunning),
                ErrorKind::Internal,
            ),
        ];
        for (e, kind) in cases {
            let text = e.to_string();
            let t = container_error(e);
            assert_eq!(t.kind(), kind, "{text}");
            assert_eq!(t.message(), text);
        }
    }
}
