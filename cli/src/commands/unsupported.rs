//! Commands hull does not support (checkpoint, restore): each says so plainly and exits 1.

use std::process::ExitCode;

/// Accepts any arguments (for commands whose flags hull does not parse).
#[derive(clap::Args, Debug)]
pub struct Anything {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

/// checkpoint and restore.
pub fn checkpoint(command: &str) -> anyhow::Result<ExitCode> {
    anyhow::bail!("'{command}': checkpoint/restore is not supported yet")
}
