//! The task service (containerd's `containerd.task.v2.Task` over ttrpc): every call is mapped
//! onto hull-runtime. One shim serves one pod: the first task created (a CRI sandbox container,
//! or a plain `ctr run` container) boots the pod's VM, a CRI container joins it.
//!
//! Each process (a container's init, an exec) has a waiter task that waits for it through the
//! agent, records its exit status and time, publishes TaskExit and wakes Wait callers. The VMM
//! is this process's child: a thread reaps it, and when it dies every process of the pod exits
//! 137 at once (the reason goes to the shim log), so no Wait ever hangs on a dead VM.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::{self, Empty, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageDyn, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Context, TtrpcResult};
use hull_agent_protocol::{ContainerStatus, ProcessId, StdStream};
use hull_runtime::config::RuntimeConfig;
use hull_runtime::container::{Container, ContainerError, CreateOptions, DEFAULT_TERMINAL};
use hull_runtime::sandbox::Sandbox;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::convert::{self, exit_code, internal, invalid, not_found, precondition, EXIT_KILLED};
use crate::pod::{self, Role};
use crate::rootfs::{self, RootMount};
use crate::stdio::{self, Input, StdioPaths};

/// How long the agent may take to stop the guest when the pod's last task is gone.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long an exit waits for its output to drain to containerd before it is published anyway
/// (the copies go on).
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How long Delete waits for a created (never started) process to be reaped.
const DELETE_WAIT: Duration = Duration::from_secs(10);

/// A process's exit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: u32,
    pub at: SystemTime,
}

struct ProcState {
    status: Status,
    process: Option<ProcessId>,
    exit: Option<Exit>,
}

/// A container's init or one of its execs.
struct Proc {
    container_id: String,
    /// Empty for the init.
    exec_id: String,
    stdio: StdioPaths,
    /// The pid containerd sees: hull-vmm's (the processes themselves live in the guest).
    pid: u32,
    /// An exec's process spec, kept from Exec until Start.
    spec: Option<oci_spec::runtime::Process>,
    state: StdMutex<ProcState>,
    exited: watch::Sender<Option<Exit>>,
    stdin_close: Arc<Notify>,
    /// Held by Start while it starts the process and publishes the start, and by the waiter
    /// before it publishes the exit: TaskExit never comes before TaskStart.
    start_lock: tokio::sync::Mutex<()>,
}

impl Proc {
    fn new(
        container_id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        pid: u32,
        spec: Option<oci_spec::runtime::Process>,
        process: Option<ProcessId>,
    ) -> Proc {
        Proc {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            pid,
            spec,
            state: StdMutex::new(ProcState {
                status: Status::CREATED,
                process,
                exit: None,
            }),
            exited: watch::channel(None).0,
            stdin_close: Arc::new(Notify::new()),
            start_lock: tokio::sync::Mutex::new(()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ProcState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self) -> Status {
        self.lock().status
    }

    fn set_status(&self, s: Status) {
        let mut st = self.lock();
        if st.status != Status::STOPPED {
            st.status = s;
        }
    }

    fn process(&self) -> TtrpcResult<ProcessId> {
        self.lock()
            .process
            .ok_or_else(|| precondition(format!("{} has not been started", self.name())))
    }

    fn name(&self) -> String {
        if self.exec_id.is_empty() {
            format!("container {}", self.container_id)
        } else {
            format!("exec {} of container {}", self.exec_id, self.container_id)
        }
    }

    /// The id containerd's events use for this process.
    fn event_id(&self) -> &str {
        if self.exec_id.is_empty() {
            &self.container_id
        } else {
            &self.exec_id
        }
    }
}

struct TaskEntry {
    container: Container,
    bundle: PathBuf,
    /// `<bundle>/rootfs` when this shim mounted containerd's rootfs mounts on it.
    mounted_rootfs: Option<PathBuf>,
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
}

/// The pod's VM.
struct Pod {
    sandbox: Arc<Sandbox>,
    /// The container that created it (a CRI sandbox container, or the plain container).
    owner: String,
    /// Some(reason) once hull-vmm has exited.
    vm_dead: watch::Receiver<Option<String>>,
    /// The pod's cgroupsPath hull-vmm was started in (removed with the VM).
    cgroup: Option<PathBuf>,
}

#[derive(Default)]
struct State {
    pod: Option<Pod>,
    tasks: HashMap<String, TaskEntry>,
}

struct Inner {
    namespace: String,
    root: PathBuf,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    state: StdMutex<State>,
    /// Serialises Create (the first one boots the VM) and Shutdown.
    create_lock: tokio::sync::Mutex<()>,
    /// Waiters and stdin copies, which hold the sandbox: aborted before it is destroyed.
    background: StdMutex<Vec<JoinHandle<()>>>,
}

/// containerd's task service for one pod.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
}

fn ctx() -> Context {
    Context::default()
}

/// Waits until the VM is dead; returns why.
async fn vm_dead(mut rx: watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(r) = rx.borrow_and_update().clone() {
            return r;
        }
        if rx.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}

/// Reaps hull-vmm (this process's child) on a thread of its own and reports why it stopped.
fn watch_vmm(sandbox: &Sandbox) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    let pid = sandbox.state().vmm_pid;
    let log = sandbox.dir().join("vmm.log");
    let spawned = std::thread::Builder::new()
        .name("vmm-reaper".into())
        .spawn(move || {
            let how = match nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None) {
                Ok(s) => format!("{s:?}"),
                Err(e) => format!("cannot wait for it: {e}"),
            };
            let tail: String = std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join(" | ");
            let reason = format!("hull-vmm (pid {pid}) stopped: {how}; its log ends: {tail}");
            tracing::warn!("{reason}");
            let _ = tx.send(Some(reason));
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the VMM reaper thread: {e}");
    }
    rx
}

fn rootfs_mounts(req: &[containerd_shim::protos::api::Mount]) -> Vec<RootMount> {
    req.iter()
        .map(|m| RootMount {
            fstype: m.type_.clone(),
            source: m.source.clone(),
            options: m.options.clone(),
        })
        .collect()
}

/// The terminal size a process asks for (process.consoleSize), else 24x80.
fn console_size(p: Option<&oci_spec::runtime::Process>) -> (u16, u16) {
    p.and_then(|p| p.console_size())
        .map(|b| {
            let clamp = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
            (clamp(b.height()), clamp(b.width()))
        })
        .filter(|&(r, c)| r > 0 && c > 0)
        .unwrap_or(DEFAULT_TERMINAL)
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                root: pod::state_root(namespace),
                publisher,
                exit,
                state: StdMutex::new(State::default()),
                create_lock: tokio::sync::Mutex::new(()),
                background: StdMutex::new(Vec::new()),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn keep(&self, h: JoinHandle<()>) {
        let mut bg = self
            .inner
            .background
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        bg.retain(|h| !h.is_finished());
        bg.push(h);
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .inner
            .publisher
            .publish(ctx(), topic, &self.inner.namespace, event)
            .await
        {
            tracing::warn!("publishing {topic}: {e}");
        }
    }

    /// The sandbox, a task's container and the process `exec_id` of it ("" is the init).
    fn lookup(&self, id: &str, exec_id: &str) -> TtrpcResult<(Arc<Sandbox>, Container, Arc<Proc>)> {
        let st = self.state();
        let t = st
            .tasks
            .get(id)
            .ok_or_else(|| not_found(format!("task {id} does not exist")))?;
        let p = if exec_id.is_empty() {
            t.init.clone()
        } else {
            t.execs
                .get(exec_id)
                .cloned()
                .ok_or_else(|| not_found(format!("exec {exec_id} of task {id} does not exist")))?
        };
        let pod = st
            .pod
            .as_ref()
            .ok_or_else(|| internal("the pod's sandbox is gone"))?;
        Ok((pod.sandbox.clone(), t.container.clone(), p))
    }

    fn vm_dead_rx(&self) -> Option<watch::Receiver<Option<String>>> {
        self.state().pod.as_ref().map(|p| p.vm_dead.clone())
    }

    /// Attaches the process's streams to containerd's stdio and starts its waiter.
    async fn attach_and_wait(
        &self,
        sandbox: &Arc<Sandbox>,
        proc: &Arc<Proc>,
        process: ProcessId,
        container: Option<Container>,
    ) -> TtrpcResult<()> {
        let agent = sandbox
            .agent()
            .map_err(|e| internal(format!("{}: {e}", proc.name())))?;
        let io_err =
            |what: &str, e: std::io::Error| internal(format!("{}: {what}: {e}", proc.name()));
        let mut outputs = Vec::new();
        let attach_out = |path: &str, stream: StdStream| {
            let path = path.to_string();
            async move {
                let out = stdio::open_output(&path)
                    .await
                    .map_err(|e| io_err("stdout/stderr", e))?;
                let s = agent
                    .open_stream(process, stream)
                    .await
                    .map_err(|e| internal(format!("{} {stream:?}: {e}", proc.name())))?;
                TtrpcResult::Ok(tokio::spawn(async move {
                    if let Err(e) = stdio::copy_out(s, out).await {
                        tracing::warn!("copying {stream:?} to {path}: {e}");
                    }
                }))
            }
        };
        if !proc.stdio.stdout.is_empty() {
            outputs.push(attach_out(&proc.stdio.stdout, StdStream::Stdout).await?);
        }
        if proc.stdio.has_stderr() {
            outputs.push(attach_out(&proc.stdio.stderr, StdStream::Stderr).await?);
        }
        if !proc.stdio.stdin.is_empty() {
            let input = Input::open(&proc.stdio.stdin).map_err(|e| io_err("stdin", e))?;
            let s = agent
                .open_stream(process, StdStream::Stdin)
                .await
                .map_err(|e| internal(format!("{} stdin: {e}", proc.name())))?;
            let close = proc.stdin_close.clone();
            let sb = sandbox.clone();
            let name = proc.name();
            self.keep(tokio::spawn(async move {
                let sent = match stdio::copy_in(input, s, close).await {
                    Ok(n) => Some(n),
                    Err(e) => {
                        tracing::warn!("{name}: copying stdin: {e}");
                        None
                    }
                };
                if let Ok(agent) = sb.agent() {
                    if let Err(e) = agent.close_stdin(process, sent).await {
                        tracing::debug!("{name}: closing stdin: {e}");
                    }
                }
            }));
        }
        let me = self.clone();
        let sb = sandbox.clone();
        let p = proc.clone();
        let dead = self.vm_dead_rx();
        self.keep(tokio::spawn(async move {
            me.wait_process(sb, p, process, outputs, container, dead)
                .await
        }));
        Ok(())
    }

    async fn wait_process(
        &self,
        sandbox: Arc<Sandbox>,
        proc: Arc<Proc>,
        process: ProcessId,
        outputs: Vec<JoinHandle<()>>,
        container: Option<Container>,
        dead: Option<watch::Receiver<Option<String>>>,
    ) {
        let name = proc.name();
        let result = match sandbox.agent() {
            Ok(agent) => {
                let dead = async {
                    match dead {
                        Some(rx) => vm_dead(rx).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    r = agent.wait(process) => r.map_err(|e| format!("the agent's wait failed: {e}")),
                    why = dead => Err(why),
                }
            }
            Err(e) => Err(e.to_string()),
        };
        let code = match result {
            Ok(s) => exit_code(&s),
            Err(why) => {
                tracing::warn!("{name}: taken as killed (exit {EXIT_KILLED}): {why}");
                EXIT_KILLED
            }
        };
        let drain = futures_join(outputs);
        if tokio::time::timeout(DRAIN_LIMIT, drain).await.is_err() {
            tracing::warn!("{name}: its output is still being copied; publishing its exit");
        }
        let exit = Exit {
            code,
            at: SystemTime::now(),
        };
        if let Some(c) = container {
            match c.info(&sandbox).await {
                Ok(info) if info.oom_killed => {
                    self.publish(
                        topics::TASK_OOM_EVENT_TOPIC,
                        Box::new(TaskOOM {
                            container_id: proc.container_id.clone(),
                            ..Default::default()
                        }),
                    )
                    .await;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!("{name}: state after exit: {e}"),
            }
        }
        {
            let mut st = proc.lock();
            st.status = Status::STOPPED;
            st.exit = Some(exit);
        }
        let _started = proc.start_lock.lock().await;
        tracing::info!("{name}: exited with {code}");
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: proc.container_id.clone(),
                id: proc.event_id().to_string(),
                pid: proc.pid,
                exit_status: code,
                exited_at: MessageField::some(convert::timestamp(exit.at)),
                ..Default::default()
            }),
        )
        .await;
        proc.exited.send_replace(Some(exit));
    }

    /// The pod for a new task: boots the VM for the pod's first task, or finds the one the
    /// CRI container joins. Returns the sandbox, the container to join, and whether it was
    /// created here.
    async fn pod_for(
        &self,
        id: &str,
        role: &Role,
        spec: &oci_spec::runtime::Spec,
    ) -> TtrpcResult<(Arc<Sandbox>, Option<String>, bool)> {
        {
            let st = self.state();
            match (role, &st.pod) {
                (Role::Container { sandbox }, Some(p)) if &p.owner == sandbox => {
                    return Ok((p.sandbox.clone(), Some(sandbox.clone()), false))
                }
                (Role::Container { sandbox }, _) => {
                    return Err(not_found(format!(
                        "the pod's sandbox container {sandbox} is not served by this shim"
                    )))
                }
                (Role::Sandbox, Some(p)) => {
                    return Err(convert::status(
                        Code::ALREADY_EXISTS,
                        format!("this shim already serves the pod of {}", p.owner),
                    ))
                }
                (Role::Sandbox, None) => {}
            }
        }
        let annotations = spec.annotations().clone().unwrap_or_default();
        let cgroup = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        let mut opts = pod::vm_options(&annotations).map_err(|e| invalid(e.to_string()))?;
        // hull-vmm starts in the pod's cgroup (the sandbox container's cgroupsPath): the whole
        // VM is accounted to the pod.
        opts.host_cgroup = cgroup
            .as_deref()
            .and_then(hull_runtime::host_cgroup::prepare);
        // The pod's network namespace (CNI put its interfaces there): the VM takes them over.
        // Without one (a plain `ctr run`), nothing sets up a network: loopback only.
        opts.network = match hull_runtime::network::spec_netns(spec) {
            Some(ns) => hull_runtime::sandbox::SandboxNetwork::Join(ns),
            None => hull_runtime::sandbox::SandboxNetwork::Loopback,
        };
        let config = RuntimeConfig::load().map_err(|e| internal(e.to_string()))?;
        let name = pod::sandbox_name(&self.inner.root, id);
        tracing::info!(
            "pod {id}: booting sandbox {name} under {} (vcpus {:?}, memory {:?} MiB)",
            self.inner.root.display(),
            opts.vcpus,
            opts.memory_mib
        );
        let sandbox = Sandbox::create(&config, &self.inner.root, &name, &opts)
            .await
            .map_err(|e| internal(format!("creating the pod's VM: {e}")))?;
        let vm_dead = watch_vmm(&sandbox);
        let sandbox = Arc::new(sandbox);
        self.state().pod = Some(Pod {
            sandbox: sandbox.clone(),
            owner: id.to_string(),
            vm_dead,
            cgroup: opts.host_cgroup.is_some().then_some(cgroup).flatten(),
        });
        Ok((sandbox, None, true))
    }

    /// Stops the pod's VM and removes its state: the background tasks that hold the sandbox
    /// are aborted first, so this handle is the last one.
    async fn destroy_pod(&self) {
        let Some(pod) = self.state().pod.take() else {
            return;
        };
        let handles: Vec<_> = std::mem::take(
            &mut *self
                .inner
                .background
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for h in &handles {
            h.abort();
        }
        for h in handles {
            let _ = h.await;
        }
        let mut sandbox = pod.sandbox;
        for _ in 0..100 {
            match Arc::try_unwrap(sandbox) {
                Ok(sb) => {
                    let id = sb.id().to_string();
                    match sb.destroy(STOP_GRACE).await {
                        Ok(()) => tracing::info!("sandbox {id}: destroyed"),
                        Err(e) => tracing::error!("sandbox {id}: destroying: {e}"),
                    }
                    if let Some(cg) = &pod.cgroup {
                        hull_runtime::host_cgroup::remove(cg);
                    }
                    return;
                }
                Err(again) => {
                    sandbox = again;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        // Still in use by a call in flight: kill the VM; `containerd-shim-hull-v2 delete`
        // (which containerd runs after the shim exits) removes the rest.
        let pid = sandbox.state().vmm_pid;
        tracing::error!(
            "sandbox {}: still in use; killing hull-vmm {pid}",
            sandbox.id()
        );
        if sandbox.vmm_running() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    async fn create_task(&self, req: &api::CreateTaskRequest) -> TtrpcResult<u32> {
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(convert::status(
                Code::UNIMPLEMENTED,
                "restoring from a checkpoint is not supported by hull",
            ));
        }
        let id = req.id.as_str();
        let bundle = PathBuf::from(&req.bundle);
        if self.state().tasks.contains_key(id) {
            return Err(convert::status(
                Code::ALREADY_EXISTS,
                format!("task {id} already exists"),
            ));
        }
        let b = hull_runtime::container::load_bundle(&bundle)
            .map_err(|e| convert::container_error(&e))?;
        let annotations: HashMap<String, String> = b.spec.annotations().clone().unwrap_or_default();
        let role = pod::role(&annotations).map_err(|e| invalid(e.to_string()))?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        let size = console_size(b.spec.process().as_ref());

        let mounts = rootfs_mounts(&req.rootfs);
        let target = bundle.join("rootfs");
        let mounted = if mounts.is_empty() {
            None
        } else {
            let (m, t) = (mounts.clone(), target.clone());
            tokio::task::spawn_blocking(move || rootfs::mount_all(&m, &t))
                .await
                .map_err(|e| internal(e.to_string()))?
                .map_err(|e| internal(e.to_string()))?;
            Some(target)
        };

        let r = self
            .create_in_pod(id, &bundle, &role, &b.spec, &stdio, size)
            .await;
        let (sandbox, container, created_pod) = match r {
            Ok(v) => v,
            Err((e, created_pod)) => {
                if created_pod {
                    self.destroy_pod().await;
                }
                if let Some(t) = &mounted {
                    if let Err(u) = rootfs::unmount_all(t) {
                        tracing::warn!("task {id}: undoing the rootfs mount: {u}");
                    }
                }
                return Err(e);
            }
        };
        let pid = sandbox.state().vmm_pid;
        let init = Arc::new(Proc::new(
            id,
            "",
            stdio.clone(),
            pid,
            None,
            Some(container.init_process()),
        ));
        let r = self
            .attach_and_wait(
                &sandbox,
                &init,
                container.init_process(),
                Some(container.clone()),
            )
            .await;
        if let Err(e) = r {
            if let Err(d) = container.delete(&sandbox, true).await {
                tracing::warn!("task {id}: undoing the create: {d}");
            }
            drop(sandbox);
            if created_pod {
                self.destroy_pod().await;
            }
            if let Some(t) = &mounted {
                let _ = rootfs::unmount_all(t);
            }
            return Err(e);
        }
        self.state().tasks.insert(
            id.to_string(),
            TaskEntry {
                container,
                bundle: bundle.clone(),
                mounted_rootfs: mounted,
                init,
                execs: HashMap::new(),
            },
        );
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: id.to_string(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: MessageField::some(TaskIO {
                    stdin: stdio.stdin,
                    stdout: stdio.stdout,
                    stderr: stdio.stderr,
                    terminal: stdio.terminal,
                    ..Default::default()
                }),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(pid)
    }

    /// The VM (booted or joined) and the container created in it; on error, whether the VM
    /// was booted by this call (the caller tears it down).
    async fn create_in_pod(
        &self,
        id: &str,
        bundle: &Path,
        role: &Role,
        spec: &oci_spec::runtime::Spec,
        stdio: &StdioPaths,
        size: (u16, u16),
    ) -> Result<(Arc<Sandbox>, Container, bool), (ttrpc::Error, bool)> {
        let (sandbox, join, created) =
            self.pod_for(id, role, spec).await.map_err(|e| (e, false))?;
        let opts = CreateOptions {
            stdio: Some(stdio.spec(size)),
            join,
        };
        match sandbox.create_container(id, bundle, &opts).await {
            Ok(c) => Ok((sandbox, c, created)),
            Err(e) => Err((convert::container_error(&e), created)),
        }
    }

    fn map_kill_error(e: ContainerError, name: &str) -> ttrpc::Error {
        match e {
            ContainerError::WrongState {
                status: ContainerStatus::Stopped,
                ..
            } => not_found(format!("{name}: process already finished")),
            e => convert::container_error(&e),
        }
    }
}

/// Awaits every handle (their results are logged by the tasks themselves).
async fn futures_join(handles: Vec<JoinHandle<()>>) {
    for h in handles {
        let _ = h.await;
    }
}

fn ce(e: ContainerError) -> ttrpc::Error {
    convert::container_error(&e)
}

#[async_trait]
impl Task for Service {
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let (_, container, p) = self.lookup(&req.id, &req.exec_id)?;
        let st = p.lock();
        let mut r = api::StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: container.bundle().display().to_string(),
            pid: p.pid,
            status: EnumOrUnknown::new(st.status),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            ..Default::default()
        };
        if let Some(e) = st.exit {
            r.exit_status = e.code;
            r.exited_at = MessageField::some(convert::timestamp(e.at));
        }
        Ok(r)
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let _serial = self.inner.create_lock.lock().await;
        tracing::info!("create {} (bundle {})", req.id, req.bundle);
        let pid = self.create_task(&req).await.inspect_err(|e| {
            tracing::warn!("create {}: {e:?}", req.id);
        })?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let (sandbox, container, p) = self.lookup(&req.id, &req.exec_id)?;
        let _g = p.start_lock.lock().await;
        if p.status() != Status::CREATED {
            return Err(precondition(format!("{} is not created", p.name())));
        }
        if req.exec_id.is_empty() {
            container.start(&sandbox).await.map_err(ce)?;
            p.set_status(Status::RUNNING);
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid: p.pid,
                    ..Default::default()
                }),
            )
            .await;
        } else {
            let spec = p
                .spec
                .clone()
                .ok_or_else(|| internal(format!("{}: no process spec", p.name())))?;
            let stdio = p.stdio.spec(console_size(Some(&spec)));
            let (process, guest_pid) = container.exec(&sandbox, &spec, stdio).await.map_err(ce)?;
            tracing::info!("{}: guest pid {guest_pid}", p.name());
            p.lock().process = Some(process);
            p.set_status(Status::RUNNING);
            self.attach_and_wait(&sandbox, &p, process, None).await?;
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid: p.pid,
                    ..Default::default()
                }),
            )
            .await;
        }
        Ok(api::StartResponse {
            pid: p.pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let (sandbox, container, p) = self.lookup(&req.id, &req.exec_id)?;
        let status = p.status();
        if matches!(status, Status::RUNNING | Status::PAUSED) {
            return Err(precondition(format!(
                "{} is still running: kill it first",
                p.name()
            )));
        }
        let exit = if req.exec_id.is_empty() {
            container.delete(&sandbox, true).await.map_err(ce)?;
            // A created init was killed by the delete: wait for its waiter.
            let exit = {
                let mut rx = p.exited.subscribe();
                let waited = tokio::time::timeout(DELETE_WAIT, rx.wait_for(Option::is_some))
                    .await
                    .ok()
                    .and_then(|r| r.ok().and_then(|e| *e));
                waited
            };
            let entry = self.state().tasks.remove(&req.id);
            if let Some(t) = entry.as_ref().and_then(|t| t.mounted_rootfs.as_ref()) {
                let t = t.clone();
                tokio::task::spawn_blocking(move || rootfs::unmount_all(&t))
                    .await
                    .map_err(|e| internal(e.to_string()))?
                    .map_err(|e| internal(e.to_string()))?;
            }
            if let Some(t) = &entry {
                tracing::info!("task {}: deleted (bundle {})", req.id, t.bundle.display());
            }
            exit
        } else {
            if let Some(t) = self.state().tasks.get_mut(&req.id) {
                t.execs.remove(&req.exec_id);
            }
            p.lock().exit
        };
        let exit = exit.unwrap_or(Exit {
            code: EXIT_KILLED,
            at: SystemTime::now(),
        });
        if req.exec_id.is_empty() {
            self.publish(
                topics::TASK_DELETE_EVENT_TOPIC,
                Box::new(TaskDelete {
                    container_id: req.id.clone(),
                    id: req.id.clone(),
                    pid: p.pid,
                    exit_status: exit.code,
                    exited_at: MessageField::some(convert::timestamp(exit.at)),
                    ..Default::default()
                }),
            )
            .await;
        }
        Ok(api::DeleteResponse {
            pid: p.pid,
            exit_status: exit.code,
            exited_at: MessageField::some(convert::timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let (sandbox, container, _) = self.lookup(&req.id, "")?;
        let pids = container.pids(&sandbox).await.map_err(ce)?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| containerd_shim::protos::api::ProcessInfo {
                    pid: pid as u32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        let (sandbox, container, p) = self.lookup(&req.id, "")?;
        container.pause(&sandbox).await.map_err(ce)?;
        p.set_status(Status::PAUSED);
        self.publish(
            topics::TASK_PAUSED_EVENT_TOPIC,
            Box::new(TaskPaused {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        let (sandbox, container, p) = self.lookup(&req.id, "")?;
        container.resume(&sandbox).await.map_err(ce)?;
        p.set_status(Status::RUNNING);
        self.publish(
            topics::TASK_RESUMED_EVENT_TOPIC,
            Box::new(TaskResumed {
                container_id: req.id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(convert::status(
            Code::UNIMPLEMENTED,
            "checkpoint is not supported by hull (the container runs in a VM)",
        ))
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        let (sandbox, container, p) = self.lookup(&req.id, &req.exec_id)?;
        let signal = i32::try_from(req.signal).map_err(|_| invalid("bad signal number"))?;
        if req.exec_id.is_empty() {
            container
                .kill(&sandbox, signal, req.all)
                .await
                .map_err(|e| Service::map_kill_error(e, &p.name()))?;
        } else {
            if p.status() == Status::STOPPED {
                return Err(not_found(format!("{}: process already finished", p.name())));
            }
            let process = p.process()?;
            let agent = sandbox.agent().map_err(|e| internal(e.to_string()))?;
            agent
                .signal(process, signal, false)
                .await
                .map_err(|e| internal(format!("{}: {e}", p.name())))?;
        }
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        let spec: oci_spec::runtime::Process =
            convert::from_any(req.spec.as_ref(), "the exec's process spec")?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        {
            let mut st = self.state();
            let t = st
                .tasks
                .get_mut(&req.id)
                .ok_or_else(|| not_found(format!("task {} does not exist", req.id)))?;
            if t.init.status() != Status::RUNNING {
                return Err(precondition(format!("task {} is not running", req.id)));
            }
            if t.execs.contains_key(&req.exec_id) {
                return Err(convert::status(
                    Code::ALREADY_EXISTS,
                    format!("exec {} of task {} already exists", req.exec_id, req.id),
                ));
            }
            let p = Proc::new(&req.id, &req.exec_id, stdio, t.init.pid, Some(spec), None);
            t.execs.insert(req.exec_id.clone(), Arc::new(p));
        }
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        let (sandbox, _, p) = self.lookup(&req.id, &req.exec_id)?;
        if !p.stdio.terminal {
            return Err(precondition(format!("{} has no terminal", p.name())));
        }
        let process = p.process()?;
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        let agent = sandbox.agent().map_err(|e| internal(e.to_string()))?;
        agent
            .resize_terminal(process, clamp(req.height), clamp(req.width))
            .await
            .map_err(|e| internal(format!("{}: {e}", p.name())))?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        let (_, _, p) = self.lookup(&req.id, &req.exec_id)?;
        if req.stdin {
            p.stdin_close.notify_one();
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        let (sandbox, container, _) = self.lookup(&req.id, "")?;
        let resources: oci_spec::runtime::LinuxResources =
            convert::from_any(req.resources.as_ref(), "the update's resources")?;
        container.update(&sandbox, &resources).await.map_err(ce)?;
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let (_, _, p) = self.lookup(&req.id, &req.exec_id)?;
        let mut rx = p.exited.subscribe();
        let exit = *rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| internal("the process's waiter is gone"))?;
        let exit = exit.unwrap_or(Exit {
            code: EXIT_KILLED,
            at: SystemTime::now(),
        });
        Ok(api::WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(convert::timestamp(exit.at)),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let (sandbox, container, _) = self.lookup(&req.id, "")?;
        let stats = container.stats(&sandbox).await.map_err(ce)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(convert::metrics_any(&stats)?),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self
            .state()
            .tasks
            .get(&req.id)
            .map(|t| t.init.pid)
            .unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<Empty> {
        let _serial = self.inner.create_lock.lock().await;
        if !self.state().tasks.is_empty() {
            return Ok(Empty::new());
        }
        tracing::info!("no tasks left: stopping the pod's VM and exiting");
        self.destroy_pod().await;
        self.inner.exit.signal();
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_sizes() {
        assert_eq!(console_size(None), DEFAULT_TERMINAL);
        let p: oci_spec::runtime::Process = serde_json::from_str(
            r#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},"consoleSize":{"height":40,"width":120}}"#,
        )
        .unwrap();
        assert_eq!(console_size(Some(&p)), (40, 120));
        let p: oci_spec::runtime::Process = serde_json::from_str(
            r#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},"consoleSize":{"height":0,"width":0}}"#,
        )
        .unwrap();
        assert_eq!(console_size(Some(&p)), DEFAULT_TERMINAL);
    }

    #[test]
    fn rootfs_mounts_from_the_request() {
        let m = containerd_shim::protos::api::Mount {
            type_: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "lowerdir=/a".into(),
                "upperdir=/u".into(),
                "workdir=/w".into(),
            ],
            ..Default::default()
        };
        assert_eq!(
            rootfs_mounts(&[m]),
            vec![RootMount {
                fstype: "overlay".into(),
                source: "overlay".into(),
                options: vec![
                    "lowerdir=/a".into(),
                    "upperdir=/u".into(),
                    "workdir=/w".into()
                ],
            }]
        );
    }
}
