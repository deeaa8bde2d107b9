//! `hull`: runc's command line over hull-runtime, so that docker (through containerd's runc
//! shim) and anything else that drives runc can drive hull. Flags are parsed with youki's
//! `liboci-cli`, so they are runc's; each command lives in its own module under `commands/`.
//!
//! What works today: `spec`, `check`, `--version`. Running containers (`create`, `start`,
//! `run`, `exec`, ...) needs the guest agent's container support, which is not built yet: those
//! commands exit 1 with a message that says so, after their flags were checked as runc checks
//! them.

mod commands;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use liboci_cli::{CommonCmd, GlobalOpts, StandardCmd};

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
    #[command(flatten)]
    Standard(Box<StandardCmd>),
    #[command(flatten)]
    Common(Box<CommonCmd>),
    /// Report what this host has and lacks to run hull, each with a fix.
    Check(commands::check::Check),
    /// Checkpoint a running container (not supported).
    Checkpoint(commands::unsupported::Anything),
    /// Restore a container from a checkpoint (not supported).
    Restore(commands::unsupported::Anything),
}

fn main() -> ExitCode {
    let opts = Opts::parse();
    commands::init_logging(&opts.global);
    let result = match opts.command {
        Command::Check(c) => commands::check::run(&c),
        Command::Checkpoint(_) => commands::unsupported::checkpoint("checkpoint"),
        Command::Restore(_) => commands::unsupported::checkpoint("restore"),
        Command::Common(c) => match *c {
            CommonCmd::Spec(s) => commands::spec::run(&s),
            CommonCmd::Checkpointt(_) => commands::unsupported::checkpoint("checkpoint"),
            other => commands::unsupported::not_yet(command_name(&other)),
        },
        Command::Standard(c) => commands::unsupported::not_yet(standard_name(&c)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hull: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn standard_name(c: &StandardCmd) -> &'static str {
    match c {
        StandardCmd::Create(_) => "create",
        StandardCmd::Start(_) => "start",
        StandardCmd::State(_) => "state",
        StandardCmd::Kill(_) => "kill",
        StandardCmd::Delete(_) => "delete",
    }
}

fn command_name(c: &CommonCmd) -> &'static str {
    match c {
        CommonCmd::Checkpointt(_) => "checkpoint",
        CommonCmd::Events(_) => "events",
        CommonCmd::Exec(_) => "exec",
        CommonCmd::Features(_) => "features",
        CommonCmd::List(_) => "list",
        CommonCmd::Pause(_) => "pause",
        CommonCmd::Ps(_) => "ps",
        CommonCmd::Resume(_) => "resume",
        CommonCmd::Run(_) => "run",
        CommonCmd::Update(_) => "update",
        CommonCmd::Spec(_) => "spec",
    }
}
