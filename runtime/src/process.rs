//! One container process (a container's init, or an exec'd process) as every front end drives
//! it: where its signals go, its terminal, its stdin's end, attaching its streams before it is
//! waited for, and how it ended ([`Exit`], with the one exit-code mapping).
//!
//! The `hull` CLI's pid-file process and the containerd shim keep only their sinks (the
//! caller's fds or a pty, containerd's FIFOs): what is done with the process is done here.
//!
//! Stdin's end, the same for both: with pipes, the bytes copied are counted and the agent's
//! `close_stdin` is called with that count once the source ends, so the process reads every
//! byte and then end-of-file (the close can never overtake data still in the stream). With a
//! terminal, the end of the caller's input does not hang up the guest terminal (as runc keeps
//! its pty): the process ends by its own input (the terminal's EOF character) or a signal.
//!
//! Terminal size, the same for both: the caller's own terminal when it has one (the CLI in the
//! foreground), else `process.consoleSize` of the spec, else [`DEFAULT_TERMINAL`].

use std::future::Future;
use std::time::SystemTime;

use hull_agent_protocol::{ExitStatus, ProcessId, StdStream};
use tokio::net::UnixStream;

use crate::agent::{AgentClient, Error as AgentError};

/// The size of a terminal nobody gave a size for: rows, columns.
pub const DEFAULT_TERMINAL: (u16, u16) = (24, 80);

/// The exit code of a process that can no longer be waited for because its VM or its container
/// is gone: SIGKILL's, which is what killing the VM does to it.
pub const KILLED_EXIT: u32 = 128 + libc::SIGKILL as u32;

/// The exit code a shell reports for a process: its code, or 128 + the signal that killed it.
/// Codes outside 0..=255 are cut to their low byte, as the kernel does.
pub fn exit_code(status: &ExitStatus) -> u32 {
    match status {
        ExitStatus::Exited { code } => (*code as u32) & 0xff,
        ExitStatus::Signaled { signal, .. } => 128 + ((*signal as u32) & 0x7f),
    }
}

/// The exit code a shell reports for a host process (a front end's own helper process, such as
/// the CLI's pid-file process, whose status is the container process's): [`exit_code`] of the
/// same status; 1 when the status says neither.
pub fn host_exit_code(status: std::process::ExitStatus) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => exit_code(&ExitStatus::Exited { code }),
        (None, Some(signal)) => exit_code(&ExitStatus::Signaled {
            signal,
            core_dumped: false,
        }),
        (None, None) => 1,
    }
}

/// How a container process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code ([`exit_code`]), [`KILLED_EXIT`] when the VM was gone.
    pub code: u32,
    /// When its end was seen.
    pub at: SystemTime,
    /// It could not be waited for: the VM, the agent or the container was gone.
    pub vm_gone: bool,
}

impl Exit {
    /// The end the agent reported.
    pub fn of(status: &ExitStatus) -> Exit {
        Exit {
            code: exit_code(status),
            at: SystemTime::now(),
            vm_gone: false,
        }
    }

    /// A process whose VM is gone: taken as killed.
    pub fn gone() -> Exit {
        Exit {
            code: KILLED_EXIT,
            at: SystemTime::now(),
            vm_gone: true,
        }
    }

    /// The code as a process exit status (0-255).
    pub fn code_u8(&self) -> u8 {
        (self.code & 0xff) as u8
    }
}

/// Where the signals of a process go: a container's init is signalled as the container (the
/// agent's `kill_container`, which knows the init's pid namespace), an exec'd process directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Init { container: String },
    Exec,
}

/// One container process of a sandbox, as the agent knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerProcess {
    /// The container it belongs to.
    pub container: String,
    /// The agent's handle.
    pub process: ProcessId,
    /// Init or exec.
    pub target: Target,
    /// It has a terminal (one output stream, no stdin end).
    pub terminal: bool,
}

/// A process's streams, opened before it is waited for (so no output is lost). With a
/// terminal, `stdout` carries the terminal's output and there is no `stderr`.
#[derive(Debug, Default)]
pub struct Streams {
    pub stdin: Option<UnixStream>,
    pub stdout: Option<UnixStream>,
    pub stderr: Option<UnixStream>,
}

/// Which streams a front end wants attached (containerd may give no FIFO for some).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Want {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
}

impl Want {
    pub const ALL: Want = Want {
        stdin: true,
        stdout: true,
        stderr: true,
    };
}

impl ContainerProcess {
    /// A container's init.
    pub fn init(container: &str, process: ProcessId, terminal: bool) -> ContainerProcess {
        ContainerProcess {
            container: container.to_string(),
            process,
            target: Target::Init {
                container: container.to_string(),
            },
            terminal,
        }
    }

    /// A process exec'd in `container`.
    pub fn exec(container: &str, process: ProcessId, terminal: bool) -> ContainerProcess {
        ContainerProcess {
            container: container.to_string(),
            process,
            target: Target::Exec,
            terminal,
        }
    }

    /// Sends `signal` where it goes ([`Target`]).
    pub async fn signal(&self, agent: &AgentClient, signal: i32) -> Result<(), AgentError> {
        match &self.target {
            Target::Init { container } => agent.kill_container(container, signal, false).await,
            Target::Exec => agent.signal(self.process, signal, false).await,
        }
    }

    /// Sets the guest terminal's size.
    pub async fn resize(
        &self,
        agent: &AgentClient,
        rows: u16,
        cols: u16,
    ) -> Result<(), AgentError> {
        agent.resize_terminal(self.process, rows, cols).await
    }

    /// The caller's input ended after `sent` bytes (see the module docs): with pipes the
    /// process gets end-of-file once it has read them all; with a terminal nothing is done.
    pub async fn input_ended(
        &self,
        agent: &AgentClient,
        sent: Option<u64>,
    ) -> Result<(), AgentError> {
        if self.terminal {
            return Ok(());
        }
        agent.close_stdin(self.process, sent).await
    }

    /// Opens the streams `want` asks for (stderr never with a terminal). Call before
    /// [`ContainerProcess::wait`].
    pub async fn attach(&self, agent: &AgentClient, want: Want) -> Result<Streams, AgentError> {
        let mut s = Streams::default();
        if want.stdout {
            s.stdout = Some(agent.open_stream(self.process, StdStream::Stdout).await?);
        }
        if want.stderr && !self.terminal {
            s.stderr = Some(agent.open_stream(self.process, StdStream::Stderr).await?);
        }
        if want.stdin {
            s.stdin = Some(agent.open_stream(self.process, StdStream::Stdin).await?);
        }
        Ok(s)
    }

    /// Waits for the process to end, but not past `vm_gone` (which resolves, with the reason,
    /// when the VM is known to be gone). A process that cannot be waited for any more is
    /// [`Exit::gone`], with the reason logged.
    pub async fn wait(&self, agent: &AgentClient, vm_gone: impl Future<Output = String>) -> Exit {
        let r = tokio::select! {
            r = agent.wait(self.process) => r.map_err(|e| format!("the agent's wait failed: {e}")),
            why = vm_gone => Err(why),
        };
        match r {
            Ok(s) => {
                tracing::debug!("{}: ended: {s:?}", self.name());
                Exit::of(&s)
            }
            Err(why) => {
                tracing::warn!(
                    "{}: taken as killed (exit {KILLED_EXIT}): {why}",
                    self.name()
                );
                Exit::gone()
            }
        }
    }

    /// "container C" or "process P of container C", for messages.
    pub fn name(&self) -> String {
        match self.target {
            Target::Init { .. } => format!("container {}", self.container),
            Target::Exec => format!("process {} of container {}", self.process.0, self.container),
        }
    }
}

/// The initial size of a process's terminal: the caller's own terminal's (`host`), else the
/// spec's `process.consoleSize`, else [`DEFAULT_TERMINAL`]. A zero in any is no size.
pub fn terminal_size(
    host: Option<(u16, u16)>,
    process: Option<&oci_spec::runtime::Process>,
) -> (u16, u16) {
    let valid = |s: &(u16, u16)| s.0 > 0 && s.1 > 0;
    host.filter(valid)
        .or_else(|| {
            process.and_then(|p| p.console_size()).map(|b| {
                let clamp = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
                (clamp(b.height()), clamp(b.width()))
            })
        })
        .filter(valid)
        .unwrap_or(DEFAULT_TERMINAL)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_as_a_shell_reports_them() {
        let exited = |code| ExitStatus::Exited { code };
        let signaled = |signal| ExitStatus::Signaled {
            signal,
            core_dumped: false,
        };
        assert_eq!(exit_code(&exited(0)), 0);
        assert_eq!(exit_code(&exited(3)), 3);
        assert_eq!(exit_code(&exited(255)), 255);
        assert_eq!(exit_code(&exited(256)), 0);
        assert_eq!(exit_code(&exited(-1)), 255);
        assert_eq!(exit_code(&signaled(9)), 137);
        assert_eq!(exit_code(&signaled(15)), 143);
        assert_eq!(exit_code(&signaled(2)), 130);
        assert_eq!(KILLED_EXIT, 137);
        let g = Exit::gone();
        assert!(g.vm_gone);
        assert_eq!(g.code_u8(), 137);
        assert!(!Exit::of(&exited(1)).vm_gone);
    }

    #[test]
    fn terminal_sizes() {
        let spec =
            |json: &str| -> oci_spec::runtime::Process { serde_json::from_str(json).unwrap() };
        let sized = spec(
            r#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},"consoleSize":{"height":40,"width":120}}"#,
        );
        let zero = spec(
            r#"{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0},"consoleSize":{"height":0,"width":0}}"#,
        );
        assert_eq!(terminal_size(None, None), DEFAULT_TERMINAL);
        assert_eq!(terminal_size(None, Some(&sized)), (40, 120));
        assert_eq!(terminal_size(None, Some(&zero)), DEFAULT_TERMINAL);
        assert_eq!(terminal_size(Some((50, 200)), Some(&sized)), (50, 200));
        assert_eq!(terminal_size(Some((0, 0)), Some(&sized)), (40, 120));
    }

    #[test]
    fn names_and_targets() {
        let i = ContainerProcess::init("c1", ProcessId(4), false);
        assert_eq!(
            i.target,
            Target::Init {
                container: "c1".into()
            }
        );
        assert_eq!(i.name(), "container c1");
        let e = ContainerProcess::exec("c1", ProcessId(9), true);
        assert_eq!(e.target, Target::Exec);
        assert_eq!(e.name(), "process 9 of container c1");
    }
}
