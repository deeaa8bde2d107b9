//! A container's cgroup v2 directory in the guest: figures for `container_stats`, the OOM
//! count, its processes, the freezer and resource updates (the last three through
//! libcgroups, as libcontainer itself applies them).

use std::path::{Path, PathBuf};

use hull_agent_protocol::{
    AgentError, CgroupCpu, CgroupIoDevice, CgroupMemory, CgroupPids, ContainerStats, ErrorKind,
};
use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
    FreezerState,
};
use oci_spec::runtime::LinuxResources;

/// Where cgroup v2 is mounted in the guest (by the agent as PID 1).
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The container's cgroup: `cgroupsPath` from its spec (relative to the cgroup root), or
/// libcontainer's default `/youki/<id>` when the spec has none.
#[derive(Debug, Clone)]
pub struct Cgroup {
    /// As the spec gives it (`/hull/<id>`).
    relative: PathBuf,
    container: String,
}

fn io_err(what: String, e: impl std::fmt::Display) -> AgentError {
    AgentError::new(ErrorKind::Io, format!("{what}: {e}"))
}

impl Cgroup {
    pub fn new(cgroups_path: Option<&Path>, id: &str) -> Cgroup {
        let relative = match cgroups_path {
            Some(p) if p.is_absolute() => p.to_path_buf(),
            Some(p) => Path::new("/").join(p),
            None => Path::new("/youki").join(id),
        };
        Cgroup {
            relative,
            container: id.to_string(),
        }
    }

    pub fn dir(&self) -> PathBuf {
        Path::new(CGROUP_ROOT).join(self.relative.strip_prefix("/").unwrap_or(&self.relative))
    }

    fn manager(&self) -> Result<AnyCgroupManager, AgentError> {
        create_cgroup_manager(CgroupConfig {
            cgroup_path: self.relative.clone(),
            systemd_cgroup: false,
            container_name: self.container.clone(),
        })
        .map_err(|e| io_err(format!("cgroup {}", self.relative.display()), e))
    }

    pub fn pids(&self) -> Result<Vec<i32>, AgentError> {
        let pids = self
            .manager()?
            .get_all_pids()
            .map_err(|e| io_err(format!("processes of cgroup {}", self.dir().display()), e))?;
        Ok(pids.into_iter().map(|p| p.as_raw()).collect())
    }

    pub fn freeze(&self, frozen: bool) -> Result<(), AgentError> {
        let state = if frozen {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        };
        self.manager()?
            .freeze(state)
            .map_err(|e| io_err(format!("freezer of cgroup {}", self.dir().display()), e))
    }

    /// Whether the cgroup is frozen (`cgroup.events` says `frozen 1`).
    pub fn frozen(&self) -> bool {
        read_keyed(&self.dir().join("cgroup.events"), "frozen") == Some(1)
    }

    pub fn update(&self, resources: &LinuxResources) -> Result<(), AgentError> {
        self.manager()?
            .apply(&ControllerOpt {
                resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })
            .map_err(|e| {
                AgentError::new(
                    ErrorKind::InvalidArgument,
                    format!(
                        "cannot apply the resources to cgroup {}: {e}",
                        self.dir().display()
                    ),
                )
            })
    }

    /// Processes of this cgroup the OOM killer killed (`memory.events`).
    pub fn oom_kills(&self) -> u64 {
        read_keyed(&self.dir().join("memory.events"), "oom_kill").unwrap_or(0)
    }

    /// Every process in the cgroup gets `sig` (`kill --all`).
    pub fn signal_all(&self, sig: nix::sys::signal::Signal) -> Result<(), AgentError> {
        for pid in self.pids()? {
            // A process that exited meanwhile is fine.
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
        Ok(())
    }

    pub fn stats(&self) -> Result<ContainerStats, AgentError> {
        let dir = self.dir();
        if !dir.is_dir() {
            return Err(AgentError::new(
                ErrorKind::Io,
                format!("cgroup {} does not exist", dir.display()),
            ));
        }
        let one = |f: &str| read_value(&dir.join(f));
        let stat = |f: &str, k: &str| read_keyed(&dir.join(f), k).unwrap_or(0);
        let usage = one("memory.current").flatten().unwrap_or(0);
        let m = |k| stat("memory.stat", k);
        let memory = CgroupMemory {
            usage,
            limit: one("memory.max").flatten(),
            max_usage: one("memory.peak").flatten().unwrap_or(usage),
            swap_usage: one("memory.swap.current").flatten().unwrap_or(0),
            swap_limit: one("memory.swap.max").flatten(),
            anon: m("anon"),
            file: m("file"),
            kernel_stack: m("kernel_stack"),
            slab: m("slab"),
            sock: m("sock"),
            shmem: m("shmem"),
            file_mapped: m("file_mapped"),
            file_dirty: m("file_dirty"),
            file_writeback: m("file_writeback"),
            pgfault: m("pgfault"),
            pgmajfault: m("pgmajfault"),
            inactive_anon: m("inactive_anon"),
            active_anon: m("active_anon"),
            inactive_file: m("inactive_file"),
            active_file: m("active_file"),
            unevictable: m("unevictable"),
            oom: stat("memory.events", "oom"),
            oom_kill: stat("memory.events", "oom_kill"),
        };
        let c = |k| stat("cpu.stat", k);
        let cpu = CgroupCpu {
            usage_usec: c("usage_usec"),
            user_usec: c("user_usec"),
            system_usec: c("system_usec"),
            nr_periods: c("nr_periods"),
            nr_throttled: c("nr_throttled"),
            throttled_usec: c("throttled_usec"),
        };
        let pids = CgroupPids {
            current: one("pids.current").flatten().unwrap_or(0),
            limit: one("pids.max").flatten(),
        };
        let io = std::fs::read_to_string(dir.join("io.stat"))
            .map(|s| parse_io_stat(&s))
            .unwrap_or_default();
        Ok(ContainerStats {
            memory,
            cpu,
            pids,
            io,
        })
    }
}

/// A one-value cgroup file: `Some(None)` for "max", `None` when missing or unreadable.
fn read_value(path: &Path) -> Option<Option<u64>> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    if s == "max" {
        return Some(None);
    }
    s.parse().ok().map(Some)
}

/// `key value` lines (memory.stat, memory.events, cpu.stat, cgroup.events).
fn read_keyed(path: &Path, key: &str) -> Option<u64> {
    parse_keyed(&std::fs::read_to_string(path).ok()?, key)
}

fn parse_keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. ...` lines.
fn parse_io_stat(text: &str) -> Vec<CgroupIoDevice> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let (major, minor) = words.next()?.split_once(':')?;
            let mut d = CgroupIoDevice {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                ..Default::default()
            };
            for w in words {
                let Some((k, v)) = w.split_once('=') else {
                    continue;
                };
                let v = v.parse().unwrap_or(0);
                match k {
                    "rbytes" => d.rbytes = v,
                    "wbytes" => d.wbytes = v,
                    "rios" => d.rios = v,
                    "wios" => d.wios = v,
                    _ => {}
                }
            }
            Some(d)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_files_and_io_stat_parse() {
        let events = "low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\n";
        assert_eq!(parse_keyed(events, "oom_kill"), Some(1));
        assert_eq!(parse_keyed(events, "oom"), Some(2));
        assert_eq!(parse_keyed(events, "missing"), None);
        let io = "254:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\nbad line\n";
        assert_eq!(
            parse_io_stat(io),
            vec![CgroupIoDevice {
                major: 254,
                minor: 0,
                rbytes: 4096,
                wbytes: 8192,
                rios: 1,
                wios: 2
            }]
        );
    }

    #[test]
    fn cgroup_paths() {
        assert_eq!(
            Cgroup::new(Some(Path::new("/hull/c1")), "c1").dir(),
            Path::new("/sys/fs/cgroup/hull/c1")
        );
        assert_eq!(
            Cgroup::new(Some(Path::new("hull/c1")), "c1").dir(),
            Path::new("/sys/fs/cgroup/hull/c1")
        );
        assert_eq!(
            Cgroup::new(None, "c1").dir(),
            Path::new("/sys/fs/cgroup/youki/c1")
        );
    }
}
