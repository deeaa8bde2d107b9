//! `hull events [--stats] [--interval N] ID`: the container's resource usage as runc's
//! events. `--stats`: one `{"type":"stats",...}` line, then exit. Otherwise a stats event
//! every interval until the container stops (or is deleted), and an `{"type":"oom",...}` event
//! when its OOM-kill count first shows.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use hull_runtime::agent::protocol::{ContainerStats, ContainerStatus};
use serde_json::{json, Value};

use super::{block_on, check_id, open, Ctx};

/// runc's stats event for the container's cgroup figures.
pub fn stats_event(id: &str, s: &ContainerStats) -> Value {
    let m = &s.memory;
    let raw = json!({
        "anon": m.anon, "file": m.file, "kernel_stack": m.kernel_stack, "slab": m.slab,
        "sock": m.sock, "shmem": m.shmem, "file_mapped": m.file_mapped,
        "file_dirty": m.file_dirty, "file_writeback": m.file_writeback, "pgfault": m.pgfault,
        "pgmajfault": m.pgmajfault, "inactive_anon": m.inactive_anon,
        "active_anon": m.active_anon, "inactive_file": m.inactive_file,
        "active_file": m.active_file, "unevictable": m.unevictable,
    });
    let blkio: Vec<Value> = s
        .io
        .iter()
        .flat_map(|d| {
            [("Read", d.rbytes), ("Write", d.wbytes)]
                .map(|(op, v)| json!({"major": d.major, "minor": d.minor, "op": op, "value": v}))
        })
        .collect();
    json!({
        "type": "stats",
        "id": id,
        "data": {
            "cpu": {
                "usage": {
                    "total": s.cpu.usage_usec.saturating_mul(1000),
                    "kernel": s.cpu.system_usec.saturating_mul(1000),
                    "user": s.cpu.user_usec.saturating_mul(1000),
                },
                "throttling": {
                    "periods": s.cpu.nr_periods,
                    "throttledPeriods": s.cpu.nr_throttled,
                    "throttledTime": s.cpu.throttled_usec.saturating_mul(1000),
                },
            },
            "memory": {
                "usage": {
                    "usage": m.usage,
                    "limit": m.limit.unwrap_or(u64::MAX),
                    "max": m.max_usage,
                    "failcnt": m.oom,
                },
                "swap": {
                    "usage": m.swap_usage,
                    "limit": m.swap_limit.unwrap_or(u64::MAX),
                },
                "cache": m.file,
                "raw": raw,
            },
            "pids": { "current": s.pids.current, "limit": s.pids.limit.unwrap_or(0) },
            "blkio": { "ioServiceBytesRecursive": blkio },
        }
    })
}

/// One look at the container: its status, whether the OOM killer struck, its figures.
async fn sample(
    ctx: &Ctx,
    id: &str,
) -> anyhow::Result<(ContainerStatus, bool, Option<ContainerStats>)> {
    // The sandbox is locked only while it is looked at: other commands run meanwhile.
    let (sb, c) = open(ctx, id).await?;
    let info = c
        .info(&sb)
        .await
        .with_context(|| format!("container \"{id}\""))?;
    let stats = if info.status == ContainerStatus::Stopped {
        None
    } else {
        Some(
            c.stats(&sb)
                .await
                .with_context(|| format!("container \"{id}\": stats"))?,
        )
    };
    Ok((info.status, info.oom_killed, stats))
}

pub fn run(ctx: &Ctx, e: &liboci_cli::Events) -> anyhow::Result<ExitCode> {
    let id = e.container_id.as_str();
    check_id(id)?;
    if e.interval == 0 {
        bail!("invalid interval 0: it must be at least 1 second");
    }
    block_on(async {
        let mut oom_seen = false;
        let mut first = true;
        loop {
            let (status, oom, stats) = match sample(ctx, id).await {
                Ok(s) => s,
                // Deleted since the last look: the events end.
                Err(_) if !first && !ctx.exists(id) => return Ok(()),
                Err(err) => return Err(err),
            };
            first = false;
            if e.stats {
                let Some(s) = stats else {
                    bail!("container \"{id}\" is not running");
                };
                println!("{}", stats_event(id, &s));
                return Ok(());
            }
            if oom && !oom_seen {
                oom_seen = true;
                println!("{}", json!({"type": "oom", "id": id}));
            }
            match stats {
                Some(s) => println!("{}", stats_event(id, &s)),
                None => return Ok(()),
            }
            if status == ContainerStatus::Stopped {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(u64::from(e.interval))).await;
        }
    })??;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_stats_shape() {
        let mut s = ContainerStats::default();
        s.cpu.usage_usec = 5;
        s.memory.usage = 4096;
        s.memory.limit = Some(1 << 20);
        s.memory.anon = 7;
        s.pids.current = 3;
        let v = stats_event("c1", &s);
        assert_eq!(v["type"], "stats");
        assert_eq!(v["id"], "c1");
        assert_eq!(v["data"]["cpu"]["usage"]["total"], 5000);
        assert_eq!(v["data"]["memory"]["usage"]["usage"], 4096);
        assert_eq!(v["data"]["memory"]["usage"]["limit"], 1 << 20);
        assert_eq!(v["data"]["memory"]["raw"]["anon"], 7);
        assert_eq!(v["data"]["pids"]["current"], 3);
        assert_eq!(v["data"]["pids"]["limit"], 0);
    }
}
