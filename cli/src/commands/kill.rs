//! `hull kill [--all] ID [SIGNAL]`: a signal (a name with or without `SIG`, or a number;
//! default SIGTERM) to the container's init, or with `--all` to all its processes.

use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use hull_runtime::agent::protocol::ContainerStatus;
use hull_runtime::sandbox::SandboxError;

use super::{block_on, check_id, open, Ctx};
use crate::signal::parse_signal;

/// runc's `kill` flags (liboci-cli's makes the signal mandatory; runc's does not).
#[derive(clap::Args, Debug)]
pub struct Kill {
    /// Container identifier
    #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new(), required = true)]
    pub container_id: String,
    /// Signal to send (e.g. KILL, SIGTERM, 9)
    #[arg(default_value = "SIGTERM")]
    pub signal: String,
    /// Send the signal to all processes inside the container
    #[arg(short, long)]
    pub all: bool,
}

pub fn run(ctx: &Ctx, k: &Kill) -> anyhow::Result<ExitCode> {
    let id = k.container_id.as_str();
    check_id(id)?;
    let signal = parse_signal(&k.signal).map_err(|e| anyhow!("{e}"))?;
    block_on(async {
        let (sb, c) = open(ctx, id).await?;
        // A VM that runs but does not answer (hull-vmm stopped or stuck, or its agent
        // unreachable) cannot deliver a signal. SIGKILL must still work: the VM is killed, and
        // every process of the container with it (the pid-file process then exits 137).
        if let Err(e @ SandboxError::AgentUnavailable(_)) = sb.agent() {
            if signal != libc::SIGKILL {
                bail!("cannot signal container \"{id}\": its VM does not answer ({e})");
            }
            tracing::warn!("container {id}: {e}; SIGKILL kills its VM");
            return sb
                .kill_vm()
                .await
                .with_context(|| format!("cannot kill the VM of container \"{id}\""));
        }
        let status = c
            .info(&sb)
            .await
            .with_context(|| format!("container \"{id}\""))?
            .status;
        if status == ContainerStatus::Stopped {
            bail!("container not running");
        }
        c.kill(&sb, signal, k.all)
            .await
            .with_context(|| format!("cannot signal container \"{id}\""))
    })??;
    Ok(ExitCode::SUCCESS)
}
