//! The real [`Publisher`]: the task model's events as containerd's event messages, sent to
//! containerd over its publisher connection (`RemotePublisher`).

use async_trait::async_trait;
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::Context;

use crate::convert;
use crate::task::{Event, Publisher};

pub struct ContainerdPublisher {
    remote: RemotePublisher,
    namespace: String,
}

impl ContainerdPublisher {
    pub fn new(remote: RemotePublisher, namespace: &str) -> ContainerdPublisher {
        ContainerdPublisher {
            remote,
            namespace: namespace.to_string(),
        }
    }
}

#[async_trait]
impl Publisher for ContainerdPublisher {
    async fn publish(&self, topic: &'static str, event: Event) {
        let r = self
            .remote
            .publish(Context::default(), topic, &self.namespace, message(event))
            .await;
        if let Err(e) = r {
            tracing::warn!("publishing {topic}: {e}");
        }
    }
}

/// containerd's message for an event.
pub fn message(event: Event) -> Box<dyn MessageDyn> {
    match event {
        Event::Create {
            id,
            bundle,
            rootfs,
            stdio,
            pid,
        } => Box::new(TaskCreate {
            container_id: id,
            bundle: bundle.display().to_string(),
            rootfs: convert::api_mounts(&rootfs),
            io: MessageField::some(TaskIO {
                stdin: stdio.stdin,
                stdout: stdio.stdout,
                stderr: stdio.stderr,
                terminal: stdio.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        }),
        Event::Start { id, pid } => Box::new(TaskStart {
            container_id: id,
            pid,
            ..Default::default()
        }),
        Event::Exit {
            id,
            exec_id,
            pid,
            exit,
        } => Box::new(TaskExit {
            // containerd's `id` of an exit is the exec's id, or the container's for its init.
            id: if exec_id.is_empty() {
                id.clone()
            } else {
                exec_id
            },
            container_id: id,
            pid,
            exit_status: exit.code,
            exited_at: MessageField::some(convert::timestamp(exit.at)),
            ..Default::default()
        }),
        Event::Delete { id, pid, exit } => Box::new(TaskDelete {
            container_id: id.clone(),
            id,
            pid,
            exit_status: exit.code,
            exited_at: MessageField::some(convert::timestamp(exit.at)),
            ..Default::default()
        }),
        Event::ExecAdded { id, exec_id } => Box::new(TaskExecAdded {
            container_id: id,
            exec_id,
            ..Default::default()
        }),
        Event::ExecStarted { id, exec_id, pid } => Box::new(TaskExecStarted {
            container_id: id,
            exec_id,
            pid,
            ..Default::default()
        }),
        Event::Paused { id } => Box::new(TaskPaused {
            container_id: id,
            ..Default::default()
        }),
        Event::Resumed { id } => Box::new(TaskResumed {
            container_id: id,
            ..Default::default()
        }),
        Event::Oom { id } => Box::new(TaskOOM {
            container_id: id,
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_runtime::process::Exit;
    use std::time::{Duration, SystemTime};

    fn exit(code: u32) -> Exit {
        Exit {
            code,
            at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            vm_gone: false,
        }
    }

    #[test]
    fn exits_name_the_exec_or_the_container() {
        let m = message(Event::Exit {
            id: "c1".into(),
            exec_id: "e1".into(),
            pid: 42,
            exit: exit(3),
        });
        let e = m.downcast_ref::<TaskExit>().expect("a TaskExit");
        assert_eq!((e.container_id.as_str(), e.id.as_str()), ("c1", "e1"));
        assert_eq!((e.pid, e.exit_status), (42, 3));
        assert_eq!(e.exited_at.seconds, 1_700_000_000);

        let m = message(Event::Exit {
            id: "c1".into(),
            exec_id: String::new(),
            pid: 42,
            exit: exit(0),
        });
        let e = m.downcast_ref::<TaskExit>().expect("a TaskExit");
        assert_eq!((e.container_id.as_str(), e.id.as_str()), ("c1", "c1"));
    }

    #[test]
    fn create_and_delete_messages() {
        let m = message(Event::Create {
            id: "c1".into(),
            bundle: "/b/c1".into(),
            rootfs: Vec::new(),
            stdio: crate::stdio::StdioPaths {
                stdout: "/f/out".into(),
                terminal: true,
                ..Default::default()
            },
            pid: 7,
        });
        let c = m.downcast_ref::<TaskCreate>().expect("a TaskCreate");
        assert_eq!(
            (c.container_id.as_str(), c.bundle.as_str()),
            ("c1", "/b/c1")
        );
        assert_eq!(
            (c.io.stdout.as_str(), c.io.terminal, c.pid),
            ("/f/out", true, 7)
        );

        let m = message(Event::Delete {
            id: "c1".into(),
            pid: 7,
            exit: exit(137),
        });
        let d = m.downcast_ref::<TaskDelete>().expect("a TaskDelete");
        assert_eq!((d.id.as_str(), d.container_id.as_str()), ("c1", "c1"));
        assert_eq!(d.exit_status, 137);
    }
}
