//! The service layer: the agent's state (processes, mounts, clock, shutdown) and one method per
//! request type that acts on it and returns the reply.
//!
//! It knows nothing of connections, frames or request ids: [`crate::server`] decodes a request,
//! hands it to [`Agent::handle`] and writes back the [`Outcome`]. Calls run concurrently (a
//! `wait` must not hold up a `health`), so every method takes `&self`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hull_agent_protocol::{
    AgentError, AgentMode, CallPolicy, CreateContainerRequest, ErrorKind, ExecRequest, ExitStatus,
    GuestStats, HealthInfo, MountRequest, NetworkConfig, ProcessId, ProcessInfo, Request, Response,
    SpawnRequest, StdStream, VersionInfo, PROTOCOL_VERSION,
};
use nix::sys::signal::Signal;
use tokio::sync::oneshot;

use crate::container::Containers;
use crate::process::streams::Claim;
use crate::process::Processes;

/// Grace period between SIGTERM and SIGKILL at shutdown, unless the request says otherwise.
pub const DEFAULT_GRACE_MS: u32 = 2000;
/// Longest grace period a request may ask for.
pub const MAX_GRACE_MS: u32 = 60_000;

/// Shared state of the serving agent.
pub struct Agent {
    procs: Arc<Processes>,
    containers: Containers,
    mode: AgentMode,
    /// Which calls are served (the kernel command line's `hull.agent_calls`).
    policy: CallPolicy,
    started: Instant,
    /// Set once by a shutdown request: the grace period.
    shutdown: Mutex<Option<oneshot::Sender<u32>>>,
    /// One `configure_network` at a time.
    network: tokio::sync::Mutex<()>,
}

/// Something to do once a reply has been written (or could not be).
pub type AfterReply = Box<dyn FnOnce() + Send + 'static>;

/// What a call answers, and what is to happen after the answer.
pub struct Outcome {
    pub result: Result<Response, AgentError>,
    /// Runs once the reply is written, so the host has it before the effect (shutdown).
    pub after_reply: Option<AfterReply>,
}

impl From<Result<Response, AgentError>> for Outcome {
    fn from(result: Result<Response, AgentError>) -> Outcome {
        Outcome {
            result,
            after_reply: None,
        }
    }
}

fn done(r: Result<(), AgentError>) -> Result<Response, AgentError> {
    r.map(|()| Response::Done)
}

impl Agent {
    /// The agent and the receiver that fires when the host asks for a shutdown.
    /// It serves only the calls `policy` allows.
    pub fn new(mode: AgentMode, policy: CallPolicy) -> (Arc<Agent>, oneshot::Receiver<u32>) {
        let (tx, rx) = oneshot::channel();
        (
            Arc::new(Agent {
                procs: Arc::new(Processes::new()),
                containers: Containers::new(),
                mode,
                policy,
                started: Instant::now(),
                shutdown: Mutex::new(Some(tx)),
                network: tokio::sync::Mutex::new(()),
            }),
            rx,
        )
    }

    /// Serves one call.
    pub async fn handle(self: &Arc<Self>, call: Request) -> Outcome {
        if let Err(e) = self.policy.check(&call) {
            tracing::warn!("refused: {}", e.message);
            return Err(e).into();
        }
        match call {
            Request::Version => Ok(Response::Version(self.version())),
            Request::Health => Ok(Response::Health(self.health())),
            Request::Spawn(req) => self.spawn(&req),
            Request::Signal {
                process,
                signal,
                group,
            } => done(self.signal(process, signal, group)),
            Request::Wait { process } => self.wait(process).await.map(Response::Exited),
            Request::CloseStdin {
                process,
                after_bytes,
            } => done(self.close_stdin(process, after_bytes).await),
            Request::ResizeTerminal {
                process,
                rows,
                cols,
            } => done(self.resize_terminal(process, rows, cols)),
            Request::Release { process } => done(self.release(process)),
            Request::ListProcesses => Ok(Response::Processes {
                processes: self.list_processes(),
            }),
            Request::Stats => self.stats().map(Response::Stats),
            Request::SetTime { seconds, nanos } => done(self.set_time(seconds, nanos)),
            Request::SetIdentity {
                hostname,
                seconds,
                nanos,
                entropy,
            } => done(self.set_identity(&hostname, seconds, nanos, &entropy)),
            Request::Mount(req) => done(self.mount(req).await),
            Request::Unmount { target, lazy } => done(self.unmount(target, lazy).await),
            Request::Shutdown { grace_ms } => return self.shutdown(grace_ms),
            Request::CreateContainer(req) => self.create_container(req).await,
            Request::StartContainer { id } => done(self.containers.start(&id).await),
            Request::Exec(req) => self.exec(req).await,
            Request::KillContainer { id, signal, all } => {
                done(self.containers.kill(&self.procs, &id, signal, all))
            }
            Request::ContainerState { id } => self.containers.state(&id).map(Response::Container),
            Request::ContainerPids { id } => self
                .containers
                .pids(&id)
                .await
                .map(|pids| Response::Pids { pids }),
            Request::PauseContainer { id } => done(self.containers.pause(&id, true).await),
            Request::ResumeContainer { id } => done(self.containers.pause(&id, false).await),
            Request::UpdateContainer { id, resources } => {
                done(self.containers.update(&id, resources).await)
            }
            Request::ContainerStats { id } => self
                .containers
                .stats(&id)
                .await
                .map(Response::ContainerStats),
            Request::DeleteContainer { id, force } => {
                done(self.containers.delete(&self.procs, &id, force).await)
            }
            Request::ConfigureNetwork(cfg) => done(self.configure_network(cfg).await),
            Request::ListeningPorts { known, wait_ms } => {
                crate::forward::listening_ports(known, wait_ms)
                    .await
                    .map(|ports| Response::Ports { ports })
            }
            other => Err(AgentError::new(
                ErrorKind::UnknownRequest,
                format!(
                    "request type {:?} is not served by this agent",
                    other.type_name()
                ),
            )),
        }
        .into()
    }

    /// Containers need the guest's cgroup v2 and PID 1 duties: not in host mode.
    fn guest_only(&self, call: &str) -> Result<(), AgentError> {
        if self.mode == AgentMode::Host {
            return Err(AgentError::new(
                ErrorKind::Unsupported,
                format!("{call} is refused in host mode: containers run only in the guest"),
            ));
        }
        Ok(())
    }

    pub async fn create_container(
        &self,
        req: CreateContainerRequest,
    ) -> Result<Response, AgentError> {
        self.guest_only("create_container")?;
        let (p, pid) = self.containers.create(&self.procs, req).await?;
        Ok(Response::Spawned { process: p.id, pid })
    }

    pub async fn exec(&self, req: ExecRequest) -> Result<Response, AgentError> {
        self.guest_only("exec")?;
        let (p, pid) = self.containers.exec(&self.procs, req).await?;
        Ok(Response::Spawned { process: p.id, pid })
    }

    pub fn version(&self) -> VersionInfo {
        VersionInfo {
            protocol: PROTOCOL_VERSION,
            agent: env!("CARGO_PKG_VERSION").to_string(),
            mode: self.mode,
            kernel: nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }

    pub fn health(&self) -> HealthInfo {
        HealthInfo {
            uptime_ms: self.started.elapsed().as_millis() as u64,
            running_processes: self.procs.running(),
        }
    }

    pub fn spawn(&self, req: &SpawnRequest) -> Result<Response, AgentError> {
        let p = self.procs.spawn(req)?;
        Ok(Response::Spawned {
            process: p.id,
            pid: p.pid,
        })
    }

    pub fn signal(&self, process: ProcessId, signal: i32, group: bool) -> Result<(), AgentError> {
        self.procs.signal(process, signal, group)
    }

    pub async fn wait(&self, process: ProcessId) -> Result<ExitStatus, AgentError> {
        self.procs.wait(process).await
    }

    pub async fn close_stdin(
        &self,
        process: ProcessId,
        after_bytes: Option<u64>,
    ) -> Result<(), AgentError> {
        self.procs.close_stdin(process, after_bytes).await
    }

    pub fn resize_terminal(
        &self,
        process: ProcessId,
        rows: u16,
        cols: u16,
    ) -> Result<(), AgentError> {
        self.procs.resize(process, rows, cols)
    }

    pub fn release(&self, process: ProcessId) -> Result<(), AgentError> {
        self.procs.release(process)
    }

    pub fn list_processes(&self) -> Vec<ProcessInfo> {
        self.procs.list()
    }

    pub fn stats(&self) -> Result<GuestStats, AgentError> {
        crate::stats::collect()
    }

    pub fn set_time(&self, seconds: i64, nanos: u32) -> Result<(), AgentError> {
        if self.mode == AgentMode::Host {
            return Err(AgentError::new(
                ErrorKind::Unsupported,
                "set_time is refused in host mode: the agent does not change its host's clock",
            ));
        }
        crate::init::set_clock(seconds, nanos)
    }

    /// A restored guest's own identity (see `Request::SetIdentity`): the request is checked
    /// whole before anything changes; the entropy goes first, so that nothing the guest does
    /// afterwards draws from the template's generator state.
    pub fn set_identity(
        &self,
        hostname: &str,
        seconds: i64,
        nanos: u32,
        entropy: &[u8],
    ) -> Result<(), AgentError> {
        if self.mode == AgentMode::Host {
            return Err(AgentError::new(
                ErrorKind::Unsupported,
                "set_identity is refused in host mode: the agent does not change its host",
            ));
        }
        crate::init::check_identity(hostname, entropy)?;
        crate::init::reseed(entropy)?;
        crate::init::set_clock(seconds, nanos)?;
        nix::unistd::sethostname(hostname).map_err(|e| {
            AgentError::new(ErrorKind::Io, format!("sethostname {hostname:?}: {e}"))
        })?;
        tracing::info!("identity: hostname {hostname}, clock {seconds}.{nanos:09}, {} bytes of entropy, CRNG reseeded", entropy.len());
        Ok(())
    }

    pub async fn mount(&self, req: MountRequest) -> Result<(), AgentError> {
        // Mounting a virtio-fs share is a FUSE round trip to the VMM: keep it off the async
        // workers.
        tokio::task::spawn_blocking(move || crate::mounts::mount_fs(&req))
            .await
            .map_err(|e| AgentError::new(ErrorKind::Io, format!("mount task: {e}")))?
    }

    pub async fn unmount(&self, target: String, lazy: bool) -> Result<(), AgentError> {
        tokio::task::spawn_blocking(move || crate::mounts::unmount_fs(&target, lazy))
            .await
            .map_err(|e| AgentError::new(ErrorKind::Io, format!("unmount task: {e}")))?
    }

    /// Checks the request first (an invalid one is refused in both modes); host mode then
    /// refuses it: the agent does not change its host's network.
    pub async fn configure_network(&self, cfg: NetworkConfig) -> Result<(), AgentError> {
        cfg.check()?;
        if self.mode == AgentMode::Host {
            return Err(AgentError::new(
                ErrorKind::Unsupported,
                "configure_network is refused in host mode: the agent does not change its \
                 host's network",
            ));
        }
        let _one = self.network.lock().await;
        crate::network::configure(&cfg).await.map_err(|e| {
            tracing::warn!("configure_network: {e}");
            AgentError::from(e)
        })
    }

    /// Answers at once; the shutdown itself starts once the reply is written.
    pub fn shutdown(self: &Arc<Self>, grace_ms: Option<u32>) -> Outcome {
        let grace = grace_ms.unwrap_or(DEFAULT_GRACE_MS).min(MAX_GRACE_MS);
        let agent = self.clone();
        Outcome {
            result: Ok(Response::Done),
            after_reply: Some(Box::new(move || agent.request_shutdown(grace))),
        }
    }

    fn request_shutdown(&self, grace_ms: u32) {
        if let Some(tx) = crate::locked(&self.shutdown).take() {
            let _ = tx.send(grace_ms);
        }
    }

    /// A stream connection: claims the stream (before the hello reply is sent, so a `wait`
    /// that follows the reply accounts for it). The server then copies it over the connection.
    pub fn open_stream(&self, process: ProcessId, stream: StdStream) -> Result<Claim, AgentError> {
        self.procs.attach(process, stream)
    }

    /// Collects every exited child (the reaper, on SIGCHLD).
    pub fn reap(&self) {
        self.procs.reap();
    }

    /// Host mode: SIGTERM every process group the agent started, SIGKILL after the grace period.
    pub async fn stop_processes(&self, grace: Duration) {
        self.procs.signal_all(Signal::SIGTERM);
        self.until_none_running(grace).await;
        self.procs.signal_all(Signal::SIGKILL);
        // Let the reaper collect them.
        self.until_none_running(Duration::from_secs(2)).await;
    }

    /// Waits until no process runs any more, for at most `limit`.
    async fn until_none_running(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.procs.running() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
