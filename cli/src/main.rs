//! `hull`: runc's command line over hull-runtime, so that docker (through containerd's runc
//! shim) and anything else that drives runc can drive hull. Flags are parsed with youki's
//! `liboci-cli`, so they are runc's; each command lives in its own module under `commands/`.
//!
//! One sandbox per container: the sandbox's id is the container's, its directory
//! `<--root>/<id>` (default root `/run/hull`). The process `create` leaves behind, whose pid it
//! writes to `--pid-file`, is hull's monitor ([`monitor`]): it stands for the container's init
//! as runc's container process does (same lifetime, signals forwarded, stdio carried, same exit
//! status).
//!
//! Exit codes: 0 success, 1 any error (its message on stderr as `hull: ...`, and in the `--log`
//! file when there is one), 2 bad usage; `run` and a foreground `exec` exit with the
//! container process's status (128 + N when signal N killed it).

mod commands;
mod logging;
mod monitor;
mod signal;
mod time;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use liboci_cli::GlobalOpts;

/// hull: run OCI containers in KVM microVMs (runc's command line).
#[derive(Parser, Debug)]
#[command(name = "hull", version = concat!(env!("CARGO_PKG_VERSION"), "\nspec: 1.2.0"))]
struct Opts {
    #[command(flatten)]
    global: GlobalOpts,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a container (its VM and its init, held before the program runs).
    Create(liboci_cli::Create),
    /// Start a created container's program (and run its poststart hooks).
    Start(liboci_cli::Start),
    /// Print a container's state as JSON.
    State(liboci_cli::State),
    /// Send a signal (default SIGTERM) to a container's init, or with --all to all its processes.
    Kill(commands::kill::Kill),
    /// Delete a stopped container (--force: whatever its state), its VM and its state.
    Delete(liboci_cli::Delete),
    /// Create and start a container; without --detach, wait for it, delete it, exit with its status.
    Run(liboci_cli::Run),
    /// Run a new process in a running container.
    Exec(liboci_cli::Exec),
    /// List a container's processes (guest pids).
    Ps(liboci_cli::Ps),
    /// List the containers.
    List(liboci_cli::List),
    /// Freeze every process of a container.
    Pause(liboci_cli::Pause),
    /// Thaw a paused container.
    Resume(liboci_cli::Resume),
    /// Change a container's resource limits.
    Update(commands::update::Update),
    /// Print a container's resource usage and OOM events as JSON.
    Events(liboci_cli::Events),
    /// Print what this runtime supports, as JSON.
    Features(liboci_cli::Features),
    /// Write a default config.json into a bundle.
    Spec(liboci_cli::Spec),
    /// Report what this host has and lacks to run hull, each with a fix.
    Check(commands::check::Check),
    /// List, make or remove the templates sandboxes start from.
    Template(commands::template::Template),
    /// Checkpoint a running container (not supported).
    Checkpoint(commands::unsupported::Anything),
    /// Restore a container from a checkpoint (not supported).
    Restore(commands::unsupported::Anything),
    /// hull's own pid-file process (internal).
    #[command(name = "__monitor", hide = true)]
    Monitor(monitor::MonitorArgs),
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    let log = match logging::init(&opts.global) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("hull: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let ctx = commands::Ctx::new(&opts.global);
    if let Command::Monitor(m) = &opts.command {
        return monitor::main(&ctx.root, m);
    }
    let result = match opts.command {
        Command::Create(c) => commands::create::run(&ctx, &c),
        Command::Start(c) => commands::start::run(&ctx, &c),
        Command::State(c) => commands::state::run(&ctx, &c),
        Command::Kill(c) => commands::kill::run(&ctx, &c),
        Command::Delete(c) => commands::delete::run(&ctx, &c),
        Command::Run(c) => commands::create::run_cmd(&ctx, &c),
        Command::Exec(c) => commands::exec::run(&ctx, &c),
        Command::Ps(c) => commands::ps::run(&ctx, &c),
        Command::List(c) => commands::list::run(&ctx, &c),
        Command::Pause(c) => commands::pause::pause(&ctx, &c.container_id),
        Command::Resume(c) => commands::pause::resume(&ctx, &c.container_id),
        Command::Update(c) => commands::update::run(&ctx, &c),
        Command::Events(c) => commands::events::run(&ctx, &c),
        Command::Features(_) => commands::features::run(),
        Command::Spec(s) => commands::spec::run(&s),
        Command::Check(c) => commands::check::run(&c),
        Command::Template(t) => commands::template::run(&t),
        Command::Checkpoint(_) => commands::unsupported::checkpoint("checkpoint"),
        Command::Restore(_) => commands::unsupported::checkpoint("restore"),
        Command::Monitor(_) => unreachable!("handled above"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let msg = format!("{e:#}");
            // The shim reads the last error line of the --log file.
            if log.file.is_some() {
                tracing::error!("{msg}");
            }
            eprintln!("hull: {msg}");
            exit_code_for(&e)
        }
    }
}

/// The default state root.
pub const DEFAULT_ROOT: &str = "/run/hull";

/// The state root from --root (absolute, so that monitors and later commands agree).
pub fn root_of(g: &GlobalOpts) -> PathBuf {
    let r = g.root.clone().unwrap_or_else(|| DEFAULT_ROOT.into());
    std::path::absolute(&r).unwrap_or(r)
}

/// A program that could not be run is reported as a shell reports it: 127 when it does not
/// exist, 126 when it cannot be executed (what docker shows for runc's same errors); any
/// other failure is 1.
fn exit_code_for(e: &anyhow::Error) -> ExitCode {
    use hull_runtime::agent::protocol::ErrorKind;
    for cause in e.chain() {
        let kind = if let Some(c) = cause.downcast_ref::<hull_runtime::container::ContainerError>()
        {
            c.agent_kind()
        } else if let Some(a) = cause.downcast_ref::<hull_runtime::agent::Error>() {
            a.agent_kind()
        } else {
            None
        };
        match kind {
            Some(ErrorKind::ExecutableNotFound) => return ExitCode::from(127),
            Some(ErrorKind::NotExecutable) => return ExitCode::from(126),
            _ => {}
        }
    }
    ExitCode::FAILURE
}
