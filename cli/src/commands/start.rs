//! `hull start ID`: lets a created container's program run, then its poststart hooks.

use std::process::ExitCode;

use anyhow::{bail, Context};
use hull_runtime::agent::protocol::ContainerStatus;

use super::{block_on, open_with_status, Ctx};

pub fn start(ctx: &Ctx, id: &str) -> anyhow::Result<()> {
    block_on(async {
        let (sb, c, status) = open_with_status(ctx, id).await?;
        match status {
            ContainerStatus::Created => {}
            ContainerStatus::Stopped => bail!("cannot start a container that has stopped"),
            other => bail!("cannot start an already {} container", other.as_str()),
        }
        c.start(&sb)
            .await
            .with_context(|| format!("cannot start container \"{id}\""))
    })?
}

pub fn run(ctx: &Ctx, s: &liboci_cli::Start) -> anyhow::Result<ExitCode> {
    start(ctx, &s.container_id)?;
    Ok(ExitCode::SUCCESS)
}
