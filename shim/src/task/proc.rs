//! One process of a task as the model keeps it: a container's init or one of its execs, its
//! state machine (created, running, paused, stopped), its exit, and what its waiter, Start and
//! CloseIO share.

use std::sync::{Arc, Mutex, MutexGuard};

use hull_runtime::process::{ContainerProcess, Exit};
use tokio::sync::{watch, Notify};

use super::error::{Result, TaskError};
use crate::stdio::StdioPaths;

/// A process's state, as containerd knows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Created, not started (an init held before its program, an exec not run yet).
    Created,
    Running,
    /// Its container is paused.
    Paused,
    /// It has ended: final.
    Stopped,
}

/// What State answers about a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessState {
    pub bundle: std::path::PathBuf,
    pub pid: u32,
    pub status: Status,
    pub stdio: StdioPaths,
    pub exit: Option<Exit>,
}

pub(super) struct Mutable {
    pub status: Status,
    /// The agent's process: the init's from its create, an exec's once started.
    pub process: Option<ContainerProcess>,
    pub exit: Option<Exit>,
}

/// A container's init or one of its execs.
pub(super) struct Proc {
    pub container_id: String,
    /// Empty for the init.
    pub exec_id: String,
    pub stdio: StdioPaths,
    /// The pid containerd sees: the VMM's (the processes themselves live in the guest).
    pub pid: u32,
    /// An exec's process spec, kept from Exec until Start.
    pub spec: Option<oci_spec::runtime::Process>,
    state: Mutex<Mutable>,
    /// Its exit, once its waiter recorded it.
    pub exited: watch::Sender<Option<Exit>>,
    /// CloseIO: ends the copy of its stdin.
    pub stdin_close: Arc<Notify>,
    /// Held by Start while it starts the process and publishes the start, and by the waiter
    /// before it publishes the exit: TaskExit never comes before TaskStart.
    pub start_lock: tokio::sync::Mutex<()>,
}

impl Proc {
    pub fn new(
        container_id: &str,
        exec_id: &str,
        stdio: StdioPaths,
        pid: u32,
        spec: Option<oci_spec::runtime::Process>,
        process: Option<ContainerProcess>,
    ) -> Proc {
        Proc {
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            stdio,
            pid,
            spec,
            state: Mutex::new(Mutable {
                status: Status::Created,
                process,
                exit: None,
            }),
            exited: watch::channel(None).0,
            stdin_close: Arc::new(Notify::new()),
            start_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Mutable> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn status(&self) -> Status {
        self.lock().status
    }

    /// Moves to `s`, unless it has already stopped (stopped is final).
    pub fn set_status(&self, s: Status) {
        let mut st = self.lock();
        if st.status != Status::Stopped {
            st.status = s;
        }
    }

    /// Records its end: stopped, with `exit`.
    pub fn set_exited(&self, exit: Exit) {
        let mut st = self.lock();
        st.status = Status::Stopped;
        st.exit = Some(exit);
    }

    /// The agent's process, once there is one.
    pub fn process(&self) -> Result<ContainerProcess> {
        self.lock().process.clone().ok_or_else(|| {
            TaskError::FailedPrecondition(format!("{} has not been started", self.name()))
        })
    }

    pub fn is_init(&self) -> bool {
        self.exec_id.is_empty()
    }

    pub fn name(&self) -> String {
        if self.is_init() {
            format!("container {}", self.container_id)
        } else {
            format!("exec {} of container {}", self.exec_id, self.container_id)
        }
    }
}
