//! `hull state ID`: runc's state JSON, indented as runc prints it.

use std::process::ExitCode;

use anyhow::Context;

use super::{block_on, open, Ctx};

pub fn run(ctx: &Ctx, s: &liboci_cli::State) -> anyhow::Result<ExitCode> {
    let id = s.container_id.as_str();
    let state = block_on(async {
        let (sb, c) = open(ctx, id).await?;
        let state = c
            .oci_state(&sb)
            .await
            .with_context(|| format!("container \"{id}\""))?;
        serde_json::to_string_pretty(&state).context("cannot serialise the state")
    })??;
    println!("{state}");
    Ok(ExitCode::SUCCESS)
}
