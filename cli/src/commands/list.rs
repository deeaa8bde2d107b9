//! `hull list [--format table|json] [-q]`: the containers under the root, in runc's columns
//! (ID PID STATUS BUNDLE CREATED OWNER). PID is the container's pid-file process on the host.

use std::os::unix::fs::MetadataExt;
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::{block_on, open, Ctx};

/// runc's tabwriter: columns at least 12 wide, 3 spaces of padding.
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let width: Vec<usize> = (0..cols)
        .map(|i| {
            let w = rows
                .iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.len() + 3)
                .max()
                .unwrap_or(0);
            w.max(12)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}", w = width[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A uid's name from /etc/passwd, or `#uid` (as runc prints an unknown owner).
pub fn owner(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("#{uid}"))
}

/// The containers under the root, each as runc's list entry.
fn entries(ctx: &Ctx) -> anyhow::Result<Vec<Value>> {
    let dir = match std::fs::read_dir(&ctx.root) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => bail!("cannot list {}: {e}", ctx.root.display()),
    };
    let mut ids: Vec<(String, u32)> = Vec::new();
    for e in dir {
        let e = e.with_context(|| format!("cannot list {}", ctx.root.display()))?;
        let Some(id) = e.file_name().to_str().map(String::from) else {
            continue;
        };
        if ctx.exists(&id) {
            let uid = e.metadata().map(|m| m.uid()).unwrap_or(0);
            ids.push((id, uid));
        }
    }
    ids.sort();
    block_on(async {
        let mut out = Vec::new();
        for (id, uid) in ids {
            let state = async {
                let (sb, c) = open(ctx, &id).await?;
                let s = c.oci_state(&sb).await?;
                Ok::<_, anyhow::Error>(serde_json::to_value(s)?)
            }
            .await;
            let mut v = match state {
                Ok(v) => v,
                // Racing a delete, or a broken sandbox: list what is known.
                Err(e) => {
                    tracing::warn!("container {id}: {e:#}");
                    json!({"id": id, "pid": 0, "status": "stopped", "bundle": "", "created": ""})
                }
            };
            v["owner"] = owner(uid).into();
            out.push(v);
        }
        out
    })
}

pub fn run(ctx: &Ctx, l: &liboci_cli::List) -> anyhow::Result<ExitCode> {
    if l.format != "table" && l.format != "json" {
        bail!(
            "invalid format option {:?}: it must be table or json",
            l.format
        );
    }
    let list = entries(ctx)?;
    if l.quiet {
        for v in &list {
            println!("{}", v["id"].as_str().unwrap_or_default());
        }
        return Ok(ExitCode::SUCCESS);
    }
    if l.format == "json" {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut rows = vec![["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]
        .map(String::from)
        .to_vec()];
    for v in &list {
        rows.push(
            ["id", "pid", "status", "bundle", "created", "owner"]
                .iter()
                .map(|k| s(&v[*k]))
                .collect(),
        );
    }
    print!("{}", table(&rows));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_columns() {
        let rows = vec![
            vec!["ID".to_string(), "PID".into(), "OWNER".into()],
            vec![
                "a-long-container-id".to_string(),
                "12".into(),
                "root".into(),
            ],
        ];
        assert_eq!(
            table(&rows),
            "ID                    PID         OWNER\na-long-container-id   12          root\n"
        );
        assert_eq!(owner(0), "root");
        assert_eq!(owner(4_000_000_000), "#4000000000");
    }
}
