//! hull-vmm's control API request parser (`hull_vmm::api::handle_line`) with a fake
//! `VmController`. The input is split into lines as the API server splits a connection's bytes;
//! each is handled. Oracle: no panic; every response serializes to one JSON line that reads
//! back the same; a shutdown never reaches the VM with a timeout over the documented maximum;
//! a successful pause/resume/shutdown reports the state.

#![no_main]

use std::sync::Mutex;

use hull_vmm::api::{
    handle_line, ApiResponse, RunState, VmController, VmStats, MAX_SHUTDOWN_TIMEOUT_MS,
};
use libfuzzer_sys::fuzz_target;

struct FakeVm(Mutex<RunState>);

impl VmController for FakeVm {
    fn pause(&self) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        match *s {
            RunState::Running => {
                *s = RunState::Paused;
                Ok(())
            }
            _ => Err("not running".into()),
        }
    }
    fn resume(&self) -> Result<(), String> {
        let mut s = self.0.lock().unwrap();
        match *s {
            RunState::Paused => {
                *s = RunState::Running;
                Ok(())
            }
            _ => Err("not paused".into()),
        }
    }
    fn shutdown(&self, timeout_ms: u64) -> Result<(), String> {
        assert!(
            timeout_ms <= MAX_SHUTDOWN_TIMEOUT_MS,
            "shutdown timeout {timeout_ms}"
        );
        *self.0.lock().unwrap() = RunState::Stopping;
        Ok(())
    }
    fn stats(&self) -> VmStats {
        VmStats {
            vcpus: 1,
            memory_mib: 128,
            uptime_ms: 7,
            state: *self.0.lock().unwrap(),
            exits: Default::default(),
        }
    }
    fn state(&self) -> RunState {
        *self.0.lock().unwrap()
    }
}

fuzz_target!(|data: &[u8]| {
    let vm = FakeVm(Mutex::new(RunState::Running));
    for line in data.split(|&b| b == b'\n').take(64) {
        let r = handle_line(&vm, line);
        let text = serde_json::to_string(&r).unwrap();
        assert!(!text.contains('\n'));
        let back: ApiResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
        if r.ok && r.stats.is_none() {
            assert!(r.state.is_some(), "{text}");
        }
    }
});
