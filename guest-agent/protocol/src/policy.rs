//! Which calls an agent serves: a fixed allowlist per kind of caller (Kata's agent policy is the
//! model; a fixed list is enough here), so that a leaked agent socket is not a root shell in the
//! guest.
//!
//! The host picks the policy when it boots the VM, on the guest kernel's command line
//! ([`CALL_POLICY_PARAM`]`=sandbox`); the agent reads it once at start and refuses every other
//! call with [`ErrorKind::NotAllowed`]. A value the agent does not know is taken as the strictest
//! policy.

use crate::error::{AgentError, ErrorKind};
use crate::messages::Request;

/// The kernel command line parameter that names the policy.
pub const CALL_POLICY_PARAM: &str = "hull.agent_calls";

/// Which calls an agent serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CallPolicy {
    /// Every call of the protocol (tests, debugging; an agent started without a policy).
    #[default]
    All,
    /// What a sandbox's front ends need (the `hull` CLI, the containerd shim): containers and
    /// their processes, the share's mount, the network, the clock, stats, shutdown. Refused:
    /// `spawn` (a process outside every container, as root in the guest), `release`,
    /// `list_processes` and `unmount` (nothing a front end asks).
    Sandbox,
}

impl CallPolicy {
    /// The policy a command line value names; an unknown value is [`CallPolicy::Sandbox`]
    /// (fail closed).
    pub fn from_param(value: Option<&str>) -> CallPolicy {
        match value {
            None | Some("all") => CallPolicy::All,
            _ => CallPolicy::Sandbox,
        }
    }

    /// Its command line value.
    pub fn as_param(self) -> &'static str {
        match self {
            CallPolicy::All => "all",
            CallPolicy::Sandbox => "sandbox",
        }
    }

    /// Whether `call` is served; an error naming the call and the policy if not.
    pub fn check(self, call: &Request) -> Result<(), AgentError> {
        let refused = match self {
            CallPolicy::All => false,
            CallPolicy::Sandbox => matches!(
                call,
                Request::Spawn(_)
                    | Request::Release { .. }
                    | Request::ListProcesses
                    | Request::Unmount { .. }
            ),
        };
        if refused {
            return Err(AgentError::new(
                ErrorKind::NotAllowed,
                format!(
                    "{} is not allowed by this sandbox's call policy ({CALL_POLICY_PARAM}={})",
                    call.type_name(),
                    self.as_param()
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::messages::{ProcessId, SpawnRequest};

    #[test]
    fn the_sandbox_policy_refuses_what_no_front_end_asks() {
        let p = CallPolicy::Sandbox;
        for refused in [
            Request::Spawn(SpawnRequest::new(["/bin/sh"])),
            Request::Release {
                process: ProcessId(1),
            },
            Request::ListProcesses,
            Request::Unmount {
                target: "/run/hull/shared".into(),
                lazy: true,
            },
        ] {
            let e = p.check(&refused).unwrap_err();
            assert_eq!(e.kind, ErrorKind::NotAllowed);
            assert!(
                e.message.contains("hull.agent_calls=sandbox"),
                "{}",
                e.message
            );
            CallPolicy::All.check(&refused).unwrap();
        }
        for served in [
            Request::Health,
            Request::Wait {
                process: ProcessId(1),
            },
            Request::StartContainer { id: "c".into() },
            Request::Shutdown { grace_ms: None },
        ] {
            p.check(&served).unwrap();
        }
        assert_eq!(CallPolicy::from_param(None), CallPolicy::All);
        assert_eq!(CallPolicy::from_param(Some("all")), CallPolicy::All);
        assert_eq!(CallPolicy::from_param(Some("sandbox")), CallPolicy::Sandbox);
        assert_eq!(CallPolicy::from_param(Some("typo")), CallPolicy::Sandbox);
    }
}
