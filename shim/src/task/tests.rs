//! The task model end to end through its public operations, over a fake pod backend and a
//! recording publisher: no ttrpc server, no VM.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::topics::{
    TASK_CREATE_EVENT_TOPIC as CREATE, TASK_DELETE_EVENT_TOPIC as DELETE,
    TASK_EXEC_ADDED_EVENT_TOPIC as EXEC_ADDED, TASK_EXEC_STARTED_EVENT_TOPIC as EXEC_STARTED,
    TASK_EXIT_EVENT_TOPIC as EXIT, TASK_OOM_EVENT_TOPIC as OOM, TASK_PAUSED_EVENT_TOPIC as PAUSED,
    TASK_RESUMED_EVENT_TOPIC as RESUMED, TASK_START_EVENT_TOPIC as START,
};
use hull_runtime::process::KILLED_EXIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::fake::{FakeBackend, Recorder};
use super::*;
use crate::pod::{CRI_CONTAINER_TYPE, CRI_SANDBOX_ID};

/// The fake VM's pid (containerd's pid of every process of the pod).
const VMM_PID: u32 = 4242;

struct Harness {
    tasks: Tasks<FakeBackend, Recorder>,
    backend: FakeBackend,
    events: Recorder,
    exit: Arc<ExitSignal>,
}

fn harness() -> Harness {
    let backend = FakeBackend::new();
    let events = Recorder::default();
    let exit = Arc::new(ExitSignal::default());
    Harness {
        tasks: Tasks::new(backend.clone(), events.clone(), exit.clone()),
        backend,
        events,
        exit,
    }
}

/// Fails the test instead of hanging it.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("timed out")
}

fn exec_spec(arg0: &str) -> oci_spec::runtime::Process {
    serde_json::from_value(serde_json::json!({
        "args": [arg0], "cwd": "/", "user": {"uid": 0, "gid": 0},
    }))
    .expect("a process spec")
}

impl Harness {
    /// A plain container (a pod of its own) with no stdio.
    fn plain(&self, id: &str) -> CreateTask {
        CreateTask {
            id: id.to_string(),
            bundle: self.backend.bundle(id, &[]),
            ..Default::default()
        }
    }

    fn cri_sandbox(&self, id: &str) -> CreateTask {
        let bundle = self
            .backend
            .bundle(id, &[(CRI_CONTAINER_TYPE, "sandbox"), (CRI_SANDBOX_ID, id)]);
        CreateTask {
            id: id.to_string(),
            bundle,
            ..Default::default()
        }
    }

    fn cri_container(&self, id: &str, sandbox: &str) -> CreateTask {
        let bundle = self.backend.bundle(
            id,
            &[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, sandbox)],
        );
        CreateTask {
            id: id.to_string(),
            bundle,
            ..Default::default()
        }
    }

    async fn running(&self, id: &str) {
        self.tasks.create(self.plain(id)).await.expect("create");
        self.tasks.start(id, "").await.expect("start");
    }

    async fn exec(&self, id: &str, exec_id: &str) -> Result<()> {
        self.tasks
            .exec(ExecProcess {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
                stdio: StdioPaths::default(),
                spec: exec_spec(exec_id),
            })
            .await
    }
}

#[tokio::test]
async fn create_start_exit_publishes_create_start_exit_and_wait_returns_the_code() {
    let h = harness();
    let pid = h.tasks.create(h.plain("c1")).await.unwrap();
    assert_eq!(pid, VMM_PID);
    assert_eq!(h.tasks.state("c1", "").unwrap().status, Status::Created);
    assert_eq!(h.tasks.start("c1", "").await.unwrap(), VMM_PID);
    assert_eq!(h.tasks.state("c1", "").unwrap().status, Status::Running);

    h.backend.end("c1", 3);
    let exit = within(h.tasks.wait("c1", "")).await.unwrap();
    assert_eq!((exit.code, exit.vm_gone), (3, false));

    assert_eq!(h.events.topics(), [CREATE, START, EXIT]);
    match &h.events.events()[2] {
        Event::Exit {
            id,
            exec_id,
            pid,
            exit: e,
        } => {
            assert_eq!((id.as_str(), exec_id.as_str(), *pid), ("c1", "", VMM_PID));
            assert_eq!(e, &exit);
        }
        other => panic!("{other:?}"),
    }
    let st = h.tasks.state("c1", "").unwrap();
    assert_eq!((st.status, st.exit), (Status::Stopped, Some(exit)));
    assert_eq!(
        h.backend.calls(),
        [
            "boot c1",
            "create c1 join=- terminal=false",
            "attach c1 stdin=false stdout=false stderr=false",
            "start c1",
            "oom_killed c1",
        ]
    );
}

#[tokio::test]
async fn exit_is_never_published_before_start_even_when_the_process_exits_during_start() {
    let h = harness();
    h.backend.exit_during_start("c1", 0);
    h.tasks.create(h.plain("c1")).await.unwrap();
    h.tasks.start("c1", "").await.unwrap();
    let exit = within(h.tasks.wait("c1", "")).await.unwrap();
    assert_eq!(exit.code, 0);
    assert_eq!(h.events.topics(), [CREATE, START, EXIT]);
    // The exit recorded during Start is final: Start did not make it running again.
    assert_eq!(h.tasks.state("c1", "").unwrap().status, Status::Stopped);
}

#[tokio::test]
async fn a_second_create_of_the_same_id_is_already_exists() {
    let h = harness();
    h.tasks.create(h.plain("c1")).await.unwrap();
    let e = h.tasks.create(h.plain("c1")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert_eq!(h.events.topics(), [CREATE]);
    assert_eq!(
        h.backend
            .calls()
            .iter()
            .filter(|c| c.starts_with("create"))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_cri_container_whose_sandbox_is_not_served_is_not_found() {
    let h = harness();
    let e = h
        .tasks
        .create(h.cri_container("c1", "pod1"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.message().contains("pod1"), "{e}");
    // Another pod's sandbox served here does not help either.
    h.tasks.create(h.cri_sandbox("pod2")).await.unwrap();
    let e = h
        .tasks
        .create(h.cri_container("c1", "pod1"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(h.backend.calls()[0], "boot pod2");
    assert!(!h.backend.calls().iter().any(|c| c.starts_with("create c1")));
    assert_eq!(
        h.tasks.state("c1", "").unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn a_cri_container_joins_the_vm_of_its_sandbox() {
    let h = harness();
    h.tasks.create(h.cri_sandbox("pod1")).await.unwrap();
    h.tasks.start("pod1", "").await.unwrap();
    h.tasks.create(h.cri_container("c1", "pod1")).await.unwrap();
    let calls = h.backend.calls();
    assert_eq!(calls.iter().filter(|c| c.starts_with("boot")).count(), 1);
    assert!(calls.contains(&"create c1 join=pod1 terminal=false".to_string()));
    assert_eq!(h.tasks.task_pid("c1"), Some(VMM_PID));
}

#[tokio::test]
async fn a_second_pod_sandbox_is_already_exists() {
    let h = harness();
    h.tasks.create(h.cri_sandbox("pod1")).await.unwrap();
    let e = h.tasks.create(h.cri_sandbox("pod2")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert!(e.message().contains("pod1"), "{e}");
    // A plain container is a pod of its own: not in this shim either.
    let e = h.tasks.create(h.plain("c9")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert_eq!(
        h.backend
            .calls()
            .iter()
            .filter(|c| c.starts_with("boot"))
            .count(),
        1
    );
}

#[tokio::test]
async fn the_vm_dying_makes_every_process_exit_137_at_once() {
    let h = harness();
    h.tasks.create(h.cri_sandbox("pod1")).await.unwrap();
    h.tasks.start("pod1", "").await.unwrap();
    h.tasks.create(h.cri_container("c1", "pod1")).await.unwrap();
    h.tasks.start("c1", "").await.unwrap();
    h.exec("c1", "e1").await.unwrap();
    h.tasks.start("c1", "e1").await.unwrap();

    h.backend.kill_vm("hull-vmm was killed");
    for (id, exec_id) in [("pod1", ""), ("c1", ""), ("c1", "e1")] {
        let exit = within(h.tasks.wait(id, exec_id)).await.unwrap();
        assert_eq!(
            (exit.code, exit.vm_gone),
            (KILLED_EXIT, true),
            "{id} {exec_id}"
        );
        let st = h.tasks.state(id, exec_id).unwrap();
        assert_eq!((st.status, st.exit), (Status::Stopped, Some(exit)));
    }
    let exits: Vec<_> = h
        .events
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Exit {
                id, exec_id, exit, ..
            } => Some((id, exec_id, exit.code)),
            _ => None,
        })
        .collect();
    assert_eq!(exits.len(), 3, "{exits:?}");
    assert!(exits.iter().all(|e| e.2 == 137), "{exits:?}");
    // A dead VM is not asked whether the OOM killer struck.
    assert!(!h
        .backend
        .calls()
        .iter()
        .any(|c| c.starts_with("oom_killed")));
}

#[tokio::test]
async fn exec_on_a_task_that_is_not_running_is_failed_precondition() {
    let h = harness();
    h.tasks.create(h.plain("c1")).await.unwrap();
    let e = h.exec("c1", "e1").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");

    h.tasks.start("c1", "").await.unwrap();
    h.backend.end("c1", 0);
    within(h.tasks.wait("c1", "")).await.unwrap();
    let e = h.exec("c1", "e1").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");

    let e = h.exec("nope", "e1").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(!h.events.topics().contains(&EXEC_ADDED));
}

#[tokio::test]
async fn a_duplicate_exec_id_is_already_exists() {
    let h = harness();
    h.running("c1").await;
    h.exec("c1", "e1").await.unwrap();
    let e = h.exec("c1", "e1").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    assert_eq!(
        h.events
            .topics()
            .iter()
            .filter(|t| **t == EXEC_ADDED)
            .count(),
        1
    );
}

#[tokio::test]
async fn an_exec_runs_exits_and_is_deleted_and_a_finished_exec_cannot_be_killed() {
    let h = harness();
    h.running("c1").await;
    h.exec("c1", "e1").await.unwrap();
    assert_eq!(h.tasks.state("c1", "e1").unwrap().status, Status::Created);
    // Not started: nothing to signal yet.
    let e = h
        .tasks
        .kill("c1", "e1", libc::SIGTERM, false)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");

    h.tasks.start("c1", "e1").await.unwrap();
    assert_eq!(h.tasks.state("c1", "e1").unwrap().status, Status::Running);
    h.backend.end("c1/e1", 7);
    let exit = within(h.tasks.wait("c1", "e1")).await.unwrap();
    assert_eq!(exit.code, 7);

    let e = h
        .tasks
        .kill("c1", "e1", libc::SIGKILL, false)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(!h.backend.calls().iter().any(|c| c.starts_with("signal")));

    let d = h.tasks.delete("c1", "e1").await.unwrap();
    assert_eq!((d.pid, d.exit), (VMM_PID, exit));
    assert_eq!(
        h.tasks.state("c1", "e1").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // The init runs on.
    assert_eq!(h.tasks.state("c1", "").unwrap().status, Status::Running);
    assert_eq!(
        h.events.topics(),
        [CREATE, START, EXEC_ADDED, EXEC_STARTED, EXIT]
    );
    match &h.events.events()[4] {
        Event::Exit { id, exec_id, .. } => {
            assert_eq!((id.as_str(), exec_id.as_str()), ("c1", "e1"))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn kill_goes_to_the_init_or_the_exec_it_names() {
    let h = harness();
    h.running("c1").await;
    h.exec("c1", "e1").await.unwrap();
    h.tasks.start("c1", "e1").await.unwrap();

    h.tasks
        .kill("c1", "e1", libc::SIGTERM, false)
        .await
        .unwrap();
    assert_eq!(within(h.tasks.wait("c1", "e1")).await.unwrap().code, 143);
    assert_eq!(h.tasks.state("c1", "").unwrap().status, Status::Running);

    h.tasks.kill("c1", "", libc::SIGKILL, true).await.unwrap();
    assert_eq!(within(h.tasks.wait("c1", "")).await.unwrap().code, 137);
    let signals: Vec<_> = h
        .backend
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("signal"))
        .collect();
    assert_eq!(
        signals,
        [
            "signal c1/e1 15 all=false Exec",
            "signal c1 9 all=true Init { container: \"c1\" }",
        ]
    );
    let e = h.tasks.kill("nope", "", 9, false).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[tokio::test]
async fn delete_of_a_running_process_is_failed_precondition() {
    let h = harness();
    h.running("c1").await;
    let e = h.tasks.delete("c1", "").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    h.tasks.pause("c1").await.unwrap();
    let e = h.tasks.delete("c1", "").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    assert!(!h.backend.calls().iter().any(|c| c.starts_with("delete")));
    assert!(!h.events.topics().contains(&DELETE));
    assert_eq!(h.tasks.state("c1", "").unwrap().status, Status::Paused);
}

#[tokio::test]
async fn delete_of_the_init_removes_the_task_and_publishes_its_exit() {
    let h = harness();
    h.running("c1").await;
    h.backend.end("c1", 42);
    let exit = within(h.tasks.wait("c1", "")).await.unwrap();
    let d = h.tasks.delete("c1", "").await.unwrap();
    assert_eq!((d.pid, d.exit), (VMM_PID, exit));
    assert_eq!(d.exit.code, 42);
    assert_eq!(h.events.topics(), [CREATE, START, EXIT, DELETE]);
    assert_eq!(
        h.events.events()[3],
        Event::Delete {
            id: "c1".into(),
            pid: VMM_PID,
            exit,
        }
    );
    assert!(h.backend.calls().contains(&"delete c1".to_string()));
    assert_eq!(
        h.tasks.state("c1", "").unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(h.tasks.task_pid("c1"), None);
    // The pod's VM stays until Shutdown: it cannot be booted a second time meanwhile.
    let e = h.tasks.create(h.plain("c1")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
}

#[tokio::test]
async fn delete_of_a_created_init_kills_it_and_reports_137() {
    let h = harness();
    h.tasks.create(h.plain("c1")).await.unwrap();
    let d = within(h.tasks.delete("c1", "")).await.unwrap();
    assert_eq!((d.exit.code, d.exit.vm_gone), (137, false));
    // Never started: its exit is published (after no start), then the delete.
    assert_eq!(h.events.topics(), [CREATE, EXIT, DELETE]);
}

#[tokio::test]
async fn a_failed_container_create_after_the_boot_destroys_the_pod() {
    let h = harness();
    h.backend.fail_create("c1");
    let e = h.tasks.create(h.plain("c1")).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert_eq!(
        h.backend.calls(),
        ["boot c1", "create c1 join=- terminal=false", "destroy"]
    );
    assert!(h.events.topics().is_empty());
    // Nothing is left: the next pod can be booted.
    h.tasks.create(h.plain("c2")).await.unwrap();
    assert_eq!(h.backend.calls()[3], "boot c2");
}

#[tokio::test]
async fn a_failed_create_of_a_joining_container_keeps_the_pod() {
    let h = harness();
    h.tasks.create(h.cri_sandbox("pod1")).await.unwrap();
    h.backend.fail_create("c1");
    let e = h
        .tasks
        .create(h.cri_container("c1", "pod1"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(!h.backend.calls().contains(&"destroy".to_string()));
    assert_eq!(h.tasks.state("pod1", "").unwrap().status, Status::Created);
}

#[tokio::test]
async fn an_unusable_bundle_or_a_checkpoint_boots_nothing() {
    let h = harness();
    let e = h
        .tasks
        .create(CreateTask {
            id: "c1".into(),
            bundle: "/no/such/bundle".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let mut req = h.plain("c2");
    req.checkpoint = true;
    let e = h.tasks.create(req).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unimplemented, "{e}");
    let bundle = h.backend.bundle("c3", &[(CRI_CONTAINER_TYPE, "container")]);
    let e = h
        .tasks
        .create(CreateTask {
            id: "c3".into(),
            bundle,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    assert!(h.backend.calls().is_empty(), "{:?}", h.backend.calls());
}

#[tokio::test]
async fn shutdown_with_tasks_left_does_nothing() {
    let h = harness();
    h.running("c1").await;
    assert_eq!(h.tasks.shutdown().await, Shutdown::TasksLeft);
    assert!(!h.backend.calls().contains(&"destroy".to_string()));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), h.exit.wait())
            .await
            .is_err(),
        "the shim was told to exit"
    );
    // The task still works.
    h.tasks.kill("c1", "", libc::SIGKILL, false).await.unwrap();
    assert_eq!(within(h.tasks.wait("c1", "")).await.unwrap().code, 137);
}

#[tokio::test]
async fn shutdown_with_no_task_left_destroys_the_pod_and_signals_exit() {
    let h = harness();
    h.running("c1").await;
    h.backend.end("c1", 0);
    within(h.tasks.wait("c1", "")).await.unwrap();
    h.tasks.delete("c1", "").await.unwrap();
    assert_eq!(h.tasks.shutdown().await, Shutdown::Exiting);
    assert_eq!(
        h.backend.calls().last().map(String::as_str),
        Some("destroy")
    );
    within(h.exit.wait()).await;
}

#[tokio::test]
async fn close_io_on_stdin_ends_the_input_after_what_was_sent() {
    let h = harness();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stdin");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let mut req = h.plain("c1");
    req.stdio.stdin = fifo.display().to_string();
    h.tasks.create(req).await.unwrap();
    h.tasks.start("c1", "").await.unwrap();
    assert!(h
        .backend
        .calls()
        .contains(&"attach c1 stdin=true stdout=false stderr=false".to_string()));

    // containerd writes to the FIFO (and keeps it open); the guest reads it all.
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    std::io::Write::write_all(&mut writer, b"hello").unwrap();
    let mut guest = h.backend.peers("c1").stdin.expect("stdin stream");
    let mut buf = [0u8; 5];
    within(guest.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"hello");
    assert!(!h
        .backend
        .calls()
        .iter()
        .any(|c| c.starts_with("input_ended")));

    h.tasks.close_io("c1", "", true).unwrap();
    assert_eq!(
        h.backend.called("input_ended").await,
        "input_ended c1 Some(5)"
    );
    let mut rest = Vec::new();
    within(guest.read_to_end(&mut rest)).await.unwrap();
    assert!(rest.is_empty());
    drop(writer);
}

#[tokio::test]
async fn output_is_copied_to_containerd_before_the_exit_is_published() {
    let h = harness();
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("out"), dir.path().join("err"));
    let mut req = h.plain("c1");
    req.stdio.stdout = out.display().to_string();
    req.stdio.stderr = err.display().to_string();
    h.tasks.create(req).await.unwrap();
    h.tasks.start("c1", "").await.unwrap();
    let peers = h.backend.peers("c1");
    let (mut stdout, mut stderr) = (peers.stdout.unwrap(), peers.stderr.unwrap());
    stdout.write_all(b"to stdout\n").await.unwrap();
    stderr.write_all(b"to stderr\n").await.unwrap();
    drop((stdout, stderr));
    h.backend.end("c1", 0);
    within(h.tasks.wait("c1", "")).await.unwrap();
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "to stdout\n");
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "to stderr\n");
}

#[tokio::test]
async fn resize_needs_a_terminal_and_a_started_process() {
    let h = harness();
    h.running("c1").await;
    let e = h.tasks.resize("c1", "", 40, 120).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");

    h.tasks
        .exec(ExecProcess {
            id: "c1".into(),
            exec_id: "t1".into(),
            stdio: StdioPaths {
                terminal: true,
                ..Default::default()
            },
            spec: exec_spec("t1"),
        })
        .await
        .unwrap();
    let e = h.tasks.resize("c1", "t1", 40, 120).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::FailedPrecondition, "{e}");
    h.tasks.start("c1", "t1").await.unwrap();
    h.tasks.resize("c1", "t1", 40, 120).await.unwrap();
    let resizes: Vec<_> = h
        .backend
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("resize"))
        .collect();
    assert_eq!(resizes, ["resize c1/t1 40x120"]);
}

#[tokio::test]
async fn oom_after_exit_publishes_task_oom_before_the_exit() {
    let h = harness();
    h.running("c1").await;
    h.backend.set_oom();
    h.backend.end("c1", 137);
    within(h.tasks.wait("c1", "")).await.unwrap();
    assert_eq!(h.events.topics(), [CREATE, START, OOM, EXIT]);
    assert_eq!(h.events.events()[2], Event::Oom { id: "c1".into() });
}

#[tokio::test]
async fn pause_and_resume_move_the_state_and_publish() {
    let h = harness();
    h.running("c1").await;
    h.tasks.pause("c1").await.unwrap();
    assert_eq!(h.tasks.state("c1", "").unwrap().status, Status::Paused);
    h.tasks.resume("c1").await.unwrap();
    assert_eq!(h.tasks.state("c1", "").unwrap().status, Status::Running);
    assert_eq!(h.events.topics(), [CREATE, START, PAUSED, RESUMED]);
    let e = h.tasks.pause("nope").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[tokio::test]
async fn pids_stats_and_update_reach_the_task_container() {
    let h = harness();
    h.running("c1").await;
    h.exec("c1", "e1").await.unwrap();
    h.tasks.start("c1", "e1").await.unwrap();
    // The fake's guest pids are 100 + the agent's process handle: the init's is 1.
    assert_eq!(h.tasks.pids("c1").await.unwrap(), [101, 102]);
    assert_eq!(h.tasks.stats("c1").await.unwrap().pids.current, 2);
    h.backend.end("c1/e1", 0);
    within(h.tasks.wait("c1", "e1")).await.unwrap();
    assert_eq!(h.tasks.pids("c1").await.unwrap(), [101]);

    let resources: oci_spec::runtime::LinuxResources =
        serde_json::from_str(r#"{"pids":{"limit":20}}"#).unwrap();
    h.tasks.update("c1", &resources).await.unwrap();
    assert!(h
        .backend
        .calls()
        .contains(&"update c1 pids=Some(20)".to_string()));
}

#[tokio::test]
async fn a_terminal_task_gets_a_terminal_from_its_spec() {
    let h = harness();
    let mut req = h.plain("c1");
    req.stdio.terminal = true;
    h.tasks.create(req).await.unwrap();
    assert!(h
        .backend
        .calls()
        .contains(&"create c1 join=- terminal=true".to_string()));
    let st = h.tasks.state("c1", "").unwrap();
    assert!(st.stdio.terminal);
    assert_eq!(st.bundle, std::path::Path::new("/bundles/c1"));
}
