//! The task events the model publishes, as plain data, and where they go ([`Publisher`]). The
//! real publisher (`crate::publish`) turns them into containerd's event messages.

use std::path::PathBuf;

use async_trait::async_trait;
use hull_runtime::process::Exit;

use crate::rootfs::RootMount;
use crate::stdio::StdioPaths;

/// One of containerd's task events (`/tasks/...`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A task (a container and its init) was created.
    Create {
        id: String,
        bundle: PathBuf,
        rootfs: Vec<RootMount>,
        stdio: StdioPaths,
        pid: u32,
    },
    /// A task's init was started.
    Start {
        id: String,
        pid: u32,
    },
    /// A process ended: the init (`exec_id` empty) or an exec.
    Exit {
        id: String,
        exec_id: String,
        pid: u32,
        exit: Exit,
    },
    /// A task was deleted, with its init's exit.
    Delete {
        id: String,
        pid: u32,
        exit: Exit,
    },
    /// An exec was added to a task (not started yet).
    ExecAdded {
        id: String,
        exec_id: String,
    },
    /// An exec was started.
    ExecStarted {
        id: String,
        exec_id: String,
        pid: u32,
    },
    Paused {
        id: String,
    },
    Resumed {
        id: String,
    },
    /// The guest's OOM killer killed a process of the task's container.
    Oom {
        id: String,
    },
}

impl Event {
    /// containerd's topic for the event.
    pub fn topic(&self) -> &'static str {
        use containerd_shim::protos::topics;
        match self {
            Event::Create { .. } => topics::TASK_CREATE_EVENT_TOPIC,
            Event::Start { .. } => topics::TASK_START_EVENT_TOPIC,
            Event::Exit { .. } => topics::TASK_EXIT_EVENT_TOPIC,
            Event::Delete { .. } => topics::TASK_DELETE_EVENT_TOPIC,
            Event::ExecAdded { .. } => topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Event::ExecStarted { .. } => topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Event::Paused { .. } => topics::TASK_PAUSED_EVENT_TOPIC,
            Event::Resumed { .. } => topics::TASK_RESUMED_EVENT_TOPIC,
            Event::Oom { .. } => topics::TASK_OOM_EVENT_TOPIC,
        }
    }
}

/// Where task events go. Publishing never fails the operation that publishes: a publisher
/// logs what it could not deliver.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// Publishes `event` under `topic` (always `event.topic()`).
    async fn publish(&self, topic: &'static str, event: Event);
}
