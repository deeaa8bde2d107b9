//! Guest memory and CPU figures from /proc.

use hull_agent_protocol::{AgentError, CpuStats, ErrorKind, GuestStats, MemoryStats};

fn read(path: &str) -> Result<String, AgentError> {
    std::fs::read_to_string(path)
        .map_err(|e| AgentError::new(ErrorKind::Io, format!("read {path}: {e}")))
}

/// Parses /proc/meminfo (values in kB).
pub fn parse_meminfo(text: &str) -> MemoryStats {
    let mut m = MemoryStats::default();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let (Some(key), Some(val)) = (it.next(), it.next()) else {
            continue;
        };
        let bytes = val.parse::<u64>().unwrap_or(0).saturating_mul(1024);
        match key {
            "MemTotal:" => m.total_bytes = bytes,
            "MemFree:" => m.free_bytes = bytes,
            "MemAvailable:" => m.available_bytes = bytes,
            "Buffers:" => m.buffers_bytes = bytes,
            "Cached:" => m.cached_bytes = bytes,
            _ => {}
        }
    }
    m
}

/// Parses the `cpu` line of /proc/stat (clock ticks) into microseconds.
pub fn parse_stat(text: &str, ticks_per_sec: u64, online_cpus: u32) -> CpuStats {
    let mut c = CpuStats {
        online_cpus,
        ..CpuStats::default()
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return c;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let us = |i: usize| {
        v.get(i)
            .copied()
            .unwrap_or(0)
            .saturating_mul(1_000_000)
            .checked_div(ticks_per_sec)
            .unwrap_or(0)
    };
    c.user_usec = us(0);
    c.nice_usec = us(1);
    c.system_usec = us(2);
    c.idle_usec = us(3);
    c.iowait_usec = us(4);
    c.irq_usec = us(5);
    c.softirq_usec = us(6);
    c.steal_usec = us(7);
    c
}

pub fn collect() -> Result<GuestStats, AgentError> {
    let memory = parse_meminfo(&read("/proc/meminfo")?);
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100)
        .max(1) as u64;
    // SAFETY: sysconf takes a plain integer and has no memory effects.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as u32;
    let cpu = parse_stat(&read("/proc/stat")?, ticks, cpus);
    let uptime = read("/proc/uptime")?;
    let uptime_ms = uptime
        .split_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0);
    let loadavg = read("/proc/loadavg")?;
    let f: Vec<&str> = loadavg.split_whitespace().collect();
    let load = |i: usize| f.get(i).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    let tasks = f
        .get(3)
        .and_then(|s| s.split('/').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(GuestStats {
        uptime_ms,
        memory,
        cpu,
        load_avg: [load(0), load(1), load(2)],
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_stat_parse() {
        let m = parse_meminfo(
            "MemTotal:        2000 kB\nMemFree:  1000 kB\nMemAvailable: 1500 kB\nBuffers: 10 kB\n\
             Cached: 20 kB\nSwapTotal: 0 kB\nbogus\n",
        );
        assert_eq!(m.total_bytes, 2000 * 1024);
        assert_eq!(m.free_bytes, 1000 * 1024);
        assert_eq!(m.available_bytes, 1500 * 1024);
        assert_eq!(m.buffers_bytes, 10 * 1024);
        assert_eq!(m.cached_bytes, 20 * 1024);
        let c = parse_stat("cpu  100 2 30 400 5 6 7 8 0 0\ncpu0 1 1 1 1\n", 100, 2);
        assert_eq!(c.user_usec, 1_000_000);
        assert_eq!(c.nice_usec, 20_000);
        assert_eq!(c.idle_usec, 4_000_000);
        assert_eq!(c.steal_usec, 80_000);
        assert_eq!(c.online_cpus, 2);
        assert_eq!(parse_stat("garbage", 0, 1).user_usec, 0);
    }
}
