//! Container calls: OCI bundles run by the agent with youki's libcontainer.
//!
//! The host prepares a bundle in the sandbox's share (a `config.json` whose paths are the
//! guest's, and the rootfs) and names it by its guest path. The agent creates the container
//! (its init process is held before the user program runs, as `runc create` leaves it), starts
//! it, execs further processes in it, and so on. The container's init and every exec are
//! ordinary agent processes ([`ProcessId`]): their streams, `wait`, `resize_terminal`,
//! `close_stdin` and `release` work as for spawned processes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{AgentError, ErrorKind};
use crate::messages::{ExitStatus, ProcessId, StdioSpec};

/// Longest container id.
pub const MAX_CONTAINER_ID: usize = 128;

/// Checks a container id: what runc and libcontainer accept, 1 to [`MAX_CONTAINER_ID`]
/// characters of `[A-Za-z0-9_+.-]`, not `.` or `..` (it names directories on both sides). The
/// host's runtime checks sandbox and container ids with this very function before it starts
/// anything, so a name the host accepts is one the agent accepts.
pub fn check_container_id(id: &str) -> Result<(), AgentError> {
    let bad = |why: &str| {
        Err(AgentError::new(
            ErrorKind::InvalidArgument,
            format!("invalid container id {id:?}: {why}"),
        ))
    };
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > MAX_CONTAINER_ID {
        return bad(&format!("it is longer than {MAX_CONTAINER_ID} characters"));
    }
    if id == "." || id == ".." {
        return bad("it is . or ..");
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'.' | b'-'))
    {
        return bad("only letters, digits and _ + - . are allowed");
    }
    Ok(())
}

/// Create a container from a bundle (reply: [`crate::Response::Spawned`] with the init process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateContainerRequest {
    pub id: String,
    /// Absolute guest path of the bundle directory (holding `config.json`).
    pub bundle: String,
    /// Pipes, or a terminal when the spec's `process.terminal` is true (the two must agree).
    #[serde(default)]
    pub stdio: StdioSpec,
}

/// Start another process in a running container (reply: [`crate::Response::Spawned`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    pub id: String,
    /// The OCI runtime spec's `process` object.
    pub process: Value,
    /// Must be a terminal exactly when `process.terminal` is true.
    #[serde(default)]
    pub stdio: StdioSpec,
}

/// A container's state as runc names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerStatus {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl ContainerStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            ContainerStatus::Creating => "creating",
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Paused => "paused",
            ContainerStatus::Stopped => "stopped",
        }
    }
}

/// Reply to `container_state`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub status: ContainerStatus,
    /// The init process: the agent's handle and its guest pid.
    pub process: ProcessId,
    pub pid: i32,
    /// How init ended, once it has.
    #[serde(default)]
    pub exit: Option<ExitStatus>,
    /// The guest's OOM killer killed a process of this container (its cgroup's `oom_kill`
    /// count is non-zero).
    #[serde(default)]
    pub oom_killed: bool,
}

/// cgroup v2 memory figures, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CgroupMemory {
    /// `memory.current`.
    pub usage: u64,
    /// `memory.max` (`None`: unlimited).
    pub limit: Option<u64>,
    /// `memory.peak` when the kernel has it, else the current usage.
    pub max_usage: u64,
    pub swap_usage: u64,
    pub swap_limit: Option<u64>,
    /// From `memory.stat`.
    pub anon: u64,
    pub file: u64,
    pub kernel_stack: u64,
    pub slab: u64,
    pub sock: u64,
    pub shmem: u64,
    pub file_mapped: u64,
    pub file_dirty: u64,
    pub file_writeback: u64,
    pub pgfault: u64,
    pub pgmajfault: u64,
    pub inactive_anon: u64,
    pub active_anon: u64,
    pub inactive_file: u64,
    pub active_file: u64,
    pub unevictable: u64,
    /// From `memory.events`.
    pub oom: u64,
    pub oom_kill: u64,
}

/// cgroup v2 `cpu.stat`, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CgroupCpu {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

/// cgroup v2 `pids.current` / `pids.max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CgroupPids {
    pub current: u64,
    /// `None`: unlimited.
    pub limit: Option<u64>,
}

/// One device's line of `io.stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct CgroupIoDevice {
    pub major: u64,
    pub minor: u64,
    pub rbytes: u64,
    pub wbytes: u64,
    pub rios: u64,
    pub wios: u64,
}

/// Reply to `container_stats`: the container's cgroup in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ContainerStats {
    pub memory: CgroupMemory,
    pub cpu: CgroupCpu,
    pub pids: CgroupPids,
    pub io: Vec<CgroupIoDevice>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids() {
        for ok in [
            "a",
            "abc-123_x.y+z",
            ".x",
            "-x",
            &"f".repeat(64),
            &"a".repeat(128),
        ] {
            assert!(check_container_id(ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("a/b", "only letters"),
            ("..", ". or .."),
            (".", ". or .."),
            ("a b", "only letters"),
            ("é", "only letters"),
            (&"a".repeat(129) as &str, "longer"),
        ] {
            let e = check_container_id(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument);
            assert!(e.message.contains(why), "{bad}: {}", e.message);
        }
    }
}
