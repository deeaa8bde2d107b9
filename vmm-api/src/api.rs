//! The control API of hull-vmm: JSON over a Unix socket, one request per line, one response line per
//! request, any number of requests per connection (`socat - UNIX-CONNECT:api.sock` works).
//!
//! Requests (`action` selects the operation; unknown fields are errors):
//! ```text
//! {"action":"pause"}       park every vCPU; returns once they are all parked
//! {"action":"resume"}      let them run again
//! {"action":"shutdown"}    ask the guest to stop: inject Ctrl-Alt-Del through the i8042
//!                          keyboard, and stop the VM if the guest has not ended within
//!                          timeout_ms (default 10000; 0 = stop now). Optional field:
//!                          {"action":"shutdown","timeout_ms":5000}
//! {"action":"stats"}       vCPUs, memory, uptime, run state and VM exit counts
//! {"action":"snapshot"}    a template run only (`snapshot_to` in its configuration): pause,
//!                          write the VM's state and memory there, and stop the VM (exit
//!                          status 0, "snapshot written")
//! ```
//! Responses: `{"ok":true,...}` or `{"ok":false,"error":"..."}`.
//!
//! Why Ctrl-Alt-Del: the guest has no ACPI, so there is no power button. The kernel turns
//! Ctrl-Alt-Del into an immediate restart, or, when PID 1 has set `reboot(RB_DISABLE_CAD)` (as
//! an init should), into SIGINT for PID 1, which can then shut down cleanly and `reboot()`.
//! A guest that ignores it is stopped when the grace period expires; the process exits 0 either
//! way and says on stderr which one happened.

use serde::{Deserialize, Serialize};

/// Longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// Default grace period of a shutdown request.
pub const DEFAULT_SHUTDOWN_TIMEOUT_MS: u64 = 10_000;
/// Longest grace period accepted.
pub const MAX_SHUTDOWN_TIMEOUT_MS: u64 = 600_000;

/// Whether the vCPUs run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    Paused,
    Stopping,
}

/// A request.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ApiRequest {
    // Struct variants (not unit ones) so that deny_unknown_fields applies to them too.
    Pause {},
    Resume {},
    Shutdown {
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    Stats {},
    Snapshot {},
    /// Test hook: the event loop makes a system call outside its seccomp allowlist (hull-vmm
    /// then ends with exit status 5). Refused unless the VM was configured with `test_hooks`.
    SeccompProbe {},
}

/// VM exit counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitCounts {
    pub io_in: u64,
    pub io_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub other: u64,
}

/// What `stats` returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmStats {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub uptime_ms: u64,
    pub state: RunState,
    pub exits: ExitCounts,
}

/// A response.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiResponse {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<RunState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<VmStats>,
}

impl ApiResponse {
    pub fn ok() -> ApiResponse {
        ApiResponse {
            ok: true,
            ..Default::default()
        }
    }
    pub fn error(e: impl Into<String>) -> ApiResponse {
        ApiResponse {
            ok: false,
            error: Some(e.into()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form() {
        let r: ApiRequest =
            serde_json::from_str(r#"{"action":"shutdown","timeout_ms":5}"#).unwrap();
        assert_eq!(
            r,
            ApiRequest::Shutdown {
                timeout_ms: Some(5)
            }
        );
        assert!(serde_json::from_str::<ApiRequest>(r#"{"action":"pause","x":1}"#).is_err());
        assert_eq!(
            serde_json::to_string(&ApiRequest::Stats {}).unwrap(),
            r#"{"action":"stats"}"#
        );
        let ok = ApiResponse {
            state: Some(RunState::Paused),
            ..ApiResponse::ok()
        };
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"ok":true,"state":"paused"}"#
        );
        let e: ApiResponse = serde_json::from_str(r#"{"ok":false,"error":"x"}"#).unwrap();
        assert_eq!(e, ApiResponse::error("x"));
    }
}
