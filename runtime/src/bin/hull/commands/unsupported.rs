//! Commands hull does not run yet: each says so plainly and exits 1.

use std::process::ExitCode;

/// Accepts any arguments (for commands whose flags hull does not parse).
#[derive(clap::Args, Debug)]
pub struct Anything {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// A container command whose flags were checked but whose work needs the guest agent's
/// container support, which is not built yet.
pub fn not_yet(command: &str) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "'{command}': running OCI containers is not implemented yet (hull boots sandbox VMs, \
         but the guest agent cannot create containers yet)"
    )
}

/// checkpoint and restore.
pub fn checkpoint(command: &str) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'{command}': checkpoint/restore is not supported yet")
}
