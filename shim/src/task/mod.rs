//! The shim's task model: containerd's task operations in plain Rust, over a pod backend
//! ([`Backend`], [`Vm`]) and an event sink ([`Publisher`]), so that the whole model is tested
//! with fakes (`tests.rs`), without ttrpc and without a VM. `crate::service` is the ttrpc
//! adapter over it.
//!
//! One shim serves one pod: the first task created (a CRI sandbox container, or a plain
//! `ctr run` container) boots the pod's VM; a CRI container joins the VM of its sandbox
//! container ([`crate::pod::Role`]).
//!
//! Each process (a container's init, an exec) has a waiter that waits for it through the
//! agent, records its exit status and time, publishes TaskExit (never before its TaskStart)
//! and wakes Wait callers. When the VM dies every process of the pod exits 137 at once
//! ([`Exit::gone`]), so no Wait ever hangs on a dead VM.

mod backend;
mod error;
mod events;
mod proc;
pub mod runtime;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim::asynchronous::ExitSignal;
use hull_agent_protocol::ContainerStats;
use hull_runtime::process::{terminal_size, ContainerProcess, Exit, Want};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use backend::{Backend, Vm, VmGone};
pub use error::{ErrorKind, Result, TaskError};
pub use events::{Event, Publisher};
pub use proc::{ProcessState, Status};

use crate::pod::{self, Role};
use crate::rootfs::{self, RootMount};
use crate::stdio::{self, Input, StdioPaths};
use proc::Proc;

/// How long an exit waits for its output to drain to containerd before it is published anyway
/// (the copies go on).
const DRAIN_LIMIT: Duration = Duration::from_secs(30);
/// How long Delete waits for a created (never started) init to be reaped.
const DELETE_WAIT: Duration = Duration::from_secs(10);

/// A task to create (containerd's CreateTaskRequest).
#[derive(Clone, Debug, Default)]
pub struct CreateTask {
    pub id: String,
    pub bundle: PathBuf,
    pub stdio: StdioPaths,
    /// containerd's rootfs mounts, mounted on `<bundle>/rootfs` (none: the bundle has one).
    pub rootfs: Vec<RootMount>,
    /// It is to be restored from a checkpoint (not supported).
    pub checkpoint: bool,
}

/// A process to add to a running task (containerd's ExecProcessRequest).
#[derive(Clone, Debug)]
pub struct ExecProcess {
    pub id: String,
    pub exec_id: String,
    pub stdio: StdioPaths,
    pub spec: oci_spec::runtime::Process,
}

/// What Delete answers: the pid containerd knows the process by and how it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Deleted {
    pub pid: u32,
    pub exit: Exit,
}

/// Whether Shutdown stopped the shim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Tasks are left: nothing was done.
    TasksLeft,
    /// No task was left: the pod's VM is gone and the shim is told to exit.
    Exiting,
}

/// A task: a container of the pod, its init and its execs.
struct Task<C> {
    container: C,
    bundle: PathBuf,
    /// `<bundle>/rootfs` when the shim mounted containerd's rootfs mounts on it.
    mounted_rootfs: Option<PathBuf>,
    init: Arc<Proc>,
    execs: HashMap<String, Arc<Proc>>,
}

/// The pod's VM.
struct Pod<V> {
    vm: Arc<V>,
    /// The container that booted it (a CRI sandbox container, or the plain container).
    owner: String,
}

struct State<V: Vm> {
    pod: Option<Pod<V>>,
    tasks: HashMap<String, Task<V::Container>>,
}

struct Inner<B: Backend, P> {
    backend: B,
    publisher: P,
    exit: Arc<ExitSignal>,
    state: Mutex<State<B::Vm>>,
    /// Serialises Create (the first one boots the VM) and Shutdown.
    create_lock: tokio::sync::Mutex<()>,
    /// Waiters and stdin copies, which hold the VM: aborted before it is destroyed.
    background: Mutex<Vec<JoinHandle<()>>>,
}

/// The tasks of one pod.
pub struct Tasks<B: Backend, P: Publisher> {
    inner: Arc<Inner<B, P>>,
}

impl<B: Backend, P: Publisher> Clone for Tasks<B, P> {
    fn clone(&self) -> Self {
        Tasks {
            inner: self.inner.clone(),
        }
    }
}

type Found<B> = (
    Arc<<B as Backend>::Vm>,
    <<B as Backend>::Vm as Vm>::Container,
    Arc<Proc>,
);

/// Waits until the VM is known to be gone; returns why.
async fn vm_gone(mut rx: watch::Receiver<Option<String>>) -> String {
    loop {
        if let Some(r) = rx.borrow_and_update().clone() {
            return r;
        }
        if rx.changed().await.is_err() {
            // Nobody can tell any more: the VM is taken as alive.
            return std::future::pending().await;
        }
    }
}

fn not_found_task(id: &str) -> TaskError {
    TaskError::NotFound(format!("task {id} does not exist"))
}

impl<B: Backend, P: Publisher> Tasks<B, P> {
    /// `exit` is signalled when Shutdown finds no task left.
    pub fn new(backend: B, publisher: P, exit: Arc<ExitSignal>) -> Tasks<B, P> {
        Tasks {
            inner: Arc::new(Inner {
                backend,
                publisher,
                exit,
                state: Mutex::new(State {
                    pod: None,
                    tasks: HashMap::new(),
                }),
                create_lock: tokio::sync::Mutex::new(()),
                background: Mutex::new(Vec::new()),
            }),
        }
    }

    fn locked(&self) -> MutexGuard<'_, State<B::Vm>> {
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

    async fn publish(&self, event: Event) {
        self.inner.publisher.publish(event.topic(), event).await;
    }

    /// The VM, a task's container and its process `exec_id` ("" is the init).
    fn lookup(&self, id: &str, exec_id: &str) -> Result<Found<B>> {
        let st = self.locked();
        let t = st.tasks.get(id).ok_or_else(|| not_found_task(id))?;
        let p = if exec_id.is_empty() {
            t.init.clone()
        } else {
            t.execs.get(exec_id).cloned().ok_or_else(|| {
                TaskError::NotFound(format!("exec {exec_id} of task {id} does not exist"))
            })?
        };
        let pod = st
            .pod
            .as_ref()
            .ok_or_else(|| TaskError::Internal("the pod's VM is gone".into()))?;
        Ok((pod.vm.clone(), t.container.clone(), p))
    }

    /// The pid containerd knows task `id` by, if it exists.
    pub fn task_pid(&self, id: &str) -> Option<u32> {
        self.locked().tasks.get(id).map(|t| t.init.pid)
    }

    /// Creates task `id`: boots the pod's VM for the pod's first task (or joins the VM of a
    /// CRI container's sandbox container), creates the container and starts its init's
    /// waiter. Returns the pid containerd knows it by. On failure nothing is left: no
    /// container, no rootfs mount, and no VM when this call booted it.
    pub async fn create(&self, req: CreateTask) -> Result<u32> {
        let _serial = self.inner.create_lock.lock().await;
        let id = req.id.clone();
        tracing::info!("create {id} (bundle {})", req.bundle.display());
        self.create_task(req).await.inspect_err(|e| {
            tracing::warn!("create {id}: {e}");
        })
    }

    async fn create_task(&self, req: CreateTask) -> Result<u32> {
        let id = req.id.as_str();
        if req.checkpoint {
            return Err(TaskError::Unimplemented(
                "restoring from a checkpoint is not supported by hull".into(),
            ));
        }
        if self.locked().tasks.contains_key(id) {
            return Err(TaskError::AlreadyExists(format!(
                "task {id} already exists"
            )));
        }
        let bundle = self.inner.backend.load_bundle(&req.bundle)?;
        let spec = &bundle.spec;
        let annotations = spec.annotations().clone().unwrap_or_default();
        let role =
            pod::role(&annotations).map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
        pod::check_host_namespaces(&annotations, spec)
            .map_err(|e| TaskError::InvalidArgument(e.to_string()))?;
        if pod::host_network(&annotations, spec) {
            tracing::warn!(
                "pod {id} asks for the node's network (hostNetwork): a hull pod has its VM's own \
                 network stack, with loopback only"
            );
        }
        let size = terminal_size(None, spec.process().as_ref());

        let mounted = if req.rootfs.is_empty() {
            None
        } else {
            let (m, t) = (req.rootfs.clone(), req.bundle.join("rootfs"));
            tokio::task::spawn_blocking(move || rootfs::mount_all(&m, &t).map(|()| t))
                .await
                .map_err(|e| TaskError::Internal(e.to_string()))?
                .map(Some)
                .map_err(|e| TaskError::Internal(e.to_string()))?
        };
        let unmount = |mounted: &Option<PathBuf>| {
            if let Some(t) = mounted {
                if let Err(u) = rootfs::unmount_all(t) {
                    tracing::warn!("task {id}: undoing the rootfs mount: {u}");
                }
            }
        };

        let (vm, join, booted) = match self.pod_for(id, &role, spec).await {
            Ok(v) => v,
            Err(e) => {
                unmount(&mounted);
                return Err(e);
            }
        };
        let created = vm
            .create(id, &bundle, req.stdio.spec(size), join.as_deref())
            .await;
        let (container, init_process) = match created {
            Ok(c) => c,
            Err(e) => {
                drop(vm);
                if booted {
                    self.destroy_pod().await;
                }
                unmount(&mounted);
                return Err(e);
            }
        };
        let pid = vm.pid();
        let process = ContainerProcess::init(id, init_process, req.stdio.terminal);
        let init = Arc::new(Proc::new(
            id,
            "",
            req.stdio.clone(),
            pid,
            None,
            Some(process.clone()),
        ));
        let r = self
            .attach_and_wait(&vm, &init, process, Some(container.clone()))
            .await;
        if let Err(e) = r {
            if let Err(d) = vm.delete(container).await {
                tracing::warn!("task {id}: undoing the create: {d}");
            }
            drop(vm);
            if booted {
                self.destroy_pod().await;
            }
            unmount(&mounted);
            return Err(e);
        }
        self.locked().tasks.insert(
            id.to_string(),
            Task {
                container,
                bundle: req.bundle.clone(),
                mounted_rootfs: mounted,
                init,
                execs: HashMap::new(),
            },
        );
        self.publish(Event::Create {
            id: id.to_string(),
            bundle: req.bundle,
            rootfs: req.rootfs,
            stdio: req.stdio,
            pid,
        })
        .await;
        Ok(pid)
    }

    /// The VM for a new task: booted for the pod's first task, or the one a CRI container
    /// joins. Returns it, the container whose namespaces to join, and whether it was booted
    /// here.
    async fn pod_for(
        &self,
        id: &str,
        role: &Role,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<(Arc<B::Vm>, Option<String>, bool)> {
        {
            let st = self.locked();
            match (role, &st.pod) {
                (Role::Container { sandbox }, Some(p)) if &p.owner == sandbox => {
                    return Ok((p.vm.clone(), Some(sandbox.clone()), false))
                }
                (Role::Container { sandbox }, _) => {
                    return Err(TaskError::NotFound(format!(
                        "the pod's sandbox container {sandbox} is not served by this shim"
                    )))
                }
                (Role::Sandbox, Some(p)) => {
                    return Err(TaskError::AlreadyExists(format!(
                        "this shim already serves the pod of {}",
                        p.owner
                    )))
                }
                (Role::Sandbox, None) => {}
            }
        }
        let vm = Arc::new(self.inner.backend.boot(id, spec).await?);
        self.locked().pod = Some(Pod {
            vm: vm.clone(),
            owner: id.to_string(),
        });
        Ok((vm, None, true))
    }

    /// Stops the pod's VM: the background tasks that hold it are aborted first.
    async fn destroy_pod(&self) {
        let Some(pod) = self.locked().pod.take() else {
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
        self.inner.backend.destroy(pod.vm).await;
    }

    /// Attaches the process's streams to containerd's stdio and starts its waiter (and the
    /// copy of its stdin, whose end is the process's input's end).
    async fn attach_and_wait(
        &self,
        vm: &Arc<B::Vm>,
        proc: &Arc<Proc>,
        process: ContainerProcess,
        container: Option<<B::Vm as Vm>::Container>,
    ) -> Result<()> {
        let name = proc.name();
        let io =
            |what: &str, e: std::io::Error| TaskError::Internal(format!("{name}: {what}: {e}"));
        let paths = &proc.stdio;
        let stdout = match paths.stdout.as_str() {
            "" => None,
            p => Some(stdio::open_output(p).await.map_err(|e| io("stdout", e))?),
        };
        let stderr = if paths.has_stderr() {
            let out = stdio::open_output(&paths.stderr).await;
            Some(out.map_err(|e| io("stderr", e))?)
        } else {
            None
        };
        let stdin = match paths.stdin.as_str() {
            "" => None,
            p => Some(Input::open(p).map_err(|e| io("stdin", e))?),
        };
        let want = Want {
            stdin: stdin.is_some(),
            stdout: stdout.is_some(),
            stderr: stderr.is_some(),
        };
        let streams = vm
            .attach(&process, want)
            .await
            .map_err(|e| e.context(&name))?;
        let mut outputs = Vec::new();
        for (sink, stream, what) in [
            (stdout, streams.stdout, "stdout"),
            (stderr, streams.stderr, "stderr"),
        ] {
            if let (Some(sink), Some(stream)) = (sink, stream) {
                let name = name.clone();
                outputs.push(tokio::spawn(async move {
                    if let Err(e) = stdio::copy_out(stream, sink).await {
                        tracing::warn!("{name}: copying {what}: {e}");
                    }
                }));
            }
        }
        if let (Some(input), Some(stream)) = (stdin, streams.stdin) {
            let close = proc.stdin_close.clone();
            let (vm, process, name) = (vm.clone(), process.clone(), name.clone());
            self.keep(tokio::spawn(async move {
                let sent = match stdio::copy_in(input, stream, close).await {
                    Ok(n) => Some(n),
                    Err(e) => {
                        tracing::warn!("{name}: copying stdin: {e}");
                        None
                    }
                };
                if let Err(e) = vm.input_ended(&process, sent).await {
                    tracing::debug!("{name}: ending its input: {e}");
                }
            }));
        }
        let me = self.clone();
        let (vm, proc) = (vm.clone(), proc.clone());
        self.keep(tokio::spawn(async move {
            me.wait_process(vm, proc, process, outputs, container).await
        }));
        Ok(())
    }

    /// The waiter of a process: its exit recorded, published after its start, Wait woken.
    async fn wait_process(
        &self,
        vm: Arc<B::Vm>,
        proc: Arc<Proc>,
        process: ContainerProcess,
        outputs: Vec<JoinHandle<()>>,
        container: Option<<B::Vm as Vm>::Container>,
    ) {
        let name = proc.name();
        let exit = vm.wait(&process, Box::pin(vm_gone(vm.gone()))).await;
        let drain = async {
            for h in outputs {
                let _ = h.await;
            }
        };
        if tokio::time::timeout(DRAIN_LIMIT, drain).await.is_err() {
            tracing::warn!("{name}: its output is still being copied; publishing its exit");
        }
        if let Some(c) = container {
            if !exit.vm_gone && vm.oom_killed(&c).await {
                self.publish(Event::Oom {
                    id: proc.container_id.clone(),
                })
                .await;
            }
        }
        proc.set_exited(exit);
        let _started = proc.start_lock.lock().await;
        tracing::info!("{name}: exited with {}", exit.code);
        self.publish(Event::Exit {
            id: proc.container_id.clone(),
            exec_id: proc.exec_id.clone(),
            pid: proc.pid,
            exit,
        })
        .await;
        proc.exited.send_replace(Some(exit));
    }

    /// Starts a created process (the init, or an exec); returns its pid.
    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32> {
        let (vm, container, p) = self.lookup(id, exec_id)?;
        let _g = p.start_lock.lock().await;
        if p.status() != Status::Created {
            return Err(TaskError::FailedPrecondition(format!(
                "{} is not created",
                p.name()
            )));
        }
        if p.is_init() {
            vm.start(&container).await?;
            p.set_status(Status::Running);
            self.publish(Event::Start {
                id: id.to_string(),
                pid: p.pid,
            })
            .await;
        } else {
            let spec = p
                .spec
                .clone()
                .ok_or_else(|| TaskError::Internal(format!("{}: no process spec", p.name())))?;
            let stdio = p.stdio.spec(terminal_size(None, Some(&spec)));
            let handle = vm.exec(&container, &spec, stdio).await?;
            let process = ContainerProcess::exec(id, handle, p.stdio.terminal);
            p.lock().process = Some(process.clone());
            p.set_status(Status::Running);
            self.attach_and_wait(&vm, &p, process, None).await?;
            self.publish(Event::ExecStarted {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
                pid: p.pid,
            })
            .await;
        }
        Ok(p.pid)
    }

    /// Adds an exec to a running task (started by [`Tasks::start`]).
    pub async fn exec(&self, req: ExecProcess) -> Result<()> {
        {
            let mut st = self.locked();
            let t = st
                .tasks
                .get_mut(&req.id)
                .ok_or_else(|| not_found_task(&req.id))?;
            if t.init.status() != Status::Running {
                return Err(TaskError::FailedPrecondition(format!(
                    "task {} is not running",
                    req.id
                )));
            }
            if t.execs.contains_key(&req.exec_id) {
                return Err(TaskError::AlreadyExists(format!(
                    "exec {} of task {} already exists",
                    req.exec_id, req.id
                )));
            }
            let p = Proc::new(
                &req.id,
                &req.exec_id,
                req.stdio,
                t.init.pid,
                Some(req.spec),
                None,
            );
            t.execs.insert(req.exec_id.clone(), Arc::new(p));
        }
        self.publish(Event::ExecAdded {
            id: req.id,
            exec_id: req.exec_id,
        })
        .await;
        Ok(())
    }

    /// Signals a process (with `all`, every process of the task's container). A process that
    /// has finished is `NotFound`, as containerd expects.
    pub async fn kill(&self, id: &str, exec_id: &str, signal: i32, all: bool) -> Result<()> {
        let (vm, _, p) = self.lookup(id, exec_id)?;
        if p.status() == Status::Stopped {
            return Err(TaskError::NotFound(format!(
                "{}: process already finished",
                p.name()
            )));
        }
        let process = p.process()?;
        vm.signal(&process, signal, all)
            .await
            .map_err(|e| e.context(p.name()))
    }

    /// Deletes a process that is not running: an exec is forgotten; the init takes its
    /// container (killed first if it was only created) and the task with it.
    pub async fn delete(&self, id: &str, exec_id: &str) -> Result<Deleted> {
        let (vm, container, p) = self.lookup(id, exec_id)?;
        if matches!(p.status(), Status::Running | Status::Paused) {
            return Err(TaskError::FailedPrecondition(format!(
                "{} is still running: kill it first",
                p.name()
            )));
        }
        if !p.is_init() {
            if let Some(t) = self.locked().tasks.get_mut(id) {
                t.execs.remove(exec_id);
            }
            let exit = p.lock().exit.unwrap_or_else(Exit::gone);
            return Ok(Deleted { pid: p.pid, exit });
        }
        vm.delete(container).await?;
        drop(vm);
        // A created init was killed by the delete: its waiter records that.
        let mut rx = p.exited.subscribe();
        let exit = tokio::time::timeout(DELETE_WAIT, rx.wait_for(Option::is_some))
            .await
            .ok()
            .and_then(|r| r.ok().and_then(|e| *e))
            .unwrap_or_else(Exit::gone);
        let entry = self.locked().tasks.remove(id);
        if let Some(t) = entry.as_ref().and_then(|t| t.mounted_rootfs.clone()) {
            tokio::task::spawn_blocking(move || rootfs::unmount_all(&t))
                .await
                .map_err(|e| TaskError::Internal(e.to_string()))?
                .map_err(|e| TaskError::Internal(e.to_string()))?;
        }
        if let Some(t) = &entry {
            tracing::info!("task {id}: deleted (bundle {})", t.bundle.display());
        }
        self.publish(Event::Delete {
            id: id.to_string(),
            pid: p.pid,
            exit,
        })
        .await;
        Ok(Deleted { pid: p.pid, exit })
    }

    /// Waits for a process to end.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exit> {
        let (_, _, p) = self.lookup(id, exec_id)?;
        let mut rx = p.exited.subscribe();
        let exit = *rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| TaskError::Internal("the process's waiter is gone".into()))?;
        Ok(exit.unwrap_or_else(Exit::gone))
    }

    /// A process's state.
    pub fn state(&self, id: &str, exec_id: &str) -> Result<ProcessState> {
        let st = self.locked();
        let t = st.tasks.get(id).ok_or_else(|| not_found_task(id))?;
        let p = if exec_id.is_empty() {
            &t.init
        } else {
            t.execs.get(exec_id).ok_or_else(|| {
                TaskError::NotFound(format!("exec {exec_id} of task {id} does not exist"))
            })?
        };
        let m = p.lock();
        Ok(ProcessState {
            bundle: t.bundle.clone(),
            pid: p.pid,
            status: m.status,
            stdio: p.stdio.clone(),
            exit: m.exit,
        })
    }

    pub async fn pause(&self, id: &str) -> Result<()> {
        let (vm, container, p) = self.lookup(id, "")?;
        vm.pause(&container).await?;
        p.set_status(Status::Paused);
        self.publish(Event::Paused { id: id.to_string() }).await;
        Ok(())
    }

    pub async fn resume(&self, id: &str) -> Result<()> {
        let (vm, container, p) = self.lookup(id, "")?;
        vm.resume(&container).await?;
        p.set_status(Status::Running);
        self.publish(Event::Resumed { id: id.to_string() }).await;
        Ok(())
    }

    /// Guest pids of the task's processes.
    pub async fn pids(&self, id: &str) -> Result<Vec<u32>> {
        let (vm, container, _) = self.lookup(id, "")?;
        let pids = vm.pids(&container).await?;
        Ok(pids.into_iter().map(|p| p as u32).collect())
    }

    pub async fn stats(&self, id: &str) -> Result<ContainerStats> {
        let (vm, container, _) = self.lookup(id, "")?;
        vm.stats(&container).await
    }

    pub async fn update(
        &self,
        id: &str,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<()> {
        let (vm, container, _) = self.lookup(id, "")?;
        vm.update(&container, resources).await
    }

    /// CloseIO: with `stdin`, the process's input ends (once what was copied is read).
    pub fn close_io(&self, id: &str, exec_id: &str, stdin: bool) -> Result<()> {
        let (_, _, p) = self.lookup(id, exec_id)?;
        if stdin {
            p.stdin_close.notify_one();
        }
        Ok(())
    }

    /// Sets the size of a process's terminal.
    pub async fn resize(&self, id: &str, exec_id: &str, rows: u16, cols: u16) -> Result<()> {
        let (vm, _, p) = self.lookup(id, exec_id)?;
        if !p.stdio.terminal {
            return Err(TaskError::FailedPrecondition(format!(
                "{} has no terminal",
                p.name()
            )));
        }
        let process = p.process()?;
        vm.resize(&process, rows, cols)
            .await
            .map_err(|e| e.context(p.name()))
    }

    /// containerd's Shutdown: with no task left, the pod's VM is destroyed and the shim told
    /// to exit; with tasks left nothing happens.
    pub async fn shutdown(&self) -> Shutdown {
        let _serial = self.inner.create_lock.lock().await;
        if !self.locked().tasks.is_empty() {
            return Shutdown::TasksLeft;
        }
        tracing::info!("no tasks left: stopping the pod's VM and exiting");
        self.destroy_pod().await;
        self.inner.exit.signal();
        Shutdown::Exiting
    }
}
