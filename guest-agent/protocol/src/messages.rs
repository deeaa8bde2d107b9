//! The messages: hello, requests, responses and the data they carry.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::container::{ContainerInfo, ContainerStats, CreateContainerRequest, ExecRequest};
use crate::error::{AgentError, ErrorKind};
use crate::mount::MountRequest;
use crate::PROTOCOL_VERSION;

/// The agent's handle for a spawned process; assigned by the agent, never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ProcessId(pub u64);

impl std::fmt::Display for ProcessId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "process {}", self.0)
    }
}

/// One standard stream of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StdStream {
    Stdin,
    Stdout,
    Stderr,
}

/// What a connection is for (see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ConnectionKind {
    /// Requests and responses.
    Control,
    /// Raw bytes of one stream of one process.
    Stream {
        process: ProcessId,
        stream: StdStream,
    },
    /// The agent's log lines.
    Log,
    /// Raw bytes to and from a TCP connection the agent makes to `127.0.0.1:port` in the guest
    /// (port-forward). The hello reply comes once that connection is made, or carries why it
    /// could not be.
    Forward { port: u16 },
}

/// First frame on every connection, host to agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u32,
    pub connection: ConnectionKind,
}

impl Hello {
    pub fn new(connection: ConnectionKind) -> Hello {
        Hello {
            version: PROTOCOL_VERSION,
            connection,
        }
    }
}

/// The agent's answer to a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The agent's protocol version.
    pub version: u32,
    pub result: Result<(), AgentError>,
}

/// The error for a version mismatch, worded the same on both sides.
pub fn version_mismatch(host: u32, agent: u32) -> AgentError {
    AgentError::new(
        ErrorKind::VersionMismatch,
        format!(
            "protocol version mismatch: the host speaks version {host}, the agent speaks version \
             {agent}; use a hull-agent built from the same hull release as the runtime"
        ),
    )
}

/// Decodes a hello payload. The version is checked first, before the rest of the frame is
/// interpreted, so any future hello layout still gets a clean mismatch error.
pub fn decode_hello(payload: &[u8]) -> Result<Hello, AgentError> {
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        AgentError::new(
            ErrorKind::BadFrame,
            format!("hello frame is not valid JSON: {e}"),
        )
    })?;
    let version = value
        .get("version")
        .and_then(Value::as_u64)
        .ok_or_else(|| {
            AgentError::new(
                ErrorKind::OutOfOrder,
                "expected a hello frame with a numeric \"version\" first on the connection",
            )
        })?;
    if version != u64::from(PROTOCOL_VERSION) {
        return Err(version_mismatch(
            u32::try_from(version).unwrap_or(u32::MAX),
            PROTOCOL_VERSION,
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| AgentError::new(ErrorKind::BadFrame, format!("invalid hello frame: {e}")))
}

/// Decodes the agent's hello reply (host side).
pub fn decode_hello_reply(payload: &[u8]) -> Result<HelloReply, String> {
    serde_json::from_slice(payload).map_err(|e| format!("invalid hello reply: {e}"))
}

/// A request, host to agent, on a control connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Chosen by the host: non-zero, unique among its requests in flight on the connection.
    pub id: u64,
    pub call: Request,
}

/// A response, agent to host. `id` 0 reports a frame whose request id could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseFrame {
    pub id: u64,
    pub result: Result<Response, AgentError>,
}

/// The calls. New calls are new variants; an agent answers unknown ones with
/// [`ErrorKind::UnknownRequest`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Agent and protocol versions. Reply: [`Response::Version`].
    Version,
    /// Liveness. Reply: [`Response::Health`].
    Health,
    /// Start a process. Reply: [`Response::Spawned`].
    Spawn(SpawnRequest),
    /// Send a signal to a running process (or its process group). Reply: [`Response::Done`].
    Signal {
        process: ProcessId,
        signal: i32,
        /// Signal the whole process group (the process is its group's leader).
        #[serde(default)]
        group: bool,
    },
    /// Wait for exit (see the crate docs for exactly when it answers). Reply: [`Response::Exited`].
    Wait { process: ProcessId },
    /// Close the process's stdin, after `after_bytes` bytes of stdin stream data if given.
    /// Reply: [`Response::Done`] once the pipe is closed.
    CloseStdin {
        process: ProcessId,
        #[serde(default)]
        after_bytes: Option<u64>,
    },
    /// Set the terminal size of a process spawned with a terminal. Reply: [`Response::Done`].
    ResizeTerminal {
        process: ProcessId,
        rows: u16,
        cols: u16,
    },
    /// Forget an exited process, discarding output nobody read. Reply: [`Response::Done`].
    Release { process: ProcessId },
    /// The agent's processes. Reply: [`Response::Processes`].
    ListProcesses,
    /// Guest memory and CPU figures. Reply: [`Response::Stats`].
    Stats,
    /// Set the guest's realtime clock. Reply: [`Response::Done`].
    SetTime { seconds: i64, nanos: u32 },
    /// A guest restored from a template snapshot takes its own identity, before anything else
    /// (the network, the share): fresh entropy for the kernel's random number generator
    /// (added, credited and the CRNG reseeded, so no two sandboxes from one template draw the
    /// same numbers), the wall clock, and the hostname. `entropy` holds
    /// [`crate::MIN_IDENTITY_ENTROPY`] to [`crate::MAX_IDENTITY_ENTROPY`] bytes from the
    /// host's `getrandom`. Reply: [`Response::Done`].
    SetIdentity {
        hostname: String,
        seconds: i64,
        nanos: u32,
        entropy: Vec<u8>,
    },
    /// Mount a file system (creating the target directory if missing). Reply:
    /// [`Response::Done`].
    Mount(MountRequest),
    /// Unmount the file system mounted at `target` (`lazy`: detach it now, clean up when it is
    /// no longer busy). Reply: [`Response::Done`].
    Unmount {
        target: String,
        #[serde(default)]
        lazy: bool,
    },
    /// Stop every process (SIGTERM, then SIGKILL after `grace_ms`) and power the VM off (host
    /// mode: exit). Reply: [`Response::Done`], sent before shutting down.
    Shutdown {
        #[serde(default)]
        grace_ms: Option<u32>,
    },
    /// Create a container from an OCI bundle; its init process is held before the user program
    /// runs until `start_container`. Reply: [`Response::Spawned`] (the init process).
    CreateContainer(CreateContainerRequest),
    /// Let a created container's init run its program. Reply: [`Response::Done`].
    StartContainer { id: String },
    /// Run another process in a running container. Reply: [`Response::Spawned`].
    Exec(ExecRequest),
    /// Signal the container's init, or (`all`) every process in it. Reply: [`Response::Done`].
    KillContainer {
        id: String,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    /// Reply: [`Response::Container`].
    ContainerState { id: String },
    /// Guest pids of the container's processes. Reply: [`Response::Pids`].
    ContainerPids { id: String },
    /// Freeze every process of the container (cgroup v2 freezer). Reply: [`Response::Done`].
    PauseContainer { id: String },
    /// Thaw a paused container. Reply: [`Response::Done`].
    ResumeContainer { id: String },
    /// Apply new resource limits: an OCI `linux.resources` object. Reply: [`Response::Done`].
    UpdateContainer { id: String, resources: Value },
    /// The container's cgroup figures. Reply: [`Response::ContainerStats`].
    ContainerStats { id: String },
    /// Remove a stopped container (`force`: kill it first if it still runs), its cgroup and
    /// state, and release its init process. Reply: [`Response::Done`].
    DeleteContainer {
        id: String,
        #[serde(default)]
        force: bool,
    },
    /// Configure the guest's NICs (found by MAC: renamed, MTU, addresses, up), loopback and
    /// routes, checked first with [`crate::NetworkConfig::check`]. Reply: [`Response::Done`].
    ConfigureNetwork(crate::NetworkConfig),
    /// The TCP ports listening in the guest that a connection to `127.0.0.1` reaches (bound to
    /// `0.0.0.0`, `127.0.0.0/8`, `::` or an IPv4-mapped one of those), ascending, at most
    /// [`crate::MAX_LISTENING_PORTS`]. The reply waits, up to `wait_ms` (at most
    /// [`crate::MAX_PORTS_WAIT_MS`]), until the set differs from `known`. Reply:
    /// [`Response::Ports`].
    ListeningPorts {
        #[serde(default)]
        known: Vec<u16>,
        #[serde(default)]
        wait_ms: u32,
    },
}

impl Request {
    /// The `type` names this version knows (an unknown one gets [`ErrorKind::UnknownRequest`]).
    pub const TYPES: &'static [&'static str] = &[
        "version",
        "health",
        "spawn",
        "signal",
        "wait",
        "close_stdin",
        "resize_terminal",
        "release",
        "list_processes",
        "stats",
        "set_time",
        "set_identity",
        "shutdown",
        "mount",
        "unmount",
        "create_container",
        "start_container",
        "exec",
        "kill_container",
        "container_state",
        "container_pids",
        "pause_container",
        "resume_container",
        "update_container",
        "container_stats",
        "delete_container",
        "configure_network",
        "listening_ports",
    ];

    /// This request's `type` name.
    pub fn type_name(&self) -> &'static str {
        match self {
            Request::Version => "version",
            Request::Health => "health",
            Request::Spawn(_) => "spawn",
            Request::Signal { .. } => "signal",
            Request::Wait { .. } => "wait",
            Request::CloseStdin { .. } => "close_stdin",
            Request::ResizeTerminal { .. } => "resize_terminal",
            Request::Release { .. } => "release",
            Request::ListProcesses => "list_processes",
            Request::Stats => "stats",
            Request::SetTime { .. } => "set_time",
            Request::SetIdentity { .. } => "set_identity",
            Request::Shutdown { .. } => "shutdown",
            Request::Mount(_) => "mount",
            Request::Unmount { .. } => "unmount",
            Request::CreateContainer(_) => "create_container",
            Request::StartContainer { .. } => "start_container",
            Request::Exec(_) => "exec",
            Request::KillContainer { .. } => "kill_container",
            Request::ContainerState { .. } => "container_state",
            Request::ContainerPids { .. } => "container_pids",
            Request::PauseContainer { .. } => "pause_container",
            Request::ResumeContainer { .. } => "resume_container",
            Request::UpdateContainer { .. } => "update_container",
            Request::ContainerStats { .. } => "container_stats",
            Request::DeleteContainer { .. } => "delete_container",
            Request::ConfigureNetwork(_) => "configure_network",
            Request::ListeningPorts { .. } => "listening_ports",
        }
    }
}

/// Why a request payload could not be decoded; `id` is the request's id when it could be read
/// (the agent answers with that id, or 0).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestDecodeError {
    pub id: Option<u64>,
    pub error: AgentError,
}

/// Decodes a request payload, telling apart bad JSON, a missing id, an unknown call type and bad
/// fields of a known call.
pub fn decode_request(payload: &[u8]) -> Result<RequestFrame, RequestDecodeError> {
    let bad = |id, kind, msg: String| RequestDecodeError {
        id,
        error: AgentError::new(kind, msg),
    };
    let value: Value = serde_json::from_slice(payload).map_err(|e| {
        bad(
            None,
            ErrorKind::BadFrame,
            format!("request frame is not valid JSON: {e}"),
        )
    })?;
    let obj = value.as_object().ok_or_else(|| {
        bad(
            None,
            ErrorKind::BadFrame,
            "request frame is not a JSON object".into(),
        )
    })?;
    if obj.contains_key("version") && obj.contains_key("connection") {
        return Err(bad(
            None,
            ErrorKind::OutOfOrder,
            "unexpected hello frame: this connection already said hello".into(),
        ));
    }
    let id = match obj.get("id").and_then(Value::as_u64) {
        Some(0) => {
            return Err(bad(
                None,
                ErrorKind::BadFrame,
                "request id 0 is reserved for errors that belong to no request".into(),
            ))
        }
        Some(id) => id,
        None => {
            return Err(bad(
                None,
                ErrorKind::BadFrame,
                "request frame has no numeric \"id\"".into(),
            ))
        }
    };
    let call = obj.get("call").ok_or_else(|| {
        bad(
            Some(id),
            ErrorKind::BadFrame,
            "request frame has no \"call\"".into(),
        )
    })?;
    let ty = call.get("type").and_then(Value::as_str).ok_or_else(|| {
        bad(
            Some(id),
            ErrorKind::BadFrame,
            "request \"call\" has no string \"type\"".into(),
        )
    })?;
    if !Request::TYPES.contains(&ty) {
        return Err(bad(
            Some(id),
            ErrorKind::UnknownRequest,
            format!(
                "unknown request type {ty:?} (this agent speaks protocol version {PROTOCOL_VERSION} and knows: {})",
                Request::TYPES.join(", ")
            ),
        ));
    }
    let call = Request::deserialize(call).map_err(|e| {
        bad(
            Some(id),
            ErrorKind::InvalidArgument,
            format!("invalid {ty} request: {e}"),
        )
    })?;
    Ok(RequestFrame { id, call })
}

/// Decodes a response payload (host side). `Err((Some(id), _))` when the id is readable but the
/// result is not (e.g. a response type this host does not know).
pub fn decode_response(payload: &[u8]) -> Result<ResponseFrame, (Option<u64>, String)> {
    let value: Value = serde_json::from_slice(payload)
        .map_err(|e| (None, format!("response frame is not valid JSON: {e}")))?;
    let id = value.get("id").and_then(Value::as_u64);
    serde_json::from_value(value).map_err(|e| (id, format!("invalid response frame: {e}")))
}

/// Replies. Each request has one reply type (documented on [`Request`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    Version(VersionInfo),
    Health(HealthInfo),
    Spawned { process: ProcessId, pid: i32 },
    Exited(ExitStatus),
    Processes { processes: Vec<ProcessInfo> },
    Stats(GuestStats),
    Done,
    Container(ContainerInfo),
    Pids { pids: Vec<i32> },
    ContainerStats(ContainerStats),
    Ports { ports: Vec<u16> },
}

/// Where the agent runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentMode {
    /// PID 1 of a guest VM.
    Guest,
    /// `--listen unix:PATH` on a host (tests).
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub protocol: u32,
    /// hull-agent's crate version.
    pub agent: String,
    pub mode: AgentMode,
    /// `uname -r` of the kernel the agent runs on.
    pub kernel: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthInfo {
    /// Milliseconds since the agent started.
    pub uptime_ms: u64,
    /// Processes the agent spawned that are still running.
    pub running_processes: u32,
}

/// How the process's standard streams are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum StdioSpec {
    /// Separate pipes (or /dev/null) for stdin, stdout and stderr.
    Pipes {
        stdin: Redirect,
        stdout: Redirect,
        stderr: Redirect,
    },
    /// One pseudo-terminal (the process's controlling terminal) of this size for all three; its
    /// output is the `stdout` stream, its input `stdin`.
    Terminal { rows: u16, cols: u16 },
}

impl Default for StdioSpec {
    fn default() -> Self {
        StdioSpec::Pipes {
            stdin: Redirect::Pipe,
            stdout: Redirect::Pipe,
            stderr: Redirect::Pipe,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Redirect {
    /// A pipe, reachable as a stream connection.
    Pipe,
    /// /dev/null.
    Null,
}

/// The identity a process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (set exactly: empty means none).
    #[serde(default)]
    pub groups: Vec<u32>,
}

/// Start a process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnRequest {
    /// Program and arguments. `argv[0]` is an absolute path, or a bare name looked up in the
    /// `PATH` of `env` (default `/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin`).
    pub argv: Vec<String>,
    /// The whole environment, as `KEY=VALUE` entries (nothing is inherited from the agent).
    #[serde(default)]
    pub env: Vec<String>,
    /// Absolute working directory; must exist.
    pub cwd: String,
    /// Run as this user; `None` runs as the agent's user.
    #[serde(default)]
    pub user: Option<User>,
    #[serde(default)]
    pub stdio: StdioSpec,
    /// Absolute path (in the agent's view) of a directory the process is chrooted into before
    /// it execs; `cwd`, `argv[0]` and `PATH` are then resolved inside it. `None`: the agent's
    /// own root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

impl SpawnRequest {
    /// A request with pipes for all streams, empty environment, cwd `/`.
    pub fn new<S: Into<String>>(argv: impl IntoIterator<Item = S>) -> SpawnRequest {
        SpawnRequest {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: "/".into(),
            user: None,
            stdio: StdioSpec::default(),
            root: None,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExitStatus {
    /// It called exit with this code.
    Exited { code: i32 },
    /// A signal killed it.
    Signaled { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    /// The exit code, if it exited normally.
    pub fn code(&self) -> Option<i32> {
        match self {
            ExitStatus::Exited { code } => Some(*code),
            ExitStatus::Signaled { .. } => None,
        }
    }

    /// The killing signal, if a signal killed it.
    pub fn signal(&self) -> Option<i32> {
        match self {
            ExitStatus::Exited { .. } => None,
            ExitStatus::Signaled { signal, .. } => Some(*signal),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ProcessState {
    Running,
    Exited { status: ExitStatus },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub process: ProcessId,
    pub pid: i32,
    pub argv: Vec<String>,
    pub terminal: bool,
    pub state: ProcessState,
}

/// Memory figures from /proc/meminfo, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemoryStats {
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub available_bytes: u64,
    pub buffers_bytes: u64,
    pub cached_bytes: u64,
}

/// CPU time since boot from /proc/stat (all CPUs together), in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CpuStats {
    pub online_cpus: u32,
    pub user_usec: u64,
    pub nice_usec: u64,
    pub system_usec: u64,
    pub idle_usec: u64,
    pub iowait_usec: u64,
    pub irq_usec: u64,
    pub softirq_usec: u64,
    pub steal_usec: u64,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GuestStats {
    /// Milliseconds since the (guest) kernel booted.
    pub uptime_ms: u64,
    pub memory: MemoryStats,
    pub cpu: CpuStats,
    /// 1, 5 and 15 minute load averages.
    pub load_avg: [f64; 3],
    /// Tasks in the whole (guest) system, from /proc/loadavg.
    pub tasks: u32,
}
