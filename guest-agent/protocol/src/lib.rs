//! The protocol spoken between hull's runtime (host) and hull-agent (guest PID 1).
//!
//! **Owns**: the wire types, their encoding and the limits (frame size, ids, in-flight calls).
//! **Must not**: do I/O beyond reading and writing frames on a stream it is given, or depend on
//! either side's internals: both the agent and the runtime build on it.
//!
//! # Transport
//!
//! The agent listens on one stream-socket address: vsock port [`AGENT_VSOCK_PORT`] in the guest
//! (the host reaches it through hull-vmm's hybrid vsock: connect to the VMM's Unix socket, write
//! `CONNECT 1024\n`, read `OK <port>\n`), or a Unix socket in host mode
//! (`hull-agent --listen unix:PATH`, used by tests; no PID 1 duties). Everything below is the same
//! on both transports.
//!
//! Every connection is opened by the host and starts with one [`Hello`] frame naming the protocol
//! version and what the connection is for ([`ConnectionKind`]); the agent answers with one
//! [`HelloReply`] frame. A version mismatch is answered with an error of kind
//! [`ErrorKind::VersionMismatch`] naming both versions, then the agent closes the connection.
//! A connection whose hello does not arrive within [`HELLO_TIMEOUT_MS`] is closed.
//!
//! * **Control** connections then carry [`RequestFrame`]s (host to agent) and
//!   [`ResponseFrame`]s (agent to host). Each request has a host-chosen `id` (non-zero, unique
//!   among the requests in flight on that connection); the response carries the same id. Calls
//!   are handled concurrently, so many may be in flight on one connection (a `wait` does not
//!   block a `health`), and responses come back in completion order. At most
//!   [`MAX_IN_FLIGHT`] requests may be in flight per connection; more get [`ErrorKind::Busy`].
//! * **Stream** connections carry one standard stream of one spawned process as raw bytes, after
//!   the hello reply: `stdout`/`stderr` flow agent to host, `stdin` host to agent. Backpressure is
//!   the socket's: a host that does not read stalls the process's writes once the pipe and socket
//!   buffers are full; nothing is dropped. At most one connection per stream at a time
//!   ([`ErrorKind::Busy`] otherwise).
//! * **Forward** connections carry raw bytes both ways between the host and a TCP connection
//!   the agent made to `127.0.0.1:<port>` in the guest, after the hello reply (which carries
//!   the error, e.g. connection refused, when the agent could not connect). Either side's
//!   end-of-file is passed on as a half-close. This is how a pod's port-forward reaches the
//!   guest: the host learns the ports with `listening_ports`.
//! * **Log** connections receive the agent's log as text lines (the lines logged since boot that
//!   are still in the agent's bounded backlog, then live lines); a slow reader loses lines, never
//!   stalls the agent.
//!
//! # Frames
//!
//! A frame is a 4-byte big-endian payload length followed by that many bytes of JSON
//! (see [`frame`]). The length is at most [`MAX_FRAME_SIZE`] and never 0. The agent answers a
//! bad frame on a control connection with an error response (id 0 when the frame's id cannot
//! be read) and keeps serving the connection, except when it can no longer find the next frame
//! boundary (oversized length: error, then close; truncated frame: the peer is gone) — other
//! connections are never affected. Unknown request types get [`ErrorKind::UnknownRequest`] with
//! the request's id, so a newer host can probe an older agent.
//!
//! # Processes and their output
//!
//! `spawn` starts a process (in its own session and process group) and returns a
//! [`ProcessId`], the agent's own handle, never reused (unlike a pid). Its stdout and stderr are
//! pipes (or one pseudo-terminal) whose read ends the agent holds until they are drained: output
//! written by a process that exits before the host attaches is kept (in the pipe) and delivered
//! when a stream connection attaches. A stream connection for stdout/stderr is closed by the agent
//! after the pipe reaches end-of-file (every writer closed it) and every byte was written to the
//! connection. If the host closes a stream connection early, the pipe goes back to the agent and
//! can be attached again.
//!
//! **`wait`** replies once the process has exited **and** every output stream that has a stream
//! connection attached at that moment (or attaches before this condition holds) has reached
//! end-of-file and been fully written to its connection. So a host that attaches its stdout/stderr
//! connections (and got their hello replies) before calling `wait` has, when the reply arrives,
//! all output in its socket buffers, followed by end-of-file. Once the process has exited, an
//! attached stream whose pipe stays silent for 2 s without reaching end-of-file is ended by the
//! agent as if it had (a background child that inherited the pipe and writes nothing does not
//! hold `wait`, as runc returns when the container's process exits); output that keeps coming
//! keeps it going. Output streams nobody attached do not delay `wait`; their data stays
//! available.
//!
//! **Stdin** is closed (the process sees end-of-file) when the stdin stream connection reaches
//! end-of-file, or by the `close_stdin` call: with `after_bytes: Some(n)` the agent first writes
//! the first `n` bytes received on stdin stream connections into the pipe (so there is no race
//! between the data connection and the control connection), with `None` at once.
//!
//! A process's entry (and its held pipes) is released when it has exited, a `wait` has been
//! answered, and every output pipe has been drained to end-of-file (or was not a pipe) — or at once
//! by `release` on an exited process, discarding unread output. `list_processes` shows entries.
//!
//! Exec failures happen in the child after fork, like a shell: a missing program exits with code
//! 127, a program that exists but cannot be executed with 126, and the reason is written to the
//! process's stderr (or terminal). Bad arguments (empty argv, relative program path or cwd, a cwd
//! that does not exist, NUL bytes) are refused with an error reply and start nothing.
//!
//! A spawn request may name a `root`: the child chroots into that directory (after setting up
//! its streams, before dropping privileges) and `cwd`, `argv[0]` and `PATH` are resolved inside
//! it; the agent checks `cwd` as it will be seen from inside the root.
//!
//! # Mounts
//!
//! `mount` ([`MountRequest`]) mounts a virtio-fs share by tag, a tmpfs, a procfs or a recursive
//! bind mount at an absolute target (no `..`, no NUL, not `/`), creating missing directories and
//! removing them again if the mount fails; `unmount` undoes one (optionally lazily). Requests are
//! checked by [`MountRequest::validate`] on both sides; errors name the field and the problem.
//! Added in protocol version 1 as new calls: an older agent answers
//! [`ErrorKind::UnknownRequest`].
//!
//! # Containers
//!
//! Version 2 adds the container calls ([`container`]): `create_container` from an OCI bundle
//! the host prepared in the share, `start_container`, `exec`, `kill_container`,
//! `container_state`, `container_pids`, `pause_container`, `resume_container`,
//! `update_container`, `container_stats` and `delete_container`. A container's init and its
//! execs are agent processes like spawned ones (streams, `wait`, resize, `close_stdin`).
//!
//! # Network
//!
//! `configure_network` ([`NetworkConfig`], reply `done`) gives the guest the sandbox namespace's
//! network: each NIC is found by its MAC, renamed, given its MTU and addresses (old ones
//! flushed) and brought up; `lo` is brought up; then the routes are added in order. It is
//! checked first ([`NetworkConfig::check`]: an invalid request changes nothing, nor does one
//! naming a MAC the guest lacks) and may be repeated with the same request. Host mode refuses
//! it ([`ErrorKind::Unsupported`]) after the check.
//!
//! # Growing the protocol
//!
//! [`Request`] and [`Response`] are internally tagged (`"type"`) enums: new calls (containers:
//! create from an OCI spec, exec, pause, per-container stats) are new variants; an agent that does
//! not know one answers [`ErrorKind::UnknownRequest`]. Incompatible changes bump
//! [`PROTOCOL_VERSION`].

pub mod container;
pub mod error;
pub mod frame;
pub mod messages;
pub mod mount;
pub mod network;
pub mod policy;

pub use container::{
    check_container_id, CgroupCpu, CgroupIoDevice, CgroupMemory, CgroupPids, ContainerInfo,
    ContainerStats, ContainerStatus, CreateContainerRequest, ExecRequest, MAX_CONTAINER_ID,
};
pub use error::{AgentError, ErrorKind, FrameError};
pub use frame::{encode_frame, FrameDecoder};
pub use messages::*;
pub use mount::{check_path, FsType, MountOption, MountRequest};
pub use network::{IpNet, NetInterface, NetRoute, NetworkConfig};
pub use policy::{CallPolicy, CALL_POLICY_PARAM};

/// Version of the agent protocol; both ends must agree exactly.
pub const PROTOCOL_VERSION: u32 = 2;

/// The vsock port the agent listens on in the guest.
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Largest frame payload either side sends or accepts, in bytes.
pub const MAX_FRAME_SIZE: usize = 1 << 20;

/// Requests that may be in flight on one control connection.
pub const MAX_IN_FLIGHT: usize = 1024;

/// How long the agent waits for a connection's hello frame.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;

/// Most ports a `listening_ports` request or reply carries.
pub const MAX_LISTENING_PORTS: usize = 256;

/// Longest a `listening_ports` call may wait for a change, in milliseconds.
pub const MAX_PORTS_WAIT_MS: u32 = 60_000;
/// Least entropy a `set_identity` brings (bytes): the CRNG's 256-bit key.
pub const MIN_IDENTITY_ENTROPY: usize = 32;
/// Most entropy a `set_identity` brings (bytes).
pub const MAX_IDENTITY_ENTROPY: usize = 512;
/// Longest hostname (the kernel's `__NEW_UTS_LEN`).
pub const MAX_HOSTNAME: usize = 64;

/// Limits on a spawn request (beyond the frame size).
pub const MAX_ARGV: usize = 4096;
/// Most environment entries in a spawn request.
pub const MAX_ENV: usize = 4096;
/// Most supplementary groups in a spawn request.
pub const MAX_GROUPS: usize = 64;
