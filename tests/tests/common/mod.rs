//! Helpers shared by the VM tests that drive hull-agent through hull-runtime's client (they need
//! the client and tokio, which only the test targets depend on, so they live here and not in the
//! hull-tests library).

use std::time::Duration;

use hull_agent_protocol::{ExitStatus, SpawnRequest};
use hull_runtime::agent::AgentClient;

/// Longest a single agent call may take (everything runs under emulation in the test host).
pub const CALL_LIMIT: Duration = Duration::from_secs(300);

/// Runs a process through the agent to its end (at most `CALL_LIMIT`) and returns its status,
/// stdout and stderr.
pub async fn run(c: &AgentClient, req: SpawnRequest) -> (ExitStatus, String, String) {
    let out = tokio::time::timeout(CALL_LIMIT, c.run(req, None))
        .await
        .expect("process finishes")
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
