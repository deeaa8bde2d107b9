//! A sandbox's state on disk: `<root>/<id>/state.json`, written whole and renamed into place,
//! and `<root>/<id>/lock`, an exclusive `flock` that serialises the commands acting on it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::SandboxError;

use super::layout::{LOCK_FILE, STATE_FILE};

/// What a later process needs to find and drive a sandbox again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxState {
    /// The sandbox's id (its directory's name).
    pub id: String,
    /// hull-vmm's pid.
    pub vmm_pid: u32,
    /// hull-vmm's start time in clock ticks since boot (`/proc/PID/stat` field 22), so that a
    /// recycled pid is never taken for it.
    pub vmm_start_time: u64,
    /// Guest vCPUs and memory.
    pub vcpus: u32,
    pub memory_mib: u64,
    /// When the sandbox was created, seconds since the epoch.
    pub created: u64,
    /// The network namespace of the sandbox's own and the tap its NIC is on, until a container
    /// attaches what its prestart hooks put there (`SandboxNetwork::Own`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub own_network: Option<OwnNetwork>,
    /// The host cgroup directory hull-vmm was started in: the sandbox's, removed with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cgroup: Option<PathBuf>,
}

/// A sandbox's own network namespace (`<dir>/net.ns`) and the placeholder tap in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnNetwork {
    pub netns: PathBuf,
    pub tap: String,
}

impl SandboxState {
    /// Reads `dir/state.json`.
    pub fn read(dir: &Path) -> Result<SandboxState, SandboxError> {
        let path = dir.join(STATE_FILE);
        let data = std::fs::read(&path).map_err(|source| SandboxError::Io {
            what: "cannot read the sandbox state",
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&data).map_err(|e| SandboxError::BadState {
            path,
            reason: e.to_string(),
        })
    }

    /// Writes `dir/state.json` atomically.
    pub fn write(&self, dir: &Path) -> Result<(), SandboxError> {
        let path = dir.join(STATE_FILE);
        let tmp = dir.join(".state.json.tmp");
        let io = |source| SandboxError::Io {
            what: "cannot write the sandbox state",
            path: path.clone(),
            source,
        };
        let data = serde_json::to_vec_pretty(self).map_err(|e| SandboxError::BadState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut f = crate::vmm::private_file(&tmp).map_err(io)?;
        f.write_all(&data).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }
}

/// An exclusive lock on a sandbox, held while a command acts on it; released on drop.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock, waiting for another command that holds it.
    pub fn acquire(dir: &Path) -> Result<StateLock, SandboxError> {
        let path = dir.join(LOCK_FILE);
        let io = |source| SandboxError::Io {
            what: "cannot lock the sandbox",
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock on a file descriptor this function owns; no memory is involved.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        Ok(StateLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A process's start time in clock ticks since boot, or None if it does not exist (or is a
/// zombie: it has exited and only waits to be reaped).
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); field 22 (starttime) is at index 19.
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Whether process `pid` is stopped (state `T`, by SIGSTOP or a job-control signal, or `t`,
/// by a tracer): a stopped process answers nothing until it is continued.
pub fn process_stopped(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .and_then(|rest| rest.split_whitespace().next());
    matches!(state, Some("T") | Some("t"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stopped_process_is_seen_stopped() {
        let mut child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let pid = child.id();
        assert!(!process_stopped(pid));
        let p = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGSTOP).unwrap();
        // waitpid with WUNTRACED returns once the stop has happened.
        nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WUNTRACED)).unwrap();
        assert!(process_stopped(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!process_stopped(pid), "a reaped process is not stopped");
    }

    #[test]
    fn start_time_of_this_process_and_of_none() {
        let me = process_start_time(std::process::id()).expect("this process exists");
        assert!(me > 0);
        assert_eq!(process_start_time(std::process::id()), Some(me));
        assert_eq!(process_start_time(u32::MAX), None);
    }

    #[test]
    fn state_round_trip_and_bad_state() {
        let dir = std::env::temp_dir().join(format!("hull-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = SandboxState {
            id: "a".into(),
            vmm_pid: 1,
            vmm_start_time: 2,
            vcpus: 1,
            memory_mib: 256,
            created: 3,
            own_network: None,
            host_cgroup: Some("/sys/fs/cgroup/pod/x".into()),
        };
        s.write(&dir).unwrap();
        assert_eq!(SandboxState::read(&dir).unwrap(), s);
        std::fs::write(dir.join(STATE_FILE), b"{not json").unwrap();
        let e = SandboxState::read(&dir).unwrap_err().to_string();
        assert!(e.contains("state.json"), "{e}");
        let _l = StateLock::acquire(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
