//! `hull ps [--format table|json] ID`: the container's processes, as guest pids (they live in
//! the container's VM; the host has no pid for them).

use std::process::ExitCode;

use anyhow::{bail, Context};

use super::{block_on, check_id, open, Ctx};

/// The pids in runc's table shape (one PID column) or as a JSON array.
pub fn render(pids: &[i32], format: &str) -> anyhow::Result<String> {
    match format {
        "json" => Ok(serde_json::to_string(pids)?),
        "table" => {
            let mut s = String::from("PID\n");
            for p in pids {
                s.push_str(&format!("{p}\n"));
            }
            Ok(s.trim_end().to_string())
        }
        other => bail!("invalid format option {other:?}: it must be table or json"),
    }
}

pub fn run(ctx: &Ctx, p: &liboci_cli::Ps) -> anyhow::Result<ExitCode> {
    let id = p.container_id.as_str();
    check_id(id)?;
    render(&[], &p.format)?;
    if !p.ps_options.is_empty() {
        bail!("ps options are not supported: the container's processes run in its VM");
    }
    let pids = block_on(async {
        let (sb, c) = open(ctx, id).await?;
        c.pids(&sb)
            .await
            .with_context(|| format!("container \"{id}\""))
    })??;
    println!("{}", render(&pids, &p.format)?);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(render(&[1, 7], "json").unwrap(), "[1,7]");
        assert_eq!(render(&[], "json").unwrap(), "[]");
        assert_eq!(render(&[1, 7], "table").unwrap(), "PID\n1\n7");
        assert!(render(&[1], "yaml")
            .unwrap_err()
            .to_string()
            .contains("yaml"));
    }
}
