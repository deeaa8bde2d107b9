//! OCI containers inside the sandbox VM, created with youki's libcontainer.
//!
//! The host prepares a bundle in the share (`config.json` with guest paths, the rootfs) and
//! names it by its guest path. Creating and exec-ing fork, so they run in a fresh helper
//! process ([`helper`]: the agent re-executed), never on an async worker; the container's
//! processes come out as the agent's own children (libcontainer's `as_sibling`) and are
//! [`Processes::adopt`]ed, so `wait`, stream connections, `resize_terminal` and `close_stdin`
//! work on them as on spawned processes, and the reaper alone collects them. Calls that do
//! not fork (start, delete, the cgroup ones) run on blocking threads.
//!
//! A container's status: `created` until started, then `running`, `paused` while its cgroup is
//! frozen, `stopped` once its init exited. Its cgroup (`linux.cgroupsPath`, under
//! `/sys/fs/cgroup`) gives pids, stats, the OOM count, the freezer and updates.
//!
//! What it must not do: wait for children (the reaper's job); fork on an async worker; trust
//! the host's spec beyond what libcontainer and the checks here enforce (ids, paths).

mod cgroup;
pub mod helper;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hull_agent_protocol::{
    check_container_id, check_path, AgentError, ContainerInfo, ContainerStats, ContainerStatus,
    CreateContainerRequest, ErrorKind, ExecRequest, Redirect, SpawnRequest, StdioSpec,
};
use nix::sys::signal::Signal;
use oci_spec::runtime::{LinuxResources, Spec};

use crate::locked;
use crate::process::{spawn, ParentEnds, Process, Processes};
use cgroup::Cgroup;
use helper::{ExecProblem, HelperRequest, HelperResult, HELPER_ARG};

/// Where libcontainer keeps its per-container state in the guest.
pub const STATE_ROOT: &str = "/run/hull-agent/containers";
/// Scratch directories for helper requests and console sockets.
const WORK_ROOT: &str = "/run/hull-agent/work";

fn err(kind: ErrorKind, msg: impl Into<String>) -> AgentError {
    AgentError::new(kind, msg)
}

fn io(what: impl std::fmt::Display, e: impl std::fmt::Display) -> AgentError {
    err(ErrorKind::Io, format!("{what}: {e}"))
}

/// One container.
struct Container {
    id: String,
    init: Arc<Process>,
    cgroup: Cgroup,
    started: AtomicBool,
}

impl Container {
    fn status(&self) -> ContainerStatus {
        if self.init.state().exit.is_some() {
            ContainerStatus::Stopped
        } else if self.cgroup.frozen() {
            ContainerStatus::Paused
        } else if self.started.load(Ordering::SeqCst) {
            ContainerStatus::Running
        } else {
            ContainerStatus::Created
        }
    }

    fn info(&self) -> ContainerInfo {
        ContainerInfo {
            id: self.id.clone(),
            status: self.status(),
            process: self.init.id,
            pid: self.init.pid,
            exit: self.init.state().exit,
            oom_killed: self.cgroup.oom_kills() > 0,
        }
    }

    fn libcontainer(&self) -> Result<libcontainer::container::Container, AgentError> {
        libcontainer::container::Container::load(Path::new(STATE_ROOT).join(&self.id))
            .map_err(|e| io(format!("load container {}", self.id), e))
    }

    fn wrong_state(&self, wanted: &str) -> AgentError {
        err(
            ErrorKind::WrongState,
            format!(
                "container {} is {}, not {wanted}",
                self.id,
                self.status().as_str()
            ),
        )
    }
}

enum Slot {
    /// Being created or deleted: the id is taken, nothing else may act on it.
    Busy,
    Ready(Arc<Container>),
}

/// The sandbox's containers by id.
#[derive(Default)]
pub struct Containers {
    table: Mutex<BTreeMap<String, Slot>>,
    next_work: AtomicU64,
}

/// Runs a blocking closure off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, AgentError> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| io("container task", e))?
}

/// A private scratch directory, removed on drop.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Containers {
    pub fn new() -> Containers {
        Containers::default()
    }

    fn get(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        check_container_id(id)?;
        match locked(&self.table).get(id) {
            Some(Slot::Ready(c)) => Ok(c.clone()),
            Some(Slot::Busy) => Err(err(
                ErrorKind::WrongState,
                format!("container {id} is being created or deleted"),
            )),
            None => Err(err(
                ErrorKind::UnknownContainer,
                format!("container {id} does not exist"),
            )),
        }
    }

    fn work_dir(&self) -> Result<WorkDir, AgentError> {
        let n = self.next_work.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(WORK_ROOT).join(n.to_string());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| io(format!("create {}", dir.display()), e))?;
        Ok(WorkDir(dir))
    }

    /// `create_container`.
    pub async fn create(
        &self,
        procs: &Arc<Processes>,
        req: CreateContainerRequest,
    ) -> Result<(Arc<Process>, i32), AgentError> {
        check_container_id(&req.id)?;
        check_path("bundle", &req.bundle)?;
        {
            let mut table = locked(&self.table);
            if table.contains_key(&req.id) {
                return Err(err(
                    ErrorKind::ContainerExists,
                    format!("container {} already exists", req.id),
                ));
            }
            table.insert(req.id.clone(), Slot::Busy);
        }
        let id = req.id.clone();
        let r = self.create_inner(procs, req).await;
        match r {
            Ok(c) => {
                let out = (c.init.clone(), c.init.pid);
                locked(&self.table).insert(id, Slot::Ready(c));
                Ok(out)
            }
            Err(e) => {
                // Whatever libcontainer left (state dir, cgroup) goes, then the id is free.
                let idc = id.clone();
                let _ = blocking(move || {
                    discard(&idc);
                    Ok(())
                })
                .await;
                locked(&self.table).remove(&id);
                Err(e)
            }
        }
    }

    async fn create_inner(
        &self,
        procs: &Arc<Processes>,
        req: CreateContainerRequest,
    ) -> Result<Arc<Container>, AgentError> {
        let bundle = PathBuf::from(&req.bundle);
        let (spec, bundle) = {
            let id = req.id.clone();
            blocking(move || local_bundle(&id, &bundle)).await?
        };
        let process = spec.process().as_ref().ok_or_else(|| {
            err(
                ErrorKind::InvalidArgument,
                "the spec has no process: nothing to run",
            )
        })?;
        let terminal = process.terminal().unwrap_or(false);
        let argv = process.args().clone().unwrap_or_default();
        check_stdio(terminal, &req.stdio)?;
        let cgroups_path = spec.linux().as_ref().and_then(|l| l.cgroups_path().clone());
        if let Some(p) = &cgroups_path {
            if p.components().any(|c| c == std::path::Component::ParentDir) {
                return Err(err(
                    ErrorKind::InvalidArgument,
                    format!("linux.cgroupsPath {} has a \"..\" component", p.display()),
                ));
            }
        }
        std::fs::create_dir_all(STATE_ROOT).map_err(|e| io(format!("create {STATE_ROOT}"), e))?;
        let work = self.work_dir()?;
        let console = terminal.then(|| work.0.join("console.sock"));
        let helper_req = HelperRequest::Create {
            id: req.id.clone(),
            bundle: bundle.clone(),
            root: STATE_ROOT.into(),
            console_socket: console.clone(),
        };
        let (pid, parent_ends) = self
            .run_helper(procs, &work, helper_req, req.stdio, console.as_deref())
            .await?;
        let init = procs.adopt(pid, argv, parent_ends)?;
        tracing::info!("created container {} (init pid {pid})", req.id);
        Ok(Arc::new(Container {
            cgroup: Cgroup::new(cgroups_path.as_deref(), &req.id),
            id: req.id,
            init,
            started: AtomicBool::new(false),
        }))
    }

    /// Runs the helper with the container's stdio and returns the new process's pid and the
    /// agent's ends of its stdio.
    async fn run_helper(
        &self,
        procs: &Arc<Processes>,
        work: &WorkDir,
        helper_req: HelperRequest,
        stdio: StdioSpec,
        console: Option<&Path>,
    ) -> Result<(i32, ParentEnds), AgentError> {
        let listener = match console {
            Some(path) => Some(
                std::os::unix::net::UnixListener::bind(path)
                    .map_err(|e| io(format!("console socket {}", path.display()), e))?,
            ),
            None => None,
        };
        // With a terminal, the helper's stdio is /dev/null; libcontainer makes the terminal.
        let own_stdio = match stdio {
            StdioSpec::Terminal { .. } => StdioSpec::Pipes {
                stdin: Redirect::Null,
                stdout: Redirect::Null,
                stderr: Redirect::Null,
            },
            pipes => pipes,
        };
        let (child_ends, parent_ends) = spawn::open_stdio(&own_stdio)?;
        let req_path = work.0.join("request.json");
        let result_path = work.0.join("result.json");
        let bytes = serde_json::to_vec(&helper_req).map_err(|e| io("encode helper request", e))?;
        std::fs::write(&req_path, bytes)
            .map_err(|e| io(format!("write {}", req_path.display()), e))?;
        let exe = std::env::current_exe().map_err(|e| io("find the agent's own binary", e))?;
        let mut spawn_req = SpawnRequest::new([
            exe.to_string_lossy().into_owned(),
            HELPER_ARG.to_string(),
            req_path.to_string_lossy().into_owned(),
            result_path.to_string_lossy().into_owned(),
        ]);
        spawn_req.env = vec![format!("PATH={}", spawn::DEFAULT_PATH)];
        let helper = procs.spawn_with(
            &spawn_req,
            child_ends,
            ParentEnds::Pipes {
                stdin: None,
                stdout: None,
                stderr: None,
            },
        )?;
        let status = procs.wait(helper.id).await?;
        let result: HelperResult = std::fs::read(&result_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                err(
                    ErrorKind::ContainerFailed,
                    format!("the container helper ended ({status:?}) without a result"),
                )
            })?;
        let pid = match result {
            HelperResult::Ok { pid } => pid,
            HelperResult::Err { message, exec } => {
                let kind = match exec {
                    Some(ExecProblem::NotFound) => ErrorKind::ExecutableNotFound,
                    Some(ExecProblem::NotExecutable) => ErrorKind::NotExecutable,
                    None => ErrorKind::ContainerFailed,
                };
                return Err(err(kind, message));
            }
        };
        let ends = match (listener, stdio) {
            (Some(l), StdioSpec::Terminal { rows, cols }) => {
                let master = blocking(move || receive_master(&l)).await?;
                spawn::set_winsize(&master, rows, cols)?;
                set_nonblocking(&master)?;
                ParentEnds::Terminal { master }
            }
            _ => parent_ends,
        };
        Ok((pid, ends))
    }

    /// `start_container`.
    pub async fn start(&self, id: &str) -> Result<(), AgentError> {
        let c = self.get(id)?;
        if c.status() != ContainerStatus::Created {
            return Err(c.wrong_state("created"));
        }
        let c2 = c.clone();
        blocking(move || {
            c2.libcontainer()?
                .start()
                .map_err(|e| err(ErrorKind::ContainerFailed, format!("start {}: {e}", c2.id)))
        })
        .await?;
        c.started.store(true, Ordering::SeqCst);
        tracing::info!("started container {id}");
        Ok(())
    }

    /// `exec`.
    pub async fn exec(
        &self,
        procs: &Arc<Processes>,
        req: ExecRequest,
    ) -> Result<(Arc<Process>, i32), AgentError> {
        let c = self.get(&req.id)?;
        if c.status() != ContainerStatus::Running {
            return Err(c.wrong_state("running"));
        }
        let process: oci_spec::runtime::Process = serde_json::from_value(req.process.clone())
            .map_err(|e| err(ErrorKind::InvalidArgument, format!("invalid process: {e}")))?;
        let terminal = process.terminal().unwrap_or(false);
        check_stdio(terminal, &req.stdio)?;
        let argv = process.args().clone().unwrap_or_default();
        let work = self.work_dir()?;
        let process_path = work.0.join("process.json");
        let bytes = serde_json::to_vec(&req.process).map_err(|e| io("encode process", e))?;
        std::fs::write(&process_path, bytes)
            .map_err(|e| io(format!("write {}", process_path.display()), e))?;
        let console = terminal.then(|| work.0.join("console.sock"));
        let helper_req = HelperRequest::Exec {
            id: req.id.clone(),
            root: STATE_ROOT.into(),
            process: process_path,
            console_socket: console.clone(),
        };
        let (pid, ends) = self
            .run_helper(procs, &work, helper_req, req.stdio, console.as_deref())
            .await?;
        let proc = procs.adopt(pid, argv, ends)?;
        Ok((proc, pid))
    }

    /// `kill_container`.
    pub fn kill(
        &self,
        procs: &Processes,
        id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), AgentError> {
        let c = self.get(id)?;
        let sig = Signal::try_from(signal).map_err(|_| {
            err(
                ErrorKind::InvalidArgument,
                format!("{signal} is not a valid signal number"),
            )
        })?;
        if all {
            return c.cgroup.signal_all(sig);
        }
        procs
            .signal_process(&c.init, sig)
            .map_err(|e| match e.kind {
                ErrorKind::ProcessExited => err(
                    ErrorKind::WrongState,
                    format!("container {id} is not running"),
                ),
                _ => e,
            })
    }

    pub fn state(&self, id: &str) -> Result<ContainerInfo, AgentError> {
        Ok(self.get(id)?.info())
    }

    pub async fn pids(&self, id: &str) -> Result<Vec<i32>, AgentError> {
        let c = self.get(id)?;
        blocking(move || c.cgroup.pids()).await
    }

    pub async fn pause(&self, id: &str, frozen: bool) -> Result<(), AgentError> {
        let c = self.get(id)?;
        match (frozen, c.status()) {
            (true, ContainerStatus::Running) | (false, ContainerStatus::Paused) => {}
            (true, _) => return Err(c.wrong_state("running")),
            (false, _) => return Err(c.wrong_state("paused")),
        }
        blocking(move || c.cgroup.freeze(frozen)).await
    }

    pub async fn update(&self, id: &str, resources: serde_json::Value) -> Result<(), AgentError> {
        let c = self.get(id)?;
        let resources: LinuxResources = serde_json::from_value(resources).map_err(|e| {
            err(
                ErrorKind::InvalidArgument,
                format!("invalid linux.resources: {e}"),
            )
        })?;
        if c.status() == ContainerStatus::Stopped {
            return Err(c.wrong_state("created, running or paused"));
        }
        blocking(move || c.cgroup.update(&resources)).await
    }

    pub async fn stats(&self, id: &str) -> Result<ContainerStats, AgentError> {
        let c = self.get(id)?;
        blocking(move || c.cgroup.stats()).await
    }

    /// `delete_container`.
    pub async fn delete(
        &self,
        procs: &Arc<Processes>,
        id: &str,
        force: bool,
    ) -> Result<(), AgentError> {
        let c = self.get(id)?;
        let status = c.status();
        if status != ContainerStatus::Stopped && status != ContainerStatus::Created && !force {
            return Err(err(
                ErrorKind::WrongState,
                format!(
                    "cannot delete container {id} that is not stopped: {}",
                    status.as_str()
                ),
            ));
        }
        {
            let mut table = locked(&self.table);
            table.insert(id.to_string(), Slot::Busy);
        }
        // Everything in it dies first (a created container's init too, as runc does).
        if status == ContainerStatus::Paused {
            let _ = c.cgroup.freeze(false);
        }
        let _ = c.cgroup.signal_all(Signal::SIGKILL);
        let _ = procs.signal_process(&c.init, Signal::SIGKILL);
        let init = c.init.clone();
        let procs2 = procs.clone();
        // The reaper collects init; give it a moment so the cgroup can be removed.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async move {
            while init.state().exit.is_none() {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        let idc = id.to_string();
        let r = blocking(move || {
            discard(&idc);
            forget_unused_entries();
            Ok(())
        })
        .await;
        let _ = procs2.release(c.init.id);
        locked(&self.table).remove(id);
        tracing::info!("deleted container {id}");
        r
    }
}

/// Where the agent keeps its own copy of each container's spec.
const BUNDLE_ROOT: &str = "/run/hull-agent/bundles";

/// Reads the host's bundle and writes the agent's own bundle for libcontainer
/// (`BUNDLE_ROOT/<id>/config.json`, its root an absolute path into the host's bundle), with
/// the `net.*` sysctls taken out and applied to the guest itself: the container has no network
/// namespace of its own (the network is the VM's, which belongs to this pod alone), and
/// libcontainer refuses net.* sysctls without one. docker sets
/// `net.ipv4.ip_unprivileged_port_start` on every container.
fn local_bundle(id: &str, host_bundle: &Path) -> Result<(Spec, PathBuf), AgentError> {
    let path = host_bundle.join("config.json");
    let mut spec = Spec::load(&path).map_err(|e| {
        err(
            ErrorKind::InvalidArgument,
            format!("{}: {e}", path.display()),
        )
    })?;
    if let Some(root) = spec.root().clone() {
        let mut root = root;
        if root.path().is_relative() {
            root.set_path(host_bundle.join(root.path()));
        }
        spec.set_root(Some(root));
    }
    if let Some(mut linux) = spec.linux().clone() {
        if let Some(sysctl) = linux.sysctl().clone() {
            let (net, rest): (Vec<_>, Vec<_>) =
                sysctl.into_iter().partition(|(k, _)| k.starts_with("net."));
            for (key, value) in net {
                apply_sysctl(&key, &value)?;
            }
            linux.set_sysctl(Some(rest.into_iter().collect()));
        }
        spec.set_linux(Some(linux));
    }
    let dir = Path::new(BUNDLE_ROOT).join(id);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| io(format!("create {}", dir.display()), e))?;
    spec.save(dir.join("config.json"))
        .map_err(|e| io(format!("write {}/config.json", dir.display()), e))?;
    Ok((spec, dir))
}

/// Writes one sysctl of the guest (`net.ipv4.ping_group_range` → /proc/sys/net/ipv4/...).
fn apply_sysctl(key: &str, value: &str) -> Result<(), AgentError> {
    let ok = !key.is_empty()
        && key.split('.').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    if !ok {
        return Err(err(
            ErrorKind::InvalidArgument,
            format!("linux.sysctl: invalid key {key:?}"),
        ));
    }
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| {
        err(
            ErrorKind::InvalidArgument,
            format!("linux.sysctl: cannot set {key} = {value:?}: {e}"),
        )
    })
}

/// Drops the guest's unused cached names and inodes (`vm.drop_caches = 2`). The root file
/// systems' share is cached (entries for a second, then kept until memory runs short), and
/// every inode the guest keeps is an open handle in the VMM: once a container is gone, this
/// makes the guest forget its root file system's, so the host's mount of it is not held after
/// the host removed it. Page cache is kept. Best effort: a failure is logged.
fn forget_unused_entries() {
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", b"2") {
        tracing::warn!("dropping the guest's cached names after a delete: {e}");
    }
}

/// Removes libcontainer's state and the cgroup of container `id`, whatever state it is in.
fn discard(id: &str) {
    let _ = std::fs::remove_dir_all(Path::new(BUNDLE_ROOT).join(id));
    let dir = Path::new(STATE_ROOT).join(id);
    if dir.exists() {
        match libcontainer::container::Container::load(dir.clone()) {
            Ok(mut c) => {
                if let Err(e) = c.delete(true) {
                    tracing::warn!("delete container {id}: {e}");
                }
            }
            Err(e) => tracing::warn!("load container {id} to delete it: {e}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The request's stdio must match the spec's `terminal`.
fn check_stdio(terminal: bool, stdio: &StdioSpec) -> Result<(), AgentError> {
    match (terminal, stdio) {
        (true, StdioSpec::Terminal { .. }) | (false, StdioSpec::Pipes { .. }) => Ok(()),
        (true, _) => Err(err(
            ErrorKind::InvalidArgument,
            "process.terminal is true: ask for a terminal (stdio mode \"terminal\")",
        )),
        (false, _) => Err(err(
            ErrorKind::InvalidArgument,
            "process.terminal is false: a terminal cannot be given (stdio mode \"pipes\")",
        )),
    }
}

fn set_nonblocking(fd: &OwnedFd) -> Result<(), AgentError> {
    // SAFETY: fcntl on a descriptor we own, reading then setting its status flags.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    let set = || {
        // SAFETY: as above, setting the flags just read plus O_NONBLOCK.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) }
    };
    if flags < 0 || set() < 0 {
        return Err(io(
            "set the terminal non-blocking",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

/// Accepts libcontainer's connection on the console socket and takes the terminal master it
/// sends (one SCM_RIGHTS descriptor). The helper has exited by now, so the connection is
/// queued; wait at most a few seconds all the same.
fn receive_master(listener: &std::os::unix::net::UnixListener) -> Result<OwnedFd, AgentError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    listener
        .set_nonblocking(false)
        .map_err(|e| io("console socket", e))?;
    let (stream, _) = {
        let fd = listener.as_raw_fd();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes one pollfd we own.
        let n = unsafe { libc::poll(&mut pfd, 1, 5000) };
        if n <= 0 {
            return Err(err(
                ErrorKind::ContainerFailed,
                "libcontainer did not send the container's terminal",
            ));
        }
        listener
            .accept()
            .map_err(|e| io("accept on the console socket", e))?
    };
    let mut buf = [0u8; 4096];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(|e| io("receive the terminal", e))?;
    let mut fds = Vec::new();
    for c in msg.cmsgs().map_err(|e| io("receive the terminal", e))? {
        if let ControlMessageOwned::ScmRights(v) = c {
            fds.extend(v);
        }
    }
    let mut owned: Vec<OwnedFd> = fds
        .into_iter()
        // SAFETY: SCM_RIGHTS installed these descriptors in our table; each is ours alone.
        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
        .collect();
    if owned.len() != 1 {
        return Err(err(
            ErrorKind::ContainerFailed,
            format!(
                "expected one terminal descriptor on the console socket, got {}",
                owned.len()
            ),
        ));
    }
    Ok(owned.remove(0))
}
