//! Knowing when a sandbox's hull-vmm has exited, and why: the one place besides the cleanup
//! that waits for hull-vmm.
//!
//! A thread waits for it: the process that created the sandbox is hull-vmm's parent and gets
//! its wait status, decoded as hull-vmm's exit ([`VmmExit`]); any other process (or a parent
//! whose child another wait reaped first) watches the pid with its start time until it is gone.
//! Either way the end of `vmm.log` (hull-vmm's last lines, which say why it stopped) is part
//! of the reason.

use std::time::Duration;

use hull_vmm_api::exit::VmmExit;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::watch;

use super::{vmm_alive, Layout, SandboxState};

/// How often a hull-vmm that is not this process's child is looked at.
const POLL: Duration = Duration::from_millis(100);
/// How many of the log's last lines go into the reason.
const LOG_LINES: usize = 5;
/// The most of the log that is read for them.
const LOG_TAIL_BYTES: u64 = 16 * 1024;

/// Says once a sandbox's hull-vmm has exited. Cheap to clone: every clone sees the same end.
#[derive(Clone, Debug)]
pub struct VmmWatch {
    rx: watch::Receiver<Option<String>>,
}

impl VmmWatch {
    pub(super) fn start(state: &SandboxState, layout: &Layout) -> VmmWatch {
        let (tx, rx) = watch::channel(None);
        let state = state.clone();
        let log = layout.vmm_log();
        let spawned = std::thread::Builder::new()
            .name("vmm-watch".into())
            .spawn(move || {
                let how = wait_gone(&state);
                let reason = format!(
                    "hull-vmm (pid {}) stopped: {how}; its log ends: {}",
                    state.vmm_pid,
                    log_tail(&log)
                );
                tracing::warn!("sandbox {}: {reason}", state.id);
                let _ = tx.send(Some(reason));
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start the thread that watches hull-vmm: {e}");
        }
        VmmWatch { rx }
    }

    /// A receiver that holds `Some(reason)` once hull-vmm has stopped.
    pub fn receiver(&self) -> watch::Receiver<Option<String>> {
        self.rx.clone()
    }

    /// Why hull-vmm stopped, if it has.
    pub fn gone_now(&self) -> Option<String> {
        self.rx.borrow().clone()
    }

    /// Waits until hull-vmm has stopped; returns why. Never returns while it runs.
    pub async fn gone(mut self) -> String {
        loop {
            if let Some(r) = self.rx.borrow_and_update().clone() {
                return r;
            }
            if self.rx.changed().await.is_err() {
                // The watching thread could not start or died: nothing will ever say.
                return std::future::pending().await;
            }
        }
    }
}

/// Blocks until hull-vmm is gone; says how it ended.
fn wait_gone(state: &SandboxState) -> String {
    let pid = Pid::from_raw(state.vmm_pid as i32);
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => {
                return VmmExit::from_wait(Some(code), None).to_string()
            }
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                return VmmExit::from_wait(None, Some(sig as i32)).to_string()
            }
            // Stopped or continued (only reported when asked for): not an end.
            Ok(_) | Err(Errno::EINTR) => continue,
            // Not this process's child, or already reaped by another wait: watch the pid.
            Err(_) => break,
        }
    }
    while vmm_alive(state) {
        std::thread::sleep(POLL);
    }
    "it exited (not this process's child: its status is its parent's)".to_string()
}

/// The last lines of hull-vmm's log, joined with " | ".
fn log_tail(path: &std::path::Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::from("(no log)");
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)));
    let mut buf = Vec::new();
    let _ = f.take(LOG_TAIL_BYTES).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(LOG_LINES)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state_of(child: &std::process::Child) -> SandboxState {
        let pid = child.id();
        SandboxState {
            id: "w".into(),
            vmm_pid: pid,
            vmm_start_time: super::super::process_start_time(pid).unwrap(),
            vcpus: 1,
            memory_mib: 64,
            created: 0,
            own_network: None,
            host_cgroup: None,
        }
    }

    #[tokio::test]
    async fn a_child_is_reaped_and_its_exit_decoded_with_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::of_dir(dir.path());
        std::fs::write(
            layout.vmm_log(),
            "one\ntwo\nthree\nfour\nfive\nsix\nguest panicked\n",
        )
        .unwrap();
        // Reaped by the watch, not here: that is what is tested.
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new("sh")
            .args(["-c", "read x; exit 3"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let w = VmmWatch::start(&state_of(&child), &layout);
        assert_eq!(w.gone_now(), None, "it still runs");
        drop(child.stdin);
        let why = tokio::time::timeout(Duration::from_secs(30), w.clone().gone())
            .await
            .expect("the watch sees the exit");
        let expected = VmmExit::from_wait(Some(3), None).to_string();
        assert!(why.contains(&expected), "{why}");
        assert!(
            why.contains("three | four | five | six | guest panicked"),
            "{why}"
        );
        assert!(!why.contains("two"), "{why}");
        assert_eq!(w.gone_now().as_deref(), Some(why.as_str()));
    }

    #[tokio::test]
    async fn a_process_reaped_elsewhere_is_still_seen_gone() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::of_dir(dir.path());
        let mut child = std::process::Command::new("sleep")
            .arg("0.3")
            .spawn()
            .unwrap();
        let state = state_of(&child);
        // Another wait takes the status first (the cleanup's reap does this).
        child.wait().unwrap();
        let w = VmmWatch::start(&state, &layout);
        let why = tokio::time::timeout(Duration::from_secs(30), w.gone())
            .await
            .expect("the watch sees it gone");
        assert!(why.contains("(no log)"), "{why}");
    }
}
