//! hull-agent: PID 1 of hull's sandbox VMs, serving hull-agent-protocol on vsock port 1024.
//! Argument parsing only; everything else is the `hull_agent` library.
//!
//! ```text
//! hull-agent                         as /init (PID 1): set up the guest, listen on vsock:1024
//! hull-agent --listen unix:PATH      host mode: the same protocol on a Unix socket (tests)
//! hull-agent --listen vsock:PORT     another vsock port
//! ```

use std::time::Duration;

use anyhow::{bail, Context};
use hull_agent::Address;
use hull_agent_protocol::{AgentMode, AGENT_VSOCK_PORT, PROTOCOL_VERSION};

const USAGE: &str = "usage: hull-agent [--listen vsock:PORT | --listen unix:PATH]\n\
    As PID 1 it sets up the guest and listens on vsock port 1024; elsewhere it needs --listen \
    (host mode: no PID 1 duties).";

/// Where to listen and in which mode.
fn parse_args(pid1: bool) -> anyhow::Result<(Address, AgentMode)> {
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
            _ if pid1 => {}
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    match (listen, pid1) {
        (Some(a), true) => Ok((a, AgentMode::Guest)),
        (None, true) => Ok((Address::Vsock(AGENT_VSOCK_PORT), AgentMode::Guest)),
        (Some(a), false) => Ok((a, AgentMode::Host)),
        (None, false) => bail!("not PID 1: host mode needs --listen unix:PATH\n{USAGE}"),
    }
}

fn main() {
    // The container helper: a fresh single-threaded process for libcontainer (see
    // hull_agent::container_helper).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(hull_agent::CONTAINER_HELPER_ARG) {
        std::process::exit(hull_agent::container_helper(&args[2..]));
    }
    let pid1 = std::process::id() == 1;
    hull_agent::setup(pid1);
    let served = parse_args(pid1)
        .and_then(|(addr, mode)| hull_agent::run(addr, mode).map_err(anyhow::Error::from));
    let grace = match served {
        Ok(grace) => grace,
        Err(e) => {
            // One line: the library's errors already name their cause.
            tracing::error!("hull-agent: {e}");
            if !pid1 {
                std::process::exit(1);
            }
            Duration::from_millis(500)
        }
    };
    if pid1 {
        hull_agent::power_off(grace);
    }
    std::process::exit(0);
}
