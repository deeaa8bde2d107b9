//! The agent's processes: the table, the reaper, and the state each process's streams are in.
//!
//! Process tree and waiting: the agent is the only one that waits. One reaper task
//! ([`Processes::reap`], woken by SIGCHLD) calls `waitpid(-1, WNOHANG)` until nothing is left
//! and hands each status to the process it belongs to; statuses of processes the agent did not
//! spawn (orphans re-parented to PID 1, or to the agent as child subreaper in host mode) are
//! just collected. Spawning forks with the table lock held, and the reaper takes the same lock
//! before `waitpid`, so a child's status can never arrive before its entry exists; `signal`
//! also holds it, so a pid cannot be reaped (and reused) between the check and `kill`.
//!
//! Lock order: the table, then a process's state. Never the other way round.

pub mod spawn;
pub mod streams;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use hull_agent_protocol::{
    AgentError, ErrorKind, ExitStatus, ProcessId, ProcessInfo, ProcessState, SpawnRequest,
    StdStream,
};
use nix::errno::Errno;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;

pub use spawn::ParentEnds;

/// A non-blocking descriptor registered with the runtime (pipe end or terminal master).
pub type Fd = Arc<AsyncFd<OwnedFd>>;

use crate::locked as lock;

/// Where an output stream (stdout/stderr) is.
pub(crate) enum Output {
    /// Not a pipe (the reason is the error a host gets when it tries to attach).
    NotPiped(&'static str),
    /// The agent holds the read end; nobody is attached.
    Held(Fd),
    /// A stream connection is copying it.
    Attached,
    /// Drained to end-of-file; the read end is closed.
    Eof,
}

/// Where stdin is.
pub(crate) enum StdinSlot {
    NotPiped(&'static str),
    /// The agent holds the write end (or the terminal master); nobody is attached.
    Idle(Fd),
    /// A stream connection owns the write end.
    Attached,
    /// Closed: the process has seen end-of-file.
    Closed,
}

/// When stdin is to be closed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum CloseAt {
    Never,
    /// Once this many stream bytes have been written into the pipe.
    AfterBytes(u64),
    Now,
}

pub(crate) struct State {
    pub exit: Option<ExitStatus>,
    pub waited: bool,
    pub released: bool,
    pub stdin: StdinSlot,
    /// Stream bytes written into stdin so far.
    pub stdin_written: u64,
    pub close_stdin: CloseAt,
    pub stdout: Output,
    pub stderr: Output,
}

impl State {
    fn output(&mut self, s: StdStream) -> &mut Output {
        match s {
            StdStream::Stderr => &mut self.stderr,
            _ => &mut self.stdout,
        }
    }

    /// Nothing is left for the host to collect.
    fn collectable(&self) -> bool {
        let done = |o: &Output| matches!(o, Output::NotPiped(_) | Output::Eof);
        self.exit.is_some() && self.waited && done(&self.stdout) && done(&self.stderr)
    }

    /// Whether stdin should be closed now.
    pub fn stdin_due(&self) -> bool {
        match self.close_stdin {
            CloseAt::Never => false,
            CloseAt::Now => true,
            CloseAt::AfterBytes(n) => self.stdin_written >= n,
        }
    }
}

pub struct Process {
    pub id: ProcessId,
    pub pid: i32,
    pub argv: Vec<String>,
    pub terminal: bool,
    /// The terminal's master side, for resizing.
    pub master: Option<Fd>,
    pub(crate) state: Mutex<State>,
    /// Woken on every state change (exit, stream attach/detach/EOF, stdin progress, release).
    pub(crate) changed: Notify,
}

impl Process {
    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(crate) fn notify(&self) {
        self.changed.notify_waiters();
    }

    fn info(&self) -> ProcessInfo {
        let st = self.state();
        ProcessInfo {
            process: self.id,
            pid: self.pid,
            argv: self.argv.clone(),
            terminal: self.terminal,
            state: match st.exit {
                None => ProcessState::Running,
                Some(status) => ProcessState::Exited { status },
            },
        }
    }

    /// Runs `check` on the state after every change until it returns `Some`.
    pub(crate) async fn wait_for<T>(&self, mut check: impl FnMut(&mut State) -> Option<T>) -> T {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = check(&mut self.state()) {
                return v;
            }
            notified.await;
        }
    }
}

#[derive(Default)]
struct Table {
    by_id: BTreeMap<ProcessId, Arc<Process>>,
    /// Running processes by pid, for the reaper.
    by_pid: HashMap<i32, Arc<Process>>,
    /// Statuses of children nobody had registered when they were reaped, newest last: a
    /// container's init or exec is forked by libcontainer and [`Processes::adopt`]ed once its
    /// pid is known, which may be after it exited. Bounded in size and age.
    unclaimed: VecDeque<(i32, ExitStatus, Instant)>,
}

/// Most unclaimed statuses kept.
const MAX_UNCLAIMED: usize = 1024;
/// How long an unclaimed status is kept (pids are not reused that fast).
const UNCLAIMED_FOR: Duration = Duration::from_secs(60);

impl Table {
    fn keep_unclaimed(&mut self, pid: i32, status: ExitStatus) {
        let now = Instant::now();
        while let Some((_, _, at)) = self.unclaimed.front() {
            if self.unclaimed.len() < MAX_UNCLAIMED && now.duration_since(*at) < UNCLAIMED_FOR {
                break;
            }
            self.unclaimed.pop_front();
        }
        self.unclaimed.push_back((pid, status, now));
    }

    fn take_unclaimed(&mut self, pid: i32) -> Option<ExitStatus> {
        let i = self.unclaimed.iter().rposition(|(p, _, _)| *p == pid)?;
        let (_, status, at) = self.unclaimed.remove(i)?;
        (at.elapsed() < UNCLAIMED_FOR).then_some(status)
    }
}

/// A process's stream slots, built from the agent's ends of its stdio.
struct Slots {
    stdin: StdinSlot,
    stdout: Output,
    stderr: Output,
    master: Option<Fd>,
}

impl Slots {
    fn new(ends: ParentEnds) -> Result<Slots, AgentError> {
        Ok(match ends {
            ParentEnds::Pipes {
                stdin,
                stdout,
                stderr,
            } => {
                let out = |fd: Option<OwnedFd>, what| -> Result<Output, AgentError> {
                    Ok(match fd {
                        Some(fd) => Output::Held(register(fd)?),
                        None => Output::NotPiped(what),
                    })
                };
                Slots {
                    stdin: match stdin {
                        Some(fd) => StdinSlot::Idle(register(fd)?),
                        None => StdinSlot::NotPiped("stdin was redirected from /dev/null"),
                    },
                    stdout: out(stdout, "stdout was redirected to /dev/null")?,
                    stderr: out(stderr, "stderr was redirected to /dev/null")?,
                    master: None,
                }
            }
            ParentEnds::Terminal { master } => {
                let master = register(master)?;
                Slots {
                    stdin: StdinSlot::Idle(master.clone()),
                    stdout: Output::Held(master.clone()),
                    stderr: Output::NotPiped(
                        "the process has a terminal: its stderr is part of stdout",
                    ),
                    master: Some(master),
                }
            }
        })
    }
}

#[derive(Default)]
pub struct Processes {
    table: Mutex<Table>,
    next_id: AtomicU64,
}

fn unknown(id: ProcessId) -> AgentError {
    AgentError::new(
        ErrorKind::UnknownProcess,
        format!("no {id}: it was never spawned, or it exited and was released"),
    )
}

fn register(fd: OwnedFd) -> Result<Fd, AgentError> {
    // SAFETY: an OwnedFd is a valid open descriptor, and AsyncFd owns it from here on: it stays
    // open and the same file until the AsyncFd (which deregisters first) drops it.
    unsafe { AsyncFd::register(fd) }
        .map(Arc::new)
        .map_err(|e| AgentError::new(ErrorKind::Io, format!("register descriptor: {e}")))
}

impl Processes {
    pub fn new() -> Processes {
        Processes::default()
    }

    pub fn get(&self, id: ProcessId) -> Result<Arc<Process>, AgentError> {
        lock(&self.table)
            .by_id
            .get(&id)
            .cloned()
            .ok_or_else(|| unknown(id))
    }

    /// Starts a process (see the protocol docs for what is checked first).
    pub fn spawn(&self, req: &SpawnRequest) -> Result<Arc<Process>, AgentError> {
        let (child_ends, parent_ends) = spawn::open_stdio(&req.stdio)?;
        self.spawn_with(req, child_ends, parent_ends)
    }

    /// Starts a process on stdio the caller opened: `child_ends` become its fds 0-2,
    /// `parent_ends` are what the agent keeps (streams). The container helper gets the
    /// container's ends this way and keeps none.
    pub fn spawn_with(
        &self,
        req: &SpawnRequest,
        child_ends: spawn::ChildEnds,
        parent_ends: ParentEnds,
    ) -> Result<Arc<Process>, AgentError> {
        let prepared = spawn::prepare(req)?;
        // Register the descriptors before forking, so a failure here leaves no process behind.
        let slots = Slots::new(parent_ends)?;
        let mut table = lock(&self.table);
        let pid = spawn::fork_exec(&prepared, &child_ends)?;
        drop(child_ends);
        let proc = self.insert(&mut table, pid, req.argv.clone(), slots);
        drop(table);
        tracing::info!(
            "spawned {} (pid {pid}{}): {:?}",
            proc.id,
            if proc.terminal { ", terminal" } else { "" },
            req.argv
        );
        Ok(proc)
    }

    /// Takes on a child of the agent that someone else forked (a container's init or exec,
    /// which libcontainer creates as the agent's children): from here on it is an agent
    /// process with these streams. If it already exited, the reaper kept its status.
    pub fn adopt(
        &self,
        pid: i32,
        argv: Vec<String>,
        parent_ends: ParentEnds,
    ) -> Result<Arc<Process>, AgentError> {
        let slots = Slots::new(parent_ends)?;
        let mut table = lock(&self.table);
        let early = table.take_unclaimed(pid);
        let proc = self.insert(&mut table, pid, argv, slots);
        if let Some(status) = early {
            table.by_pid.remove(&pid);
            proc.state().exit = Some(status);
        }
        drop(table);
        tracing::info!("adopted {} (pid {pid}): {:?}", proc.id, proc.argv);
        proc.notify();
        Ok(proc)
    }

    fn insert(&self, table: &mut Table, pid: i32, argv: Vec<String>, s: Slots) -> Arc<Process> {
        let id = ProcessId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1);
        let proc = Arc::new(Process {
            id,
            pid,
            argv,
            terminal: s.master.is_some(),
            master: s.master,
            state: Mutex::new(State {
                exit: None,
                waited: false,
                released: false,
                stdin: s.stdin,
                stdin_written: 0,
                close_stdin: CloseAt::Never,
                stdout: s.stdout,
                stderr: s.stderr,
            }),
            changed: Notify::new(),
        });
        table.by_id.insert(id, proc.clone());
        table.by_pid.insert(pid, proc.clone());
        proc
    }

    /// Signals a process the caller holds (a container's init after its entry may have been
    /// released), unless it has exited; the table lock keeps the reaper out meanwhile.
    pub fn signal_process(&self, proc: &Process, sig: Signal) -> Result<(), AgentError> {
        let _table = lock(&self.table);
        if let Some(status) = proc.state().exit {
            return Err(AgentError::new(
                ErrorKind::ProcessExited,
                format!("{} has already exited ({status:?})", proc.id),
            ));
        }
        nix::sys::signal::kill(Pid::from_raw(proc.pid), sig).map_err(|e| {
            AgentError::new(
                ErrorKind::Io,
                format!("kill {sig} to {} (pid {}): {e}", proc.id, proc.pid),
            )
        })
    }

    /// Collects every exited child (called on SIGCHLD).
    pub fn reap(&self) {
        let table = &mut *lock(&self.table);
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Exited { code }),
                Ok(WaitStatus::Signaled(pid, sig, core_dumped)) => (
                    pid,
                    ExitStatus::Signaled {
                        signal: sig as i32,
                        core_dumped,
                    },
                ),
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!("waitpid: {e}");
                    return;
                }
            };
            match table.by_pid.remove(&pid.as_raw()) {
                Some(proc) => {
                    tracing::info!("{} (pid {pid}) ended: {status:?}", proc.id);
                    proc.state().exit = Some(status);
                    proc.notify();
                }
                None => {
                    tracing::debug!("reaped pid {pid} (not registered): {status:?}");
                    table.keep_unclaimed(pid.as_raw(), status);
                }
            }
        }
    }

    /// Sends a signal to a running process (or its process group).
    pub fn signal(&self, id: ProcessId, signal: i32, group: bool) -> Result<(), AgentError> {
        let sig = Signal::try_from(signal).map_err(|_| {
            AgentError::new(
                ErrorKind::InvalidArgument,
                format!("{signal} is not a valid signal number"),
            )
        })?;
        // The table lock keeps the reaper out: the pid cannot be reaped and reused meanwhile.
        let table = lock(&self.table);
        let proc = table.by_id.get(&id).ok_or_else(|| unknown(id))?;
        if let Some(status) = proc.state().exit {
            return Err(AgentError::new(
                ErrorKind::ProcessExited,
                format!("{id} has already exited ({status:?})"),
            ));
        }
        let target = if group {
            Pid::from_raw(-proc.pid)
        } else {
            Pid::from_raw(proc.pid)
        };
        nix::sys::signal::kill(target, sig).map_err(|e| {
            AgentError::new(
                ErrorKind::Io,
                format!("kill {sig} to {id} (pid {}): {e}", proc.pid),
            )
        })
    }

    /// Waits for the exit, then for attached output streams to reach end-of-file (see the
    /// protocol docs), and marks the process waited.
    pub async fn wait(&self, id: ProcessId) -> Result<ExitStatus, AgentError> {
        let proc = self.get(id)?;
        let status = proc
            .wait_for(|st| {
                let attached = |o: &Output| matches!(o, Output::Attached);
                match st.exit {
                    Some(s) if !attached(&st.stdout) && !attached(&st.stderr) => {
                        st.waited = true;
                        Some(s)
                    }
                    _ => None,
                }
            })
            .await;
        self.release_if_collected(&proc);
        Ok(status)
    }

    /// Removes the entry once nothing is left to collect.
    pub(crate) fn release_if_collected(&self, proc: &Arc<Process>) {
        let mut table = lock(&self.table);
        let done = proc.state().collectable();
        if done && table.by_id.remove(&proc.id).is_some() {
            proc.state().released = true;
            proc.notify();
            tracing::debug!("released {}", proc.id);
        }
    }

    /// `release`: forgets an exited process, dropping unread output.
    pub fn release(&self, id: ProcessId) -> Result<(), AgentError> {
        let mut table = lock(&self.table);
        let proc = table.by_id.get(&id).ok_or_else(|| unknown(id))?.clone();
        {
            let mut st = proc.state();
            if st.exit.is_none() {
                return Err(AgentError::new(
                    ErrorKind::ProcessRunning,
                    format!("{id} is still running: signal it and wait first"),
                ));
            }
            st.released = true;
            // Drop what the agent holds now; attached streams end on the notification.
            for s in [StdStream::Stdout, StdStream::Stderr] {
                if let Output::Held(_) = st.output(s) {
                    *st.output(s) = Output::Eof;
                }
            }
            if let StdinSlot::Idle(_) = st.stdin {
                st.stdin = StdinSlot::Closed;
            }
        }
        table.by_id.remove(&id);
        proc.notify();
        Ok(())
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        lock(&self.table).by_id.values().map(|p| p.info()).collect()
    }

    pub fn running(&self) -> u32 {
        lock(&self.table).by_pid.len() as u32
    }

    /// Sends `sig` to every running process's group (host mode shutdown).
    pub fn signal_all(&self, sig: Signal) {
        let table = lock(&self.table);
        for p in table.by_pid.values() {
            let _ = nix::sys::signal::kill(Pid::from_raw(-p.pid), sig);
            let _ = nix::sys::signal::kill(Pid::from_raw(p.pid), sig);
        }
    }

    /// `close_stdin`: see the protocol docs. Answers once the pipe is closed.
    pub async fn close_stdin(&self, id: ProcessId, after: Option<u64>) -> Result<(), AgentError> {
        let proc = self.get(id)?;
        {
            let mut st = proc.state();
            if proc.terminal {
                return Err(AgentError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{id} has a terminal: its input cannot be closed separately (send the \
                         terminal's EOF character, or a signal)"
                    ),
                ));
            }
            if let StdinSlot::NotPiped(why) = st.stdin {
                return Err(AgentError::new(
                    ErrorKind::InvalidArgument,
                    format!("{id}: {why}"),
                ));
            }
            st.close_stdin = match after {
                None => CloseAt::Now,
                Some(n) => CloseAt::AfterBytes(n),
            };
        }
        proc.notify();
        proc.wait_for(|st| match st.stdin {
            StdinSlot::Closed => Some(()),
            StdinSlot::Idle(_) if st.stdin_due() || st.exit.is_some() || st.released => {
                st.stdin = StdinSlot::Closed;
                Some(())
            }
            _ => None,
        })
        .await;
        proc.notify();
        Ok(())
    }

    /// `resize_terminal`.
    pub fn resize(&self, id: ProcessId, rows: u16, cols: u16) -> Result<(), AgentError> {
        let proc = self.get(id)?;
        if !proc.terminal {
            return Err(AgentError::new(
                ErrorKind::InvalidArgument,
                format!("{id} was not spawned with a terminal"),
            ));
        }
        if let Some(status) = proc.state().exit {
            return Err(AgentError::new(
                ErrorKind::ProcessExited,
                format!("{id} has already exited ({status:?})"),
            ));
        }
        let fd = proc.master.as_ref().ok_or_else(|| {
            AgentError::new(ErrorKind::InvalidArgument, format!("{id} has no terminal"))
        })?;
        spawn::set_winsize(fd.as_ref(), rows, cols)
    }
}
