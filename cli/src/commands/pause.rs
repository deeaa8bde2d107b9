//! `hull pause ID` and `hull resume ID`: the cgroup freezer of the container in its VM.

use std::process::ExitCode;

use anyhow::{bail, Context};
use hull_runtime::agent::protocol::ContainerStatus;

use super::{block_on, open_with_status, Ctx};

pub fn pause(ctx: &Ctx, id: &str) -> anyhow::Result<ExitCode> {
    block_on(async {
        let (sb, c, status) = open_with_status(ctx, id).await?;
        if status != ContainerStatus::Running {
            bail!("container not running");
        }
        c.pause(&sb)
            .await
            .with_context(|| format!("cannot pause container \"{id}\""))
    })??;
    Ok(ExitCode::SUCCESS)
}

pub fn resume(ctx: &Ctx, id: &str) -> anyhow::Result<ExitCode> {
    block_on(async {
        let (sb, c, status) = open_with_status(ctx, id).await?;
        if status != ContainerStatus::Paused {
            bail!("container not paused");
        }
        c.resume(&sb)
            .await
            .with_context(|| format!("cannot resume container \"{id}\""))
    })??;
    Ok(ExitCode::SUCCESS)
}
