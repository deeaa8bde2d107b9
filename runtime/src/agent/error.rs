use std::time::Duration;

use hull_agent_protocol::{AgentError, ErrorKind, FrameError};

/// Errors of the agent client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be reached (missing, refused, ...).
    #[error("cannot connect to the agent at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    /// The VMM's hybrid vsock handshake failed.
    #[error("hybrid vsock handshake with {endpoint}: {reason}")]
    Handshake {
        endpoint: String,
        reason: String,
        /// The VMM closed the connection: nothing listens on the guest port (yet).
        not_listening: bool,
    },
    /// The agent did not become reachable before the deadline.
    #[error("the agent at {endpoint} did not answer within {waited:?}; last error: {last}")]
    NotReady {
        endpoint: String,
        waited: Duration,
        last: Box<Error>,
    },
    /// The agent answered with an error.
    #[error("agent: {0}")]
    Agent(#[from] AgentError),
    /// The agent sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("{what} timed out after {after:?}")]
    Timeout { what: String, after: Duration },
    /// The control connection is gone (the agent exited, the VM stopped).
    #[error("the connection to the agent is closed")]
    Closed,
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Whether this failure to connect means "the agent is not up yet" (worth retrying).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::BrokenPipe
            ),
            Error::Handshake { not_listening, .. } => *not_listening,
            Error::Timeout { .. } => true,
            _ => false,
        }
    }

    /// The agent's error kind, if the agent answered with an error.
    pub fn agent_kind(&self) -> Option<ErrorKind> {
        match self {
            Error::Agent(e) => Some(e.kind),
            _ => None,
        }
    }
}
