//! `hull spec`: writes a default `config.json` into the bundle directory, as `runc spec` does.

use std::process::ExitCode;

use anyhow::{bail, Context};
use liboci_cli::Spec;

pub fn run(args: &Spec) -> anyhow::Result<ExitCode> {
    let dir = args.bundle.clone().unwrap_or_else(|| ".".into());
    if !dir.is_dir() {
        bail!("bundle directory {} does not exist", dir.display());
    }
    let path = dir.join("config.json");
    if path.exists() {
        bail!("File {} exists. Remove it first", path.display());
    }
    let spec = if args.rootless {
        oci_spec::runtime::Spec::rootless(
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    } else {
        oci_spec::runtime::Spec::default()
    };
    // Indented, as runc writes it.
    let mut text = serde_json::to_string_pretty(&spec).context("cannot serialise the spec")?;
    text.push('\n');
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(ExitCode::SUCCESS)
}
