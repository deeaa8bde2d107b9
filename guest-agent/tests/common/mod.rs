//! A host-mode agent (`hull-agent --listen unix:PATH`) for tests, stopped and cleaned on drop.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hull_runtime::agent::{AgentClient, Endpoint};

pub struct TestAgent {
    child: Option<Child>,
    dir: PathBuf,
    pub sock: PathBuf,
}

impl TestAgent {
    pub fn start() -> TestAgent {
        TestAgent::start_with_env(&[])
    }

    /// Starts the agent with extra environment variables (e.g. a fault-injection hook).
    pub fn start_with_env(env: &[(&str, &str)]) -> TestAgent {
        let base = std::env::temp_dir();
        let dir = (0u32..)
            .map(|n| base.join(format!("hull-agent-test.{}.{n}", std::process::id())))
            .find(|p| std::fs::create_dir(p).is_ok())
            .unwrap();
        let sock = dir.join("agent.sock");
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_hull-agent"))
            .arg("--listen")
            .arg(format!("unix:{}", sock.display()))
            .env("HULL_AGENT_LOG", "debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start hull-agent");
        TestAgent {
            child: Some(child),
            dir,
            sock,
        }
    }

    /// An agent and a client connected to it.
    pub async fn with_client() -> (TestAgent, AgentClient) {
        let agent = TestAgent::start();
        let c = agent.client().await;
        (agent, c)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint::unix(&self.sock)
    }

    pub async fn client(&self) -> AgentClient {
        AgentClient::connect_retry(self.endpoint(), Duration::from_secs(20))
            .await
            .expect("agent comes up")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Waits for the agent to exit on its own; its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                self.child = None;
                return s.code();
            }
            if start.elapsed() > limit {
                panic!("agent still running after {limit:?}\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGTERM: the agent stops its processes and removes its socket.
            // SAFETY: kill with plain integers.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while c.try_wait().ok().flatten().is_none() {
                if start.elapsed() > Duration::from_secs(10) {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if std::thread::panicking() {
            eprintln!("--- agent log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether a pid is gone (not even a zombie).
pub fn pid_gone(pid: i32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

/// Polls `f` every 20 ms until it holds; panics after `limit`.
pub fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "{what}: still not true after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
