use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hull_agent_protocol::frame::{read_frame_async, write_frame_async, write_raw_frame_async};
use hull_agent_protocol::{
    check_container_id, decode_hello_reply, decode_response, encode_frame, ConnectionKind,
    ContainerInfo, ContainerStats, CreateContainerRequest, ExecRequest, ExitStatus, GuestStats,
    HealthInfo, Hello, HelloReply, MountRequest, ProcessId, ProcessInfo, Redirect, Request,
    RequestFrame, Response, SpawnRequest, StdStream, StdioSpec, VersionInfo, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use super::endpoint::Endpoint;
use super::error::Error;

/// Default limit for one call (not `wait`).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default limit for `create_container`, `exec` and `delete_container` (libcontainer sets up a
/// whole container, or enters one: mounts, cgroup, namespaces; slow in a nested guest, and
/// slower still with several vCPUs under shadow paging).
pub const DEFAULT_CONTAINER_CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Default limit for connecting + handshake + hello (one try).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes [`AgentClient::run`] collects from one stream.
pub const MAX_RUN_OUTPUT: u64 = 256 << 20;
const BACKOFF_START: Duration = Duration::from_millis(10);
const BACKOFF_MAX: Duration = Duration::from_millis(250);
/// For this long after the first try, [`AgentClient::connect_retry`] tries every
/// [`BACKOFF_START`] (a VM restored from a template answers within a few hundred ms, and a
/// doubling backoff would overshoot that by up to as much again); only then does it back off.
const FAST_RETRY: Duration = Duration::from_secs(1);

/// What a call receives: the agent's reply, or why there is none (the agent's error, a reply
/// this client cannot decode, a broken connection).
type Reply = Result<Response, Error>;

/// The calls waiting for a reply. Once the reader is gone (`closed`), no call may be added: its
/// reply could never arrive.
#[derive(Default)]
struct Calls {
    waiting: HashMap<u64, oneshot::Sender<Reply>>,
    closed: bool,
}

struct Shared {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    calls: Mutex<Calls>,
    next_id: AtomicU64,
}

impl Shared {
    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.calls.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the connection for calls: every call waiting gets `Closed`, and no call can be
    /// added any more.
    fn fail_all(&self) {
        let waiting = {
            let mut calls = self.calls();
            calls.closed = true;
            std::mem::take(&mut calls.waiting)
        };
        for (_, tx) in waiting {
            let _ = tx.send(Err(Error::Closed));
        }
    }
}

/// Removes a call's entry when the call ends in any way (reply, timeout, error, or the caller
/// dropping the future), so that calls whose replies never come leave nothing behind.
struct Forget<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.shared.calls().waiting.remove(&self.id);
    }
}

/// A control connection to the agent.
pub struct AgentClient {
    endpoint: Endpoint,
    shared: Arc<Shared>,
    reader: JoinHandle<()>,
    call_timeout: Duration,
    connect_timeout: Duration,
    max_run_output: u64,
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// A spawned process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spawned {
    pub process: ProcessId,
    pub pid: i32,
}

/// What [`AgentClient::run`] collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOutput {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Sends a hello on a fresh stream and checks the reply.
async fn hello(s: &mut UnixStream, kind: ConnectionKind) -> Result<(), Error> {
    write_frame_async(s, &Hello::new(kind)).await?;
    let payload = read_frame_async(s).await?.ok_or(Error::Closed)?;
    let reply: HelloReply = decode_hello_reply(&payload).map_err(Error::Protocol)?;
    reply.result?;
    if reply.version != PROTOCOL_VERSION {
        return Err(Error::Agent(hull_agent_protocol::version_mismatch(
            PROTOCOL_VERSION,
            reply.version,
        )));
    }
    Ok(())
}

impl AgentClient {
    /// Connects once (socket, hybrid vsock handshake, hello) within `timeout`.
    pub async fn connect(endpoint: Endpoint, timeout: Duration) -> Result<AgentClient, Error> {
        let started = Instant::now();
        let mut s = endpoint.open(timeout).await?;
        let left = timeout.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, hello(&mut s, ConnectionKind::Control)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Timeout {
                    what: format!("hello with the agent at {endpoint}"),
                    after: timeout,
                })
            }
        }
        let (rd, wr) = s.into_split();
        let shared = Arc::new(Shared {
            writer: tokio::sync::Mutex::new(wr),
            calls: Mutex::new(Calls::default()),
            next_id: AtomicU64::new(1),
        });
        let reader = tokio::spawn(read_responses(rd, shared.clone()));
        Ok(AgentClient {
            endpoint,
            shared,
            reader,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_run_output: MAX_RUN_OUTPUT,
        })
    }

    /// Waits for the agent to come up: retries [`AgentClient::connect`] with exponential
    /// backoff while the failures mean "not up yet", until `deadline` has passed.
    pub async fn connect_retry(
        endpoint: Endpoint,
        deadline: Duration,
    ) -> Result<AgentClient, Error> {
        let start = Instant::now();
        let mut backoff = BACKOFF_START;
        loop {
            let left = deadline.saturating_sub(start.elapsed());
            let attempt = DEFAULT_CONNECT_TIMEOUT.min(left.max(Duration::from_millis(1)));
            match AgentClient::connect(endpoint.clone(), attempt).await {
                Ok(c) => {
                    tracing::trace!("agent at {endpoint} connected after {:?}", start.elapsed());
                    return Ok(c);
                }
                Err(e) if e.is_retryable() && start.elapsed() < deadline => {
                    tracing::debug!("agent at {endpoint} not up yet: {e}");
                    tokio::time::sleep(backoff.min(deadline.saturating_sub(start.elapsed()))).await;
                    if start.elapsed() >= FAST_RETRY {
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
                Err(e) if e.is_retryable() => {
                    return Err(Error::NotReady {
                        endpoint: endpoint.to_string(),
                        waited: start.elapsed(),
                        last: Box::new(e),
                    })
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// Limit for each call but `wait` (default 30 s).
    pub fn set_call_timeout(&mut self, t: Duration) {
        self.call_timeout = t;
    }

    /// Sends one request and waits for its reply (at most `timeout`, if given).
    pub async fn call(&self, req: Request, timeout: Option<Duration>) -> Result<Response, Error> {
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let what = req.type_name();
        let frame = encode_frame(&RequestFrame { id, call: req })?;
        let (tx, rx) = oneshot::channel();
        {
            let mut calls = self.shared.calls();
            if calls.closed {
                return Err(Error::Closed);
            }
            calls.waiting.insert(id, tx);
        }
        let _forget = Forget {
            shared: &self.shared,
            id,
        };
        // Sending is bounded too: a guest that stops reading its end of the vsock fills the
        // socket buffer, and a write (and so the writer's lock, and every later call) would
        // wait for it forever. A call without a limit for its reply (`wait`) still gets the
        // call limit for sending.
        let started = Instant::now();
        let send_limit = timeout.unwrap_or(self.call_timeout);
        let sent = tokio::time::timeout(send_limit, async {
            let mut w = self.shared.writer.lock().await;
            write_raw_frame_async(&mut *w, &frame).await
        })
        .await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Error::Closed),
            Err(_) => {
                // Part of the frame may be out: the stream has no frame boundary any more.
                // Every call fails now rather than waiting on a guest that does not read.
                self.shared.fail_all();
                return Err(Error::Timeout {
                    what: format!("sending the {what} call (the guest does not read)"),
                    after: send_limit,
                });
            }
        }
        let reply = match timeout {
            None => rx.await,
            Some(t) => match tokio::time::timeout(t.saturating_sub(started.elapsed()), rx).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(Error::Timeout {
                        what: format!("{what} call"),
                        after: t,
                    });
                }
            },
        };
        tracing::trace!("{what} call: reply after {:?}", started.elapsed());
        reply.unwrap_or(Err(Error::Closed))
    }

    /// Calls waiting for a reply.
    #[cfg(test)]
    pub(super) fn calls_waiting(&self) -> usize {
        self.shared.calls().waiting.len()
    }

    /// Sets the cap of [`AgentClient::run`] on each stream's output.
    #[cfg(test)]
    pub(super) fn set_max_run_output(&mut self, cap: u64) {
        self.max_run_output = cap;
    }

    async fn call_timed(&self, req: Request) -> Result<Response, Error> {
        self.call(req, Some(self.call_timeout)).await
    }

    pub async fn version(&self) -> Result<VersionInfo, Error> {
        match self.call_timed(Request::Version).await? {
            Response::Version(v) => Ok(v),
            other => Err(unexpected("version", &other)),
        }
    }

    pub async fn health(&self) -> Result<HealthInfo, Error> {
        match self.call_timed(Request::Health).await? {
            Response::Health(h) => Ok(h),
            other => Err(unexpected("health", &other)),
        }
    }

    pub async fn spawn(&self, req: SpawnRequest) -> Result<Spawned, Error> {
        match self.call_timed(Request::Spawn(req)).await? {
            Response::Spawned { process, pid } => Ok(Spawned { process, pid }),
            other => Err(unexpected("spawn", &other)),
        }
    }

    pub async fn signal(&self, process: ProcessId, signal: i32, group: bool) -> Result<(), Error> {
        self.done(
            "signal",
            Request::Signal {
                process,
                signal,
                group,
            },
        )
        .await
    }

    /// Waits for the process to exit (no time limit; see the protocol docs for when it answers).
    pub async fn wait(&self, process: ProcessId) -> Result<ExitStatus, Error> {
        self.wait_inner(process, None).await
    }

    /// [`AgentClient::wait`] with a limit.
    pub async fn wait_timeout(
        &self,
        process: ProcessId,
        limit: Duration,
    ) -> Result<ExitStatus, Error> {
        self.wait_inner(process, Some(limit)).await
    }

    async fn wait_inner(
        &self,
        process: ProcessId,
        limit: Option<Duration>,
    ) -> Result<ExitStatus, Error> {
        match self.call(Request::Wait { process }, limit).await? {
            Response::Exited(s) => Ok(s),
            other => Err(unexpected("wait", &other)),
        }
    }

    /// Closes stdin once `after_bytes` stream bytes reached the process (or at once).
    pub async fn close_stdin(
        &self,
        process: ProcessId,
        after_bytes: Option<u64>,
    ) -> Result<(), Error> {
        self.done(
            "close_stdin",
            Request::CloseStdin {
                process,
                after_bytes,
            },
        )
        .await
    }

    pub async fn resize_terminal(
        &self,
        process: ProcessId,
        rows: u16,
        cols: u16,
    ) -> Result<(), Error> {
        self.done(
            "resize_terminal",
            Request::ResizeTerminal {
                process,
                rows,
                cols,
            },
        )
        .await
    }

    pub async fn release(&self, process: ProcessId) -> Result<(), Error> {
        self.done("release", Request::Release { process }).await
    }

    /// Mounts a file system in the guest (e.g. [`MountRequest::virtiofs`]). The request is
    /// checked here first, so a bad one fails without a round trip, with the agent's wording.
    pub async fn mount(&self, req: MountRequest) -> Result<(), Error> {
        req.validate()?;
        self.done("mount", Request::Mount(req)).await
    }

    /// Configures the guest's NICs, loopback and routes (checked here first, as the agent
    /// checks it again).
    pub async fn configure_network(
        &self,
        cfg: hull_agent_protocol::NetworkConfig,
    ) -> Result<(), Error> {
        cfg.check()?;
        self.done("configure_network", Request::ConfigureNetwork(cfg))
            .await
    }

    /// Unmounts the file system at `target` (`lazy`: detach it even if busy).
    pub async fn unmount(&self, target: &str, lazy: bool) -> Result<(), Error> {
        hull_agent_protocol::check_path("unmount target", target)?;
        self.done(
            "unmount",
            Request::Unmount {
                target: target.to_string(),
                lazy,
            },
        )
        .await
    }

    pub async fn list_processes(&self) -> Result<Vec<ProcessInfo>, Error> {
        match self.call_timed(Request::ListProcesses).await? {
            Response::Processes { processes } => Ok(processes),
            other => Err(unexpected("list_processes", &other)),
        }
    }

    pub async fn stats(&self) -> Result<GuestStats, Error> {
        match self.call_timed(Request::Stats).await? {
            Response::Stats(s) => Ok(s),
            other => Err(unexpected("stats", &other)),
        }
    }

    /// Sets the guest clock to `t`.
    pub async fn set_time(&self, t: SystemTime) -> Result<(), Error> {
        let d = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::Protocol("time before 1970".into()))?;
        self.done(
            "set_time",
            Request::SetTime {
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
            },
        )
        .await
    }

    /// Gives a guest restored from a template its own identity (`set_identity`): `hostname`,
    /// the clock set to `t`, and `entropy` (32 to 512 bytes from the host's `getrandom`) for
    /// its random number generator.
    pub async fn set_identity(
        &self,
        hostname: &str,
        t: SystemTime,
        entropy: Vec<u8>,
    ) -> Result<(), Error> {
        let d = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| Error::Protocol("time before 1970".into()))?;
        self.done(
            "set_identity",
            Request::SetIdentity {
                hostname: hostname.to_string(),
                seconds: d.as_secs() as i64,
                nanos: d.subsec_nanos(),
                entropy,
            },
        )
        .await
    }

    /// Asks the agent to stop everything and power the VM off (host mode: exit).
    pub async fn shutdown(&self, grace: Option<Duration>) -> Result<(), Error> {
        self.done(
            "shutdown",
            Request::Shutdown {
                grace_ms: grace.map(|g| g.as_millis().min(u128::from(u32::MAX)) as u32),
            },
        )
        .await
    }

    // ---- Container calls (protocol v2). Ids are checked here first, so a bad one fails
    // ---- without a round trip, with the agent's wording.

    /// Creates a container from the bundle at guest path `bundle`; its init is held before the
    /// user program runs. Returns the init process.
    pub async fn create_container(
        &self,
        id: &str,
        bundle: &str,
        stdio: StdioSpec,
    ) -> Result<Spawned, Error> {
        check_container_id(id)?;
        let req = Request::CreateContainer(CreateContainerRequest {
            id: id.to_string(),
            bundle: bundle.to_string(),
            stdio,
        });
        let limit = self.call_timeout.max(DEFAULT_CONTAINER_CALL_TIMEOUT);
        match self.call(req, Some(limit)).await? {
            Response::Spawned { process, pid } => Ok(Spawned { process, pid }),
            other => Err(unexpected("create_container", &other)),
        }
    }

    /// Lets a created container's init run its program.
    pub async fn start_container(&self, id: &str) -> Result<(), Error> {
        check_container_id(id)?;
        self.done("start_container", Request::StartContainer { id: id.into() })
            .await
    }

    /// Runs another process (an OCI `process` object) in a running container.
    pub async fn exec(
        &self,
        id: &str,
        process: serde_json::Value,
        stdio: StdioSpec,
    ) -> Result<Spawned, Error> {
        check_container_id(id)?;
        let req = Request::Exec(ExecRequest {
            id: id.to_string(),
            process,
            stdio,
        });
        let limit = self.call_timeout.max(DEFAULT_CONTAINER_CALL_TIMEOUT);
        match self.call(req, Some(limit)).await? {
            Response::Spawned { process, pid } => Ok(Spawned { process, pid }),
            other => Err(unexpected("exec", &other)),
        }
    }

    /// Signals the container's init, or (`all`) every process in it.
    pub async fn kill_container(&self, id: &str, signal: i32, all: bool) -> Result<(), Error> {
        check_container_id(id)?;
        let req = Request::KillContainer {
            id: id.into(),
            signal,
            all,
        };
        self.done("kill_container", req).await
    }

    pub async fn container_state(&self, id: &str) -> Result<ContainerInfo, Error> {
        check_container_id(id)?;
        match self
            .call_timed(Request::ContainerState { id: id.into() })
            .await?
        {
            // A reply about another container is as wrong as a reply of another type.
            Response::Container(info) if info.id == id => Ok(info),
            other => Err(unexpected("container_state", &other)),
        }
    }

    /// Guest pids of the container's processes.
    pub async fn container_pids(&self, id: &str) -> Result<Vec<i32>, Error> {
        check_container_id(id)?;
        match self
            .call_timed(Request::ContainerPids { id: id.into() })
            .await?
        {
            Response::Pids { pids } => Ok(pids),
            other => Err(unexpected("container_pids", &other)),
        }
    }

    pub async fn pause_container(&self, id: &str) -> Result<(), Error> {
        check_container_id(id)?;
        self.done("pause_container", Request::PauseContainer { id: id.into() })
            .await
    }

    pub async fn resume_container(&self, id: &str) -> Result<(), Error> {
        check_container_id(id)?;
        self.done(
            "resume_container",
            Request::ResumeContainer { id: id.into() },
        )
        .await
    }

    /// Applies new limits: an OCI `linux.resources` object.
    pub async fn update_container(
        &self,
        id: &str,
        resources: serde_json::Value,
    ) -> Result<(), Error> {
        check_container_id(id)?;
        let req = Request::UpdateContainer {
            id: id.into(),
            resources,
        };
        self.done("update_container", req).await
    }

    pub async fn container_stats(&self, id: &str) -> Result<ContainerStats, Error> {
        check_container_id(id)?;
        match self
            .call_timed(Request::ContainerStats { id: id.into() })
            .await?
        {
            Response::ContainerStats(s) => Ok(s),
            other => Err(unexpected("container_stats", &other)),
        }
    }

    /// Removes a stopped container (`force`: kills it first if it still runs).
    pub async fn delete_container(&self, id: &str, force: bool) -> Result<(), Error> {
        check_container_id(id)?;
        let req = Request::DeleteContainer {
            id: id.into(),
            force,
        };
        let limit = self.call_timeout.max(DEFAULT_CONTAINER_CALL_TIMEOUT);
        match self.call(req, Some(limit)).await? {
            Response::Done => Ok(()),
            other => Err(unexpected("delete_container", &other)),
        }
    }

    async fn done(&self, what: &str, req: Request) -> Result<(), Error> {
        match self.call_timed(req).await? {
            Response::Done => Ok(()),
            other => Err(unexpected(what, &other)),
        }
    }

    /// Opens a stream connection for one standard stream of a process. stdout/stderr: read
    /// until end-of-file. stdin: write, then shut down or drop the stream (or use
    /// [`AgentClient::close_stdin`] with the byte count).
    pub async fn open_stream(
        &self,
        process: ProcessId,
        stream: StdStream,
    ) -> Result<UnixStream, Error> {
        self.open_connection(ConnectionKind::Stream { process, stream })
            .await
    }

    /// The guest's TCP ports that `127.0.0.1` reaches, once they differ from `known` or after
    /// `wait` (at most [`hull_agent_protocol::MAX_PORTS_WAIT_MS`]). The guest's answer is
    /// checked: at most [`hull_agent_protocol::MAX_LISTENING_PORTS`] ports, none 0, each once.
    pub async fn listening_ports(&self, known: &[u16], wait: Duration) -> Result<Vec<u16>, Error> {
        let wait_ms = u32::try_from(wait.as_millis())
            .unwrap_or(u32::MAX)
            .min(hull_agent_protocol::MAX_PORTS_WAIT_MS);
        let req = Request::ListeningPorts {
            known: known.to_vec(),
            wait_ms,
        };
        let limit = Duration::from_millis(wait_ms.into()) + self.call_timeout;
        match self.call(req, Some(limit)).await? {
            Response::Ports { ports } => {
                let mut seen = std::collections::BTreeSet::new();
                let ok = ports.len() <= hull_agent_protocol::MAX_LISTENING_PORTS
                    && ports.iter().all(|&p| p != 0 && seen.insert(p));
                if ok {
                    Ok(seen.into_iter().collect())
                } else {
                    Err(Error::Protocol(format!(
                        "listening_ports: the guest answered {} ports (at most {}, none 0, each once)",
                        ports.len(),
                        hull_agent_protocol::MAX_LISTENING_PORTS
                    )))
                }
            }
            other => Err(unexpected("listening_ports", &other)),
        }
    }

    /// Opens a forward connection: raw bytes to and from `127.0.0.1:port` in the guest.
    pub async fn open_forward(&self, port: u16) -> Result<UnixStream, Error> {
        self.open_connection(ConnectionKind::Forward { port }).await
    }

    /// Opens a log connection: the agent's log lines (backlog, then live).
    pub async fn open_log(&self) -> Result<UnixStream, Error> {
        self.open_connection(ConnectionKind::Log).await
    }

    async fn open_connection(&self, kind: ConnectionKind) -> Result<UnixStream, Error> {
        let t = self.connect_timeout;
        let mut s = self.endpoint.open(t).await?;
        match tokio::time::timeout(t, hello(&mut s, kind)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::Timeout {
                    what: "stream connection hello".into(),
                    after: t,
                })
            }
        }
        Ok(s)
    }

    /// Runs a process to completion: spawns it, feeds it `stdin` (closing it afterwards; with
    /// `None` stdin is /dev/null), collects stdout and stderr (at most [`MAX_RUN_OUTPUT`] bytes
    /// each), and waits for the exit. A process that writes more than that to one stream is
    /// killed (with its process group) and the call fails.
    pub async fn run(
        &self,
        mut req: SpawnRequest,
        stdin: Option<Vec<u8>>,
    ) -> Result<ProcessOutput, Error> {
        if let StdioSpec::Pipes { stdin: s, .. } = &mut req.stdio {
            *s = if stdin.is_some() {
                Redirect::Pipe
            } else {
                Redirect::Null
            };
        }
        let terminal = matches!(req.stdio, StdioSpec::Terminal { .. });
        let (out_piped, err_piped) = match req.stdio {
            StdioSpec::Pipes { stdout, stderr, .. } => {
                (stdout == Redirect::Pipe, stderr == Redirect::Pipe)
            }
            StdioSpec::Terminal { .. } => (true, false),
        };
        let p = self.spawn(req).await?;
        // The guest is not trusted: collect at most `cap` bytes per stream. A stream that has
        // more is dropped, and `overflow` says so: the process would otherwise block on a pipe
        // nobody reads any more, and never exit.
        let cap = self.max_run_output;
        let overflow = Arc::new(Notify::new());
        let collect = |s: Option<UnixStream>| {
            let overflow = overflow.clone();
            tokio::spawn(async move {
                let mut v = Vec::new();
                if let Some(s) = s {
                    s.take(cap + 1).read_to_end(&mut v).await?;
                }
                if v.len() as u64 > cap {
                    overflow.notify_one();
                    return Err(std::io::Error::other(format!(
                        "the process wrote more than {cap} bytes to one stream and was killed; \
                         use open_stream to read that much"
                    )));
                }
                Ok::<_, std::io::Error>(v)
            })
        };
        let out = collect(if out_piped {
            Some(self.open_stream(p.process, StdStream::Stdout).await?)
        } else {
            None
        });
        let err = collect(if err_piped {
            Some(self.open_stream(p.process, StdStream::Stderr).await?)
        } else {
            None
        });
        if let Some(data) = stdin {
            let mut s = self.open_stream(p.process, StdStream::Stdin).await?;
            s.write_all(&data).await?;
            if !terminal {
                self.close_stdin(p.process, Some(data.len() as u64)).await?;
            }
            drop(s);
        }
        let status = tokio::select! {
            status = self.wait(p.process) => status?,
            () = overflow.notified() => {
                // Best effort: the process may have exited meanwhile.
                let kill = nix::sys::signal::Signal::SIGKILL as i32;
                if let Err(e) = self.signal(p.process, kill, true).await {
                    tracing::debug!("killing process {} after too much output: {e}", p.process.0);
                }
                let status = self.wait(p.process).await?;
                // Its unread output stays in the guest until released.
                if let Err(e) = self.release(p.process).await {
                    tracing::debug!("releasing process {}: {e}", p.process.0);
                }
                status
            }
        };
        let join = |h: JoinHandle<std::io::Result<Vec<u8>>>| async move {
            h.await
                .map_err(|e| Error::Protocol(format!("stream reader failed: {e}")))?
                .map_err(Error::Io)
        };
        Ok(ProcessOutput {
            status,
            stdout: join(out).await?,
            stderr: join(err).await?,
        })
    }
}

fn unexpected(call: &str, r: &Response) -> Error {
    Error::Protocol(format!("unexpected reply to {call}: {r:?}"))
}

/// Frames that belong to no call (id-0 errors, frames without a readable id) are logged, but
/// a guest can send any number of them: after the first few, only every this many-th is.
const NOISE_LOG_FIRST: u64 = 8;
const NOISE_LOG_EVERY: u64 = 1000;

/// Reads the agent's replies and hands each to its call. Everything here comes from the guest:
/// frames are bounded by the protocol's maximum frame size (checked before allocating), replies
/// to ids nobody waits for are dropped, and a frame that cannot be split from the stream ends
/// the connection: every waiting call fails with the reason, later calls with
/// [`Error::Closed`], and the connection is shut down.
async fn read_responses(mut rd: tokio::net::unix::OwnedReadHalf, shared: Arc<Shared>) {
    let mut noise = 0u64;
    let mut note_noise = |what: &str| {
        noise += 1;
        if noise <= NOISE_LOG_FIRST || noise.is_multiple_of(NOISE_LOG_EVERY) {
            tracing::warn!("agent connection: {what} ({noise} frames for no call so far)");
        }
    };
    let failure = loop {
        let payload = match read_frame_async(&mut rd).await {
            Ok(Some(p)) => p,
            Ok(None) => break None,
            Err(e) => {
                tracing::warn!("agent connection: {e}; closing it");
                break Some(format!("bad frame from the agent: {e}"));
            }
        };
        let (id, reply) = match decode_response(&payload) {
            Ok(f) => (f.id, f.result.map_err(Error::Agent)),
            Err((Some(id), msg)) => (
                id,
                Err(Error::Protocol(format!("undecodable reply: {msg}"))),
            ),
            Err((None, msg)) => {
                note_noise(&format!("undecodable frame: {msg}"));
                continue;
            }
        };
        if id == 0 {
            match &reply {
                Err(e) => note_noise(&format!("the agent reported a protocol error: {e}")),
                Ok(r) => note_noise(&format!("a reply with id 0: {r:?}")),
            }
            continue;
        }
        let tx = shared.calls().waiting.remove(&id);
        match tx {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => tracing::debug!("reply to request {id}, which nobody waits for (any more)"),
        }
    };
    let waiting = {
        let mut calls = shared.calls();
        calls.closed = true;
        std::mem::take(&mut calls.waiting)
    };
    for (_, tx) in waiting {
        let _ = tx.send(Err(match &failure {
            Some(why) => Error::Protocol(why.clone()),
            None => Error::Closed,
        }));
    }
    // The stream has no usable frame boundary any more (or the agent is gone): let the agent
    // see the end too.
    let _ = shared.writer.lock().await.shutdown().await;
}
