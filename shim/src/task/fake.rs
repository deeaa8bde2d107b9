//! Fakes for the task model's tests: a pod backend whose processes end when a test says so
//! (or when they are killed or deleted, as the agent would have them), which records every
//! call; and a publisher that records every event in order.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use hull_agent_protocol::{ContainerStats, ProcessId, StdioSpec};
use hull_runtime::container::Bundle;
use hull_runtime::process::{ContainerProcess, Exit, Streams, Want};
use oci_spec::runtime::{LinuxResources, Process, Spec};
use tokio::net::UnixStream;
use tokio::sync::{watch, Notify};

use super::{Backend, Event, Publisher, Result, TaskError, Vm, VmGone};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One process the fake agent runs.
struct FakeProcess {
    /// "c1" for container c1's init, "c1/ARG0" for an exec whose spec's args[0] is ARG0.
    name: String,
    exit: watch::Sender<Option<Exit>>,
}

/// What the fake backend and its VM share with the test.
pub struct Shared {
    calls: Mutex<Vec<String>>,
    changed: Notify,
    specs: Mutex<HashMap<PathBuf, Spec>>,
    processes: Mutex<HashMap<ProcessId, FakeProcess>>,
    next: AtomicU64,
    gone: watch::Sender<Option<String>>,
    /// Container ids whose create fails.
    fail_create: Mutex<Vec<String>>,
    /// Container ids whose init exits (with this code) while Start is still in progress.
    exit_during_start: Mutex<HashMap<String, u32>>,
    oom: AtomicBool,
    /// The agent's side of the streams opened, by process name.
    peers: Mutex<HashMap<String, Streams>>,
}

/// The fake pod backend; clones share everything.
#[derive(Clone)]
pub struct FakeBackend(pub Arc<Shared>);

impl FakeBackend {
    pub fn new() -> FakeBackend {
        FakeBackend(Arc::new(Shared {
            calls: Mutex::new(Vec::new()),
            changed: Notify::new(),
            specs: Mutex::new(HashMap::new()),
            processes: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            gone: watch::channel(None).0,
            fail_create: Mutex::new(Vec::new()),
            exit_during_start: Mutex::new(HashMap::new()),
            oom: AtomicBool::new(false),
            peers: Mutex::new(HashMap::new()),
        }))
    }

    /// The bundle `/bundles/ID` with these spec annotations.
    pub fn bundle(&self, id: &str, annotations: &[(&str, &str)]) -> PathBuf {
        let path = PathBuf::from("/bundles").join(id);
        let mut spec = Spec::default();
        spec.set_annotations(Some(
            annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        lock(&self.0.specs).insert(path.clone(), spec);
        path
    }

    pub fn fail_create(&self, id: &str) {
        lock(&self.0.fail_create).push(id.to_string());
    }

    pub fn exit_during_start(&self, id: &str, code: u32) {
        lock(&self.0.exit_during_start).insert(id.to_string(), code);
    }

    pub fn set_oom(&self) {
        self.0.oom.store(true, Ordering::SeqCst);
    }

    /// The VM dies.
    pub fn kill_vm(&self, why: &str) {
        self.0.gone.send_replace(Some(why.to_string()));
    }

    /// Process `name` ("c1", or "c1/ARG0" for an exec) ends with `code`.
    pub fn end(&self, name: &str, code: u32) {
        self.0.end(name, code);
    }

    /// The backend calls so far.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.0.calls).clone()
    }

    /// Waits (up to 5 s) until a call starting with `prefix` was made; returns it.
    pub async fn called(&self, prefix: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let changed = self.0.changed.notified();
            if let Some(c) = self.calls().into_iter().find(|c| c.starts_with(prefix)) {
                return c;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("no call {prefix:?} in {:?}", self.calls());
            }
        }
    }

    /// The agent's side of the streams of process `name`.
    pub fn peers(&self, name: &str) -> Streams {
        lock(&self.0.peers)
            .remove(name)
            .unwrap_or_else(|| panic!("no streams for {name}"))
    }
}

impl Shared {
    fn record(&self, call: String) {
        lock(&self.calls).push(call);
        self.changed.notify_waiters();
    }

    fn spawn(&self, name: String) -> ProcessId {
        let id = ProcessId(self.next.fetch_add(1, Ordering::SeqCst));
        let exit = watch::channel(None).0;
        lock(&self.processes).insert(id, FakeProcess { name, exit });
        id
    }

    fn end(&self, name: &str, code: u32) {
        let procs = lock(&self.processes);
        let p = procs
            .values()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        p.exit.send_if_modified(|e| {
            let first = e.is_none();
            if first {
                *e = Some(Exit {
                    code,
                    at: SystemTime::now(),
                    vm_gone: false,
                });
            }
            first
        });
    }

    fn name_of(&self, p: ProcessId) -> Result<String> {
        lock(&self.processes)
            .get(&p)
            .map(|p| p.name.clone())
            .ok_or_else(|| TaskError::NotFound(format!("no process {}", p.0)))
    }

    fn ended(&self, p: ProcessId) -> bool {
        lock(&self.processes)
            .get(&p)
            .is_some_and(|p| p.exit.borrow().is_some())
    }
}

pub struct FakeVm(Arc<Shared>);

#[async_trait]
impl Backend for FakeBackend {
    type Vm = FakeVm;

    fn load_bundle(&self, bundle: &Path) -> Result<Bundle> {
        let spec = lock(&self.0.specs).get(bundle).cloned().ok_or_else(|| {
            TaskError::InvalidArgument(format!("{}: no config.json", bundle.display()))
        })?;
        Ok(Bundle {
            dir: bundle.to_path_buf(),
            spec,
            rootfs: bundle.join("rootfs"),
        })
    }

    async fn boot(&self, id: &str, _spec: &Spec) -> Result<FakeVm> {
        self.0.record(format!("boot {id}"));
        Ok(FakeVm(self.0.clone()))
    }

    async fn destroy(&self, vm: Arc<FakeVm>) {
        // As the real backend: the VM goes, and with it every process.
        vm.0.gone.send_replace(Some("destroyed".into()));
        self.0.record("destroy".into());
    }
}

#[async_trait]
impl Vm for FakeVm {
    type Container = String;

    fn pid(&self) -> u32 {
        4242
    }

    fn gone(&self) -> watch::Receiver<Option<String>> {
        self.0.gone.subscribe()
    }

    async fn create(
        &self,
        id: &str,
        _bundle: &Bundle,
        stdio: StdioSpec,
        join: Option<&str>,
    ) -> Result<(String, ProcessId)> {
        let terminal = matches!(stdio, StdioSpec::Terminal { .. });
        self.0.record(format!(
            "create {id} join={} terminal={terminal}",
            join.unwrap_or("-")
        ));
        if lock(&self.0.fail_create).iter().any(|f| f == id) {
            return Err(TaskError::InvalidArgument(format!("{id}: broken spec")));
        }
        Ok((id.to_string(), self.0.spawn(id.to_string())))
    }

    async fn start(&self, c: &String) -> Result<()> {
        self.0.record(format!("start {c}"));
        let code = lock(&self.0.exit_during_start).get(c).copied();
        if let Some(code) = code {
            // The program ends at once; its waiter gets every chance to run before Start is
            // done.
            self.0.end(c, code);
            for _ in 0..50 {
                tokio::task::yield_now().await;
            }
        }
        Ok(())
    }

    async fn exec(&self, c: &String, process: &Process, _stdio: StdioSpec) -> Result<ProcessId> {
        let arg0 = process
            .args()
            .as_ref()
            .and_then(|a| a.first().cloned())
            .unwrap_or_default();
        self.0.record(format!("exec {c}/{arg0}"));
        Ok(self.0.spawn(format!("{c}/{arg0}")))
    }

    async fn signal(&self, p: &ContainerProcess, signal: i32, all: bool) -> Result<()> {
        let name = self.0.name_of(p.process)?;
        self.0
            .record(format!("signal {name} {signal} all={all} {:?}", p.target));
        if self.0.ended(p.process) {
            return Err(TaskError::NotFound(format!("{name} has exited")));
        }
        if signal == libc::SIGKILL || signal == libc::SIGTERM {
            let killed = hull_agent_protocol::ExitStatus::Signaled {
                signal,
                core_dumped: false,
            };
            self.0.end(&name, hull_runtime::process::exit_code(&killed));
        }
        Ok(())
    }

    async fn delete(&self, c: String) -> Result<()> {
        self.0.record(format!("delete {c}"));
        // The agent kills a container it deletes.
        self.0.end(&c, hull_runtime::process::KILLED_EXIT);
        Ok(())
    }

    async fn pause(&self, c: &String) -> Result<()> {
        self.0.record(format!("pause {c}"));
        Ok(())
    }

    async fn resume(&self, c: &String) -> Result<()> {
        self.0.record(format!("resume {c}"));
        Ok(())
    }

    async fn update(&self, c: &String, resources: &LinuxResources) -> Result<()> {
        let pids = resources.pids().as_ref().map(|p| p.limit());
        self.0.record(format!("update {c} pids={pids:?}"));
        Ok(())
    }

    async fn stats(&self, c: &String) -> Result<ContainerStats> {
        self.0.record(format!("stats {c}"));
        let mut s = ContainerStats::default();
        s.pids.current = lock(&self.0.processes)
            .values()
            .filter(|p| p.name.split('/').next() == Some(c.as_str()) && p.exit.borrow().is_none())
            .count() as u64;
        Ok(s)
    }

    async fn pids(&self, c: &String) -> Result<Vec<i32>> {
        self.0.record(format!("pids {c}"));
        let procs = lock(&self.0.processes);
        let mut pids: Vec<i32> = procs
            .iter()
            .filter(|(_, p)| p.name.split('/').next() == Some(c.as_str()))
            .filter(|(_, p)| p.exit.borrow().is_none())
            .map(|(id, _)| id.0 as i32 + 100)
            .collect();
        pids.sort();
        Ok(pids)
    }

    async fn oom_killed(&self, c: &String) -> bool {
        self.0.record(format!("oom_killed {c}"));
        self.0.oom.load(Ordering::SeqCst)
    }

    async fn attach(&self, p: &ContainerProcess, want: Want) -> Result<Streams> {
        let name = self.0.name_of(p.process)?;
        self.0.record(format!(
            "attach {name} stdin={} stdout={} stderr={}",
            want.stdin, want.stdout, want.stderr
        ));
        let mut ours = Streams::default();
        let mut theirs = Streams::default();
        let pair = || UnixStream::pair().map_err(|e| TaskError::Internal(e.to_string()));
        if want.stdout {
            let (a, b) = pair()?;
            (ours.stdout, theirs.stdout) = (Some(a), Some(b));
        }
        if want.stderr && !p.terminal {
            let (a, b) = pair()?;
            (ours.stderr, theirs.stderr) = (Some(a), Some(b));
        }
        if want.stdin {
            let (a, b) = pair()?;
            (ours.stdin, theirs.stdin) = (Some(a), Some(b));
        }
        lock(&self.0.peers).insert(name, theirs);
        Ok(ours)
    }

    async fn wait(&self, p: &ContainerProcess, vm_gone: VmGone) -> Exit {
        let rx = lock(&self.0.processes)
            .get(&p.process)
            .map(|p| p.exit.subscribe());
        let Some(mut rx) = rx else {
            return Exit::gone();
        };
        tokio::select! {
            r = rx.wait_for(Option::is_some) => match r {
                Ok(e) => e.unwrap_or_else(Exit::gone),
                Err(_) => Exit::gone(),
            },
            _ = vm_gone => Exit::gone(),
        }
    }

    async fn input_ended(&self, p: &ContainerProcess, sent: Option<u64>) -> Result<()> {
        let name = self.0.name_of(p.process)?;
        self.0.record(format!("input_ended {name} {sent:?}"));
        Ok(())
    }

    async fn resize(&self, p: &ContainerProcess, rows: u16, cols: u16) -> Result<()> {
        let name = self.0.name_of(p.process)?;
        self.0.record(format!("resize {name} {rows}x{cols}"));
        Ok(())
    }
}

/// A publisher that records every event in order.
#[derive(Clone, Default)]
pub struct Recorder(Arc<Mutex<Vec<(&'static str, Event)>>>);

impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        lock(&self.0).iter().map(|(_, e)| e.clone()).collect()
    }

    /// The topics published so far, in order.
    pub fn topics(&self) -> Vec<&'static str> {
        lock(&self.0).iter().map(|(t, _)| *t).collect()
    }
}

#[async_trait]
impl Publisher for Recorder {
    async fn publish(&self, topic: &'static str, event: Event) {
        lock(&self.0).push((topic, event));
    }
}
