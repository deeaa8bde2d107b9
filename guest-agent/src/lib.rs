//! hull-agent as a library (`hull_agent`): PID 1 of hull's sandbox VMs, serving
//! hull-agent-protocol on vsock port 1024 (or, in host mode, a Unix socket for tests).
//!
//! The crate owns everything that happens inside the guest on the host's behalf: PID 1 duties
//! ([`setup`], [`power_off`]), the listener and its connections, the agent's state (processes,
//! mounts, clock, shutdown) and the log backlog. The binary `hull-agent` only parses its
//! arguments and calls [`setup`], [`run`] and [`power_off`].
//!
//! Layout: `server` handles connections (hello, framing, in-flight ids, replies, stream and log
//! connections) and never looks inside a request; `service` maps each request to the agent's
//! state and returns the reply, knowing nothing of sockets; below it `process` (spawn, reaper,
//! streams), `mounts`, `network` (`configure_network`, public for its tests), `forward` (port-forward: listening
//! ports and connections to them), `stats`, `init` (PID 1) and, next, `container` (OCI containers).
//! `transport` is vsock or a Unix socket, `log` the tracing backlog.
//!
//! What it must never do:
//! - trust the host beyond the protocol: every frame and field is checked (sizes, ids, paths,
//!   signal numbers) and a bad one is answered with an error, never a panic or a dead agent;
//! - block the async runtime: a fork returns at once (the child's exit arrives through the
//!   reaper, never a blocking wait), and calls that can wait on the VMM or a disk (mount,
//!   unmount) run on blocking threads;
//! - wait for children anywhere but the reaper (`waitpid(-1)` is the reaper's alone), or run
//!   anything but async-signal-safe calls in a forked child before exec;
//! - let one connection's failure end another connection or the agent.

use std::time::Duration;

use hull_agent_protocol::{AgentMode, PROTOCOL_VERSION};
use tokio::signal::unix::{signal, SignalKind};

mod container;
mod forward;
mod init;
mod log;
mod mounts;
pub mod network;
mod process;
mod server;
mod service;
mod stats;
mod transport;

pub use container::helper::{main as container_helper, HELPER_ARG as CONTAINER_HELPER_ARG};
pub use init::power_off;
pub use transport::Address;

use service::{Agent, DEFAULT_GRACE_MS};
use transport::Listener;

/// Why the agent stopped serving (other than a shutdown request).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("{signal} handler: {source}")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("listen on {addr:?}: {source}")]
    Listen {
        addr: Address,
        #[source]
        source: std::io::Error,
    },
    #[error("accepting connections: {0}")]
    Accept(#[source] std::io::Error),
}

/// The first thing the binary does. As PID 1 (`pid1`): mounts the basic file systems and opens
/// the console, then installs logging and a panic hook that logs. Elsewhere: makes sure fds 0-2
/// are open, then installs logging.
pub fn setup(pid1: bool) {
    if pid1 {
        let problems = init::early();
        log::init();
        for p in problems {
            tracing::warn!("{p}");
        }
        std::panic::set_hook(Box::new(|info| {
            tracing::error!("hull-agent panicked: {info}");
        }));
    } else {
        init::ensure_std_fds();
        log::init();
    }
}

/// Serves `addr` until a shutdown request (returns its grace period) or a fatal error. In
/// [`AgentMode::Guest`] the agent is PID 1 (hostname and clock from the kernel command line);
/// in [`AgentMode::Host`] it becomes a child subreaper and stops its processes before returning.
pub fn run(addr: Address, mode: AgentMode) -> Result<Duration, Error> {
    if mode == AgentMode::Guest {
        init::configure(&init::cmdline_params());
    } else {
        // Orphaned descendants of our processes are re-parented to us and reaped, as in the
        // guest where we are PID 1.
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
            tracing::warn!(
                "PR_SET_CHILD_SUBREAPER: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    let grace = rt.block_on(serve(addr, mode))?;
    // Do not wait for connection tasks (a stream copy may be blocked on a slow host).
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(grace)
}

fn handler(kind: SignalKind, name: &'static str) -> Result<tokio::signal::unix::Signal, Error> {
    signal(kind).map_err(|source| Error::Signal {
        signal: name,
        source,
    })
}

async fn serve(addr: Address, mode: AgentMode) -> Result<Duration, Error> {
    // The host's choice of calls, read once (a guest: the kernel command line).
    let policy = match mode {
        AgentMode::Guest => init::call_policy(&init::cmdline_params()),
        AgentMode::Host => hull_agent_protocol::CallPolicy::All,
    };
    let (agent, shutdown) = Agent::new(mode, policy);

    // The reaper: registered before anything is spawned, and run once at start for children
    // that ended before (none in practice; cheap).
    let mut sigchld = handler(SignalKind::child(), "SIGCHLD")?;
    let reaper = agent.clone();
    tokio::spawn(async move {
        loop {
            reaper.reap();
            if sigchld.recv().await.is_none() {
                break;
            }
        }
    });

    let listener = bind(&addr).await?;
    tracing::info!(
        "hull-agent {} listening on {addr:?} (protocol version {PROTOCOL_VERSION}, {mode:?} mode)",
        env!("CARGO_PKG_VERSION")
    );
    let mut sigterm = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut sigint = handler(SignalKind::interrupt(), "SIGINT")?;
    let grace_ms = tokio::select! {
        e = server::serve(agent.clone(), listener) => return Err(Error::Accept(e)),
        g = shutdown => g.unwrap_or(DEFAULT_GRACE_MS),
        // In the guest, PID 1 only gets signals it handles; treat these as a shutdown request
        // in both modes.
        _ = sigterm.recv() => DEFAULT_GRACE_MS,
        _ = sigint.recv() => DEFAULT_GRACE_MS,
    };
    tracing::info!("shutting down (grace {grace_ms} ms)");
    let grace = Duration::from_millis(u64::from(grace_ms));
    if mode == AgentMode::Host {
        agent.stop_processes(grace).await;
    }
    Ok(grace)
}

/// Binds the listener; vsock may need a moment while the device comes up.
async fn bind(addr: &Address) -> Result<Listener, Error> {
    let mut tries = 0;
    loop {
        match Listener::bind(addr) {
            Ok(l) => return Ok(l),
            Err(e) if matches!(addr, Address::Vsock(_)) && tries < 50 => {
                tries += 1;
                if tries == 1 {
                    tracing::warn!("bind {addr:?}: {e}; retrying for up to 5 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(source) => {
                return Err(Error::Listen {
                    addr: addr.clone(),
                    source,
                })
            }
        }
    }
}

/// Locks a mutex, taking the data as a panicked holder left it: one failed call must not take
/// the agent (PID 1) down with a poisoned lock.
pub(crate) fn locked<T: ?Sized>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
