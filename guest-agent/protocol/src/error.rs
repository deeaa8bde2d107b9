//! Errors: the ones the agent sends back ([`AgentError`]) and the framing ones ([`FrameError`]).

use serde::{Deserialize, Serialize};

/// What kind of failure an [`AgentError`] reports. Unknown kinds (from a newer agent) decode as
/// [`ErrorKind::Other`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorKind {
    /// The frame could not be decoded (bad JSON, missing id, empty, too large).
    BadFrame,
    /// The request type is not one this agent knows.
    UnknownRequest,
    /// A request field is invalid (relative path, empty argv, bad signal number, ...).
    InvalidArgument,
    /// No process with that id (never spawned, or already released).
    UnknownProcess,
    /// The process has already exited (signal, resize).
    ProcessExited,
    /// The process is still running (release).
    ProcessRunning,
    /// The frame was valid but not expected here (request before hello, second hello, ...).
    OutOfOrder,
    /// Host and agent speak different protocol versions.
    VersionMismatch,
    /// Too many requests in flight, or the stream is already attached.
    Busy,
    /// The call is not supported in this mode (e.g. setting the clock in host mode).
    Unsupported,
    /// A system call failed.
    Io,
    /// No container with that id in this sandbox.
    UnknownContainer,
    /// A container with that id already exists.
    ContainerExists,
    /// The container is not in a state that allows the call (start a running container,
    /// delete a running one without force, pause a stopped one, ...).
    WrongState,
    /// libcontainer refused or failed to create, start or exec (the message says why).
    ContainerFailed,
    /// The container's program does not exist (a shell would exit 127).
    ExecutableNotFound,
    /// The container's program exists but cannot be executed (a shell would exit 126).
    NotExecutable,
    /// The sandbox's call policy does not allow this call ([`crate::policy`]).
    NotAllowed,
    /// An error kind this side does not know.
    #[serde(other)]
    Other,
}

/// An error reply from the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct AgentError {
    pub kind: ErrorKind,
    pub message: String,
}

impl AgentError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> AgentError {
        AgentError {
            kind,
            message: message.into(),
        }
    }
}

/// Framing and decoding errors.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame (length 0)")]
    Empty,
    #[error("connection closed in the middle of a frame ({got} of {want} bytes received)")]
    Truncated { got: usize, want: usize },
    #[error("malformed frame payload: {0}")]
    Malformed(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl FrameError {
    /// The error reply the agent sends for this framing error.
    pub fn to_agent_error(&self) -> AgentError {
        AgentError::new(ErrorKind::BadFrame, self.to_string())
    }
}
