//! `hull delete [--force] ID`: removes a stopped (or created) container, its VM and its state.
//! With `--force` it removes whatever there is, whatever state it is in or died in (the VM
//! killed, mounts undone, the state directory removed), and a container that does not exist
//! is not an error (as with runc).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use hull_runtime::agent::protocol::ContainerStatus;
use hull_runtime::sandbox::cleanup;

use super::{block_on, check_id, not_found, open, Ctx};

/// How long the VM gets to shut down.
const GRACE: Duration = Duration::from_secs(2);

pub fn delete(ctx: &Ctx, id: &str, force: bool) -> anyhow::Result<()> {
    check_id(id)?;
    if !ctx.dir(id).exists() {
        return if force { Ok(()) } else { Err(not_found(id)) };
    }
    if !ctx.exists(id) {
        // A directory without a state file: a create that died halfway.
        if force {
            return cleanup(&ctx.root, id).map_err(Into::into);
        }
        return Err(not_found(id));
    }
    let r = block_on(async {
        let (sb, c) = open(ctx, id).await?;
        // A VM that is gone or does not answer holds nothing that runs. With --force, it is
        // not asked anything more (a hung VM would make every call wait for its limit): the
        // cleanup below kills hull-vmm and removes the rest.
        let status = match c.info(&sb).await {
            Ok(i) => i.status,
            Err(e) if force => bail!("its VM does not answer ({e})"),
            Err(e) => {
                tracing::debug!("container {id}: {e}; taking it for stopped");
                ContainerStatus::Stopped
            }
        };
        match status {
            ContainerStatus::Stopped | ContainerStatus::Created => {}
            s if !force => bail!(
                "cannot delete container {id} that is not stopped: {}",
                s.as_str()
            ),
            _ => {}
        }
        if let Err(e) = c.delete(&sb, true).await {
            tracing::debug!("container {id}: delete in the guest: {e}");
        }
        // The VM, its share, network and host cgroup: the sandbox removes what it made.
        sb.destroy(GRACE)
            .await
            .with_context(|| format!("cannot remove the VM of container \"{id}\""))?;
        Ok(())
    })
    .and_then(|r| r);
    match r {
        Ok(()) => Ok(()),
        Err(e) if force => {
            tracing::warn!("container {id}: {e:#}; cleaning up what is left");
            cleanup(&ctx.root, id).with_context(|| format!("cannot clean up container \"{id}\""))
        }
        Err(e) => Err(e),
    }
}

pub fn run(ctx: &Ctx, d: &liboci_cli::Delete) -> anyhow::Result<ExitCode> {
    delete(ctx, &d.container_id, d.force)?;
    Ok(ExitCode::SUCCESS)
}
