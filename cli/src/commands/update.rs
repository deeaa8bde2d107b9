//! `hull update`: new resource limits for a running container, from runc's flags or from
//! `-r FILE` (a JSON `linux.resources` object; `-` reads stdin).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context};
use oci_spec::runtime::LinuxResources;
use serde_json::{json, Map, Value};

use super::{block_on, check_id, open, Ctx};

/// runc's `update` flags.
#[derive(clap::Args, Debug, Default)]
pub struct Update {
    /// Read the new limits from this JSON file (linux.resources; - for stdin); other flags are
    /// then ignored
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes
    #[arg(long)]
    pub memory: Option<i64>,
    /// Memory reservation (soft limit) in bytes
    #[arg(long)]
    pub memory_reservation: Option<i64>,
    /// Memory + swap limit in bytes (-1: unlimited)
    #[arg(long)]
    pub memory_swap: Option<i64>,
    /// CPU shares (relative weight)
    #[arg(long, alias = "cpu-shares")]
    pub cpu_share: Option<u64>,
    /// CPU CFS quota in microseconds per period
    #[arg(long)]
    pub cpu_quota: Option<i64>,
    /// CPU CFS period in microseconds
    #[arg(long)]
    pub cpu_period: Option<u64>,
    /// CPUs to use (e.g. 0-3,7)
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    /// Memory nodes to use
    #[arg(long)]
    pub cpuset_mems: Option<String>,
    /// Most processes in the container (-1 or 0: unlimited)
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// I/O weight
    #[arg(long)]
    pub blkio_weight: Option<u16>,
    /// Container identifier
    #[arg(value_parser = clap::builder::NonEmptyStringValueParser::new(), required = true)]
    pub container_id: String,
}

/// Parses a `linux.resources` JSON object; errors name the field.
pub fn parse_resources(data: &[u8], what: &str) -> anyhow::Result<LinuxResources> {
    let de = &mut serde_json::Deserializer::from_slice(data);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        if field == "." {
            anyhow!("invalid resources in {what}: {}", e.inner())
        } else {
            anyhow!("invalid resources in {what}: field {field}: {}", e.inner())
        }
    })
}

/// The limits the flags ask for.
pub fn from_flags(u: &Update) -> anyhow::Result<LinuxResources> {
    let mut memory = Map::new();
    let put = |m: &mut Map<String, Value>, k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.into(), v);
        }
    };
    put(&mut memory, "limit", u.memory.map(Into::into));
    put(
        &mut memory,
        "reservation",
        u.memory_reservation.map(Into::into),
    );
    put(&mut memory, "swap", u.memory_swap.map(Into::into));
    let mut cpu = Map::new();
    put(&mut cpu, "shares", u.cpu_share.map(Into::into));
    put(&mut cpu, "quota", u.cpu_quota.map(Into::into));
    put(&mut cpu, "period", u.cpu_period.map(Into::into));
    put(&mut cpu, "cpus", u.cpuset_cpus.clone().map(Into::into));
    put(&mut cpu, "mems", u.cpuset_mems.clone().map(Into::into));
    let mut r = Map::new();
    if !memory.is_empty() {
        r.insert("memory".into(), memory.into());
    }
    if !cpu.is_empty() {
        r.insert("cpu".into(), cpu.into());
    }
    if let Some(p) = u.pids_limit {
        r.insert("pids".into(), json!({ "limit": p }));
    }
    if let Some(w) = u.blkio_weight {
        r.insert("blockIO".into(), json!({ "weight": w }));
    }
    if r.is_empty() {
        bail!("nothing to update: give -r FILE or a limit (--memory, --cpu-quota, ...)");
    }
    parse_resources(Value::Object(r).to_string().as_bytes(), "the flags")
}

pub fn run(ctx: &Ctx, u: &Update) -> anyhow::Result<ExitCode> {
    let id = u.container_id.as_str();
    check_id(id)?;
    let resources = match &u.resources {
        Some(p) => {
            let mut data = Vec::new();
            if p.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_end(&mut data)
                    .context("cannot read the resources from stdin")?;
            } else {
                data = std::fs::read(p).map_err(|e| anyhow!("cannot read {}: {e}", p.display()))?;
            }
            parse_resources(&data, &p.display().to_string())?
        }
        None => from_flags(u)?,
    };
    block_on(async {
        let (sb, c) = open(ctx, id).await?;
        c.update(&sb, &resources)
            .await
            .with_context(|| format!("cannot update container \"{id}\""))
    })??;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_files() {
        let u = Update {
            memory: Some(1 << 28),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            pids_limit: Some(64),
            cpuset_cpus: Some("0-1".into()),
            ..Default::default()
        };
        let r = from_flags(&u).unwrap();
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(1 << 28));
        assert_eq!(r.cpu().as_ref().unwrap().quota(), Some(50_000));
        assert_eq!(r.cpu().as_ref().unwrap().cpus().as_deref(), Some("0-1"));
        assert_eq!(r.pids().as_ref().unwrap().limit(), 64);
        assert!(from_flags(&Update::default()).is_err());
        let e = parse_resources(br#"{"memory":{"limit":"lots"}}"#, "r.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory.limit") && e.contains("r.json"), "{e}");
    }
}
