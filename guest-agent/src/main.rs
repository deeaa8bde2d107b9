//! hull-agent: PID 1 of hull's sandbox VMs, serving hull-agent-protocol on vsock port 1024.
//!
//! ```text
//! hull-agent                         as /init (PID 1): set up the guest, listen on vsock:1024
//! hull-agent --listen unix:PATH      host mode: the same protocol on a Unix socket (tests)
//! hull-agent --listen vsock:PORT     another vsock port
//! ```

mod init;
mod log;
mod mounts;
mod process;
mod server;
mod stats;
mod transport;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hull_agent_protocol::{AgentMode, AGENT_VSOCK_PORT, PROTOCOL_VERSION};
use tokio::signal::unix::{signal, SignalKind};

use server::Agent;
use transport::{Address, Listener};

const USAGE: &str = "usage: hull-agent [--listen vsock:PORT | --listen unix:PATH]\n\
    As PID 1 it sets up the guest and listens on vsock port 1024; elsewhere it needs --listen \
    (host mode: no PID 1 duties).";

fn parse_args() -> anyhow::Result<Option<Address>> {
    let mut args = std::env::args().skip(1);
    let mut listen = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                let v = args.next().context("--listen needs an address")?;
                listen = Some(v.parse::<Address>().map_err(anyhow::Error::msg)?);
            }
            "--version" | "-V" => {
                println!(
                    "hull-agent {} (protocol version {PROTOCOL_VERSION})",
                    env!("CARGO_PKG_VERSION")
                );
                std::process::exit(0);
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            // The kernel passes unknown command-line words to init as arguments: ignore them
            // as PID 1.
            other if std::process::id() == 1 => {
                let _ = other;
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(listen)
}

fn main() {
    let pid1 = std::process::id() == 1;
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
    let grace = match run(pid1) {
        Ok(grace) => grace,
        Err(e) => {
            tracing::error!("hull-agent: {e:#}");
            if !pid1 {
                std::process::exit(1);
            }
            Duration::from_millis(500)
        }
    };
    if pid1 {
        init::power_off(grace);
    }
    std::process::exit(0);
}

/// Serves until a shutdown request (returns its grace period) or a fatal error.
fn run(pid1: bool) -> anyhow::Result<Duration> {
    let listen = parse_args()?;
    let (addr, mode) = match (listen, pid1) {
        (Some(a), true) => (a, AgentMode::Guest),
        (None, true) => (Address::Vsock(AGENT_VSOCK_PORT), AgentMode::Guest),
        (Some(a @ Address::Unix(_)), false) => (a, AgentMode::Host),
        (Some(a @ Address::Vsock(_)), false) => (a, AgentMode::Host),
        (None, false) => bail!("not PID 1: host mode needs --listen unix:PATH\n{USAGE}"),
    };
    if pid1 {
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
        .context("start the async runtime")?;
    let grace = rt.block_on(serve(addr, mode))?;
    // Do not wait for connection tasks (a stream copy may be blocked on a slow host).
    rt.shutdown_timeout(Duration::from_millis(100));
    Ok(grace)
}

async fn serve(addr: Address, mode: AgentMode) -> anyhow::Result<Duration> {
    let (agent, shutdown) = Agent::new(mode);

    // The reaper: registered before anything is spawned, and run once at start for children
    // that ended before (none in practice; cheap).
    let mut sigchld = signal(SignalKind::child()).context("SIGCHLD handler")?;
    let procs = agent.procs.clone();
    tokio::spawn(async move {
        loop {
            procs.reap();
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
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let grace_ms = tokio::select! {
        r = server::serve(agent.clone(), listener) => {
            r.context("accepting connections")?;
            bail!("listener closed");
        }
        g = shutdown => g.unwrap_or(server::DEFAULT_GRACE_MS),
        // In the guest, PID 1 only gets signals it handles; treat these as a shutdown request
        // in both modes.
        _ = sigterm.recv() => server::DEFAULT_GRACE_MS,
        _ = sigint.recv() => server::DEFAULT_GRACE_MS,
    };
    tracing::info!("shutting down (grace {grace_ms} ms)");
    let grace = Duration::from_millis(u64::from(grace_ms));
    if mode == AgentMode::Host {
        stop_processes(&agent, grace).await;
    }
    Ok(grace)
}

/// Binds the listener; vsock may need a moment while the device comes up.
async fn bind(addr: &Address) -> anyhow::Result<Listener> {
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
            Err(e) => return Err(e).with_context(|| format!("listen on {addr:?}")),
        }
    }
}

/// Host mode: SIGTERM every process group the agent started, SIGKILL after the grace period.
async fn stop_processes(agent: &Arc<Agent>, grace: Duration) {
    use nix::sys::signal::Signal;
    agent.procs.signal_all(Signal::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    while agent.procs.running() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    agent.procs.signal_all(Signal::SIGKILL);
    // Let the reaper collect them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while agent.procs.running() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
