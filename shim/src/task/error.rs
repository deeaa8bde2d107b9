//! The task model's errors: each carries the kind containerd tells apart (its errdefs) and a
//! message meant to be shown as it is. The ttrpc adapter maps the kind to a ttrpc status code.

/// What went wrong with a task operation.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// No such task, process or pod.
    #[error("{0}")]
    NotFound(String),
    /// A task, exec or pod with that id already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The task or process is not in a state that allows the call.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request (or the bundle it names) says something unusable.
    #[error("{0}")]
    InvalidArgument(String),
    /// Something hull does not do (checkpoints).
    #[error("{0}")]
    Unimplemented(String),
    /// Anything else: the VM, the agent, the host.
    #[error("{0}")]
    Internal(String),
}

/// The kind of a [`TaskError`], without its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Unimplemented,
    Internal,
}

impl TaskError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            TaskError::NotFound(_) => ErrorKind::NotFound,
            TaskError::AlreadyExists(_) => ErrorKind::AlreadyExists,
            TaskError::FailedPrecondition(_) => ErrorKind::FailedPrecondition,
            TaskError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            TaskError::Unimplemented(_) => ErrorKind::Unimplemented,
            TaskError::Internal(_) => ErrorKind::Internal,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            TaskError::NotFound(m)
            | TaskError::AlreadyExists(m)
            | TaskError::FailedPrecondition(m)
            | TaskError::InvalidArgument(m)
            | TaskError::Unimplemented(m)
            | TaskError::Internal(m) => m,
        }
    }

    /// The same kind, with `context: ` before the message.
    pub fn context(self, context: impl std::fmt::Display) -> TaskError {
        let m = |m: String| format!("{context}: {m}");
        match self {
            TaskError::NotFound(s) => TaskError::NotFound(m(s)),
            TaskError::AlreadyExists(s) => TaskError::AlreadyExists(m(s)),
            TaskError::FailedPrecondition(s) => TaskError::FailedPrecondition(m(s)),
            TaskError::InvalidArgument(s) => TaskError::InvalidArgument(m(s)),
            TaskError::Unimplemented(s) => TaskError::Unimplemented(m(s)),
            TaskError::Internal(s) => TaskError::Internal(m(s)),
        }
    }
}

pub type Result<T, E = TaskError> = std::result::Result<T, E>;
