//! The task service (containerd's `containerd.task.v2.Task` over ttrpc): a thin adapter over
//! the task model ([`crate::task`]). Each call decodes its request, calls the model and encodes
//! the reply, or the model's error as a ttrpc status ([`convert::task_error`]).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::api::{self, Empty};
use containerd_shim::protos::protobuf::{EnumOrUnknown, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::TtrpcResult;
use hull_runtime::process::Exit;

use crate::convert::{self, invalid};
use crate::publish::ContainerdPublisher;
use crate::stdio::StdioPaths;
use crate::task::runtime::RuntimeBackend;
use crate::task::{CreateTask, ExecProcess, TaskError, Tasks};

/// containerd's task service for one pod.
#[derive(Clone)]
pub struct Service {
    tasks: Tasks<RuntimeBackend, ContainerdPublisher>,
}

impl Service {
    pub fn new(namespace: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Service {
        Service {
            tasks: Tasks::new(
                RuntimeBackend::new(namespace),
                ContainerdPublisher::new(publisher, namespace),
                exit,
            ),
        }
    }
}

/// The model's error as the ttrpc status containerd expects.
fn err(e: TaskError) -> containerd_shim::protos::ttrpc::Error {
    convert::task_error(&e)
}

fn stdio(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> StdioPaths {
    StdioPaths {
        stdin: stdin.to_string(),
        stdout: stdout.to_string(),
        stderr: stderr.to_string(),
        terminal,
    }
}

fn exited_at(
    exit: &Exit,
) -> MessageField<containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp> {
    MessageField::some(convert::timestamp(exit.at))
}

/// A terminal dimension as the guest takes it.
fn dimension(v: u32) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

#[async_trait]
impl Task for Service {
    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let s = self.tasks.state(&req.id, &req.exec_id).map_err(err)?;
        let mut r = api::StateResponse {
            id: req.id,
            exec_id: req.exec_id,
            bundle: s.bundle.display().to_string(),
            pid: s.pid,
            status: EnumOrUnknown::new(convert::task_status(s.status)),
            stdin: s.stdio.stdin,
            stdout: s.stdio.stdout,
            stderr: s.stdio.stderr,
            terminal: s.stdio.terminal,
            ..Default::default()
        };
        if let Some(e) = s.exit {
            r.exit_status = e.code;
            r.exited_at = exited_at(&e);
        }
        Ok(r)
    }

    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let task = CreateTask {
            bundle: PathBuf::from(&req.bundle),
            stdio: stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            rootfs: convert::rootfs_mounts(&req.rootfs),
            checkpoint: !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty(),
            id: req.id,
        };
        let pid = self.tasks.create(task).await.map_err(err)?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = self.tasks.start(&req.id, &req.exec_id).await.map_err(err)?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let d = self
            .tasks
            .delete(&req.id, &req.exec_id)
            .await
            .map_err(err)?;
        Ok(api::DeleteResponse {
            pid: d.pid,
            exit_status: d.exit.code,
            exited_at: exited_at(&d.exit),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let pids = self.tasks.pids(&req.id).await.map_err(err)?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        self.tasks.pause(&req.id).await.map_err(err)?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        self.tasks.resume(&req.id).await.map_err(err)?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(convert::unimplemented(
            "checkpoint is not supported by hull (the container runs in a VM)",
        ))
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        let signal = i32::try_from(req.signal).map_err(|_| invalid("bad signal number"))?;
        self.tasks
            .kill(&req.id, &req.exec_id, signal, req.all)
            .await
            .map_err(err)?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        let spec = convert::from_any(req.spec.as_ref(), "the exec's process spec")?;
        let exec = ExecProcess {
            stdio: stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal),
            id: req.id,
            exec_id: req.exec_id,
            spec,
        };
        self.tasks.exec(exec).await.map_err(err)?;
        Ok(Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<Empty> {
        let (rows, cols) = (dimension(req.height), dimension(req.width));
        self.tasks
            .resize(&req.id, &req.exec_id, rows, cols)
            .await
            .map_err(err)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        self.tasks
            .close_io(&req.id, &req.exec_id, req.stdin)
            .map_err(err)?;
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        let resources: oci_spec::runtime::LinuxResources =
            convert::from_any(req.resources.as_ref(), "the update's resources")?;
        self.tasks.update(&req.id, &resources).await.map_err(err)?;
        Ok(Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let exit = self.tasks.wait(&req.id, &req.exec_id).await.map_err(err)?;
        Ok(api::WaitResponse {
            exit_status: exit.code,
            exited_at: exited_at(&exit),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let stats = self.tasks.stats(&req.id).await.map_err(err)?;
        Ok(api::StatsResponse {
            stats: MessageField::some(convert::metrics_any(&stats)?),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.tasks.task_pid(&req.id).unwrap_or(0),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<Empty> {
        self.tasks.shutdown().await;
        Ok(Empty::new())
    }
}
