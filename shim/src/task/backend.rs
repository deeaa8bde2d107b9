//! What the task model needs from the pod's VM, as traits: [`Backend`] boots the pod's VM,
//! [`Vm`] drives the containers and processes in it. The real implementation
//! ([`super::runtime`]) is hull-runtime's `Sandbox` and `Container`; the tests use a fake.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use hull_agent_protocol::{ContainerStats, ProcessId, StdioSpec};
use hull_runtime::container::Bundle;
use hull_runtime::process::{ContainerProcess, Exit, Streams, Want};
use oci_spec::runtime::{LinuxResources, Process, Spec};
use tokio::sync::watch;

use super::error::Result;

/// Resolves, with the reason, once the VM is known to be gone.
pub type VmGone = Pin<Box<dyn Future<Output = String> + Send>>;

/// Boots (and destroys) the pod's VM.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    type Vm: Vm;

    /// The bundle at `bundle`, read and checked once (an unusable bundle is
    /// `InvalidArgument`): its spec decides the pod's role and VM, and the container is
    /// created from it.
    fn load_bundle(&self, bundle: &Path) -> Result<Bundle>;

    /// Boots the VM of the pod that container `id` (with `spec`) owns: its size and network
    /// come from the spec. The VM is up, its agent answering, when this returns.
    async fn boot(&self, id: &str, spec: &Spec) -> Result<Self::Vm>;

    /// Stops the VM and removes what it left. `vm` may still be held elsewhere for a moment
    /// (a call in flight): the VM goes anyway.
    async fn destroy(&self, vm: Arc<Self::Vm>);
}

/// The pod's VM and the containers in it.
#[async_trait]
pub trait Vm: Send + Sync + 'static {
    /// A container of the pod.
    type Container: Clone + Send + Sync + 'static;

    /// The pid containerd is given for every process of the pod: the VMM's (the processes
    /// themselves live in the guest).
    fn pid(&self) -> u32;

    /// `Some(reason)` once the VM is gone (its VMM exited).
    fn gone(&self) -> watch::Receiver<Option<String>>;

    /// Creates container `id` from `bundle` with its init's `stdio`, joining the namespaces
    /// of container `join` (a CRI pod's sandbox container). Returns the container and its
    /// init's handle; the init waits for [`Vm::start`].
    async fn create(
        &self,
        id: &str,
        bundle: &Bundle,
        stdio: StdioSpec,
        join: Option<&str>,
    ) -> Result<(Self::Container, ProcessId)>;

    /// Lets the container's init run its program.
    async fn start(&self, container: &Self::Container) -> Result<()>;

    /// Runs `process` in the running container with `stdio`; returns its handle.
    async fn exec(
        &self,
        container: &Self::Container,
        process: &Process,
        stdio: StdioSpec,
    ) -> Result<ProcessId>;

    /// Sends `signal` to the process (to every process of its container with `all`, for an
    /// init). A process that has already ended (or whose VM is gone) is `NotFound`.
    async fn signal(&self, process: &ContainerProcess, signal: i32, all: bool) -> Result<()>;

    /// Deletes the container, killing it first if it still runs.
    async fn delete(&self, container: Self::Container) -> Result<()>;

    async fn pause(&self, container: &Self::Container) -> Result<()>;
    async fn resume(&self, container: &Self::Container) -> Result<()>;
    async fn update(&self, container: &Self::Container, resources: &LinuxResources) -> Result<()>;
    async fn stats(&self, container: &Self::Container) -> Result<ContainerStats>;
    /// Guest pids of the container's processes.
    async fn pids(&self, container: &Self::Container) -> Result<Vec<i32>>;
    /// Whether the guest's OOM killer killed a process of the container (false when that
    /// cannot be known any more).
    async fn oom_killed(&self, container: &Self::Container) -> bool;

    /// Opens the process's streams `want` asks for; before [`Vm::wait`], so no output is lost.
    async fn attach(&self, process: &ContainerProcess, want: Want) -> Result<Streams>;

    /// Waits for the process to end; [`Exit::gone`] once `vm_gone` resolves first.
    async fn wait(&self, process: &ContainerProcess, vm_gone: VmGone) -> Exit;

    /// The process's input ended after `sent` bytes (`None`: unknown): stdin's end.
    async fn input_ended(&self, process: &ContainerProcess, sent: Option<u64>) -> Result<()>;

    /// Sets the size of the process's terminal.
    async fn resize(&self, process: &ContainerProcess, rows: u16, cols: u16) -> Result<()>;
}
