//! `hull create` and `hull run`.
//!
//! create: checks the id and the bundle, starts the monitor (see [`crate::monitor`]; started
//! first, it gets going while the VM is made, and is given the init once it exists), creates
//! the sandbox (the VM) and the container in it (its init held before the program runs),
//! writes the monitor's pid to `--pid-file` and records it. Any failure
//! destroys the sandbox again: no VM, no mounts, no state directory.
//!
//! run: create, then start; without `--detach` it waits for the monitor (forwarding signals),
//! deletes the container and exits with the container's status.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use hull_runtime::config::RuntimeConfig;
use hull_runtime::container::{load_bundle, Bundle, Container, CreateOptions};
use hull_runtime::sandbox::{Sandbox, SandboxOptions};

use super::{block_on, check_id, write_pid_file, Ctx};
use crate::monitor::{self, MonitorArgs, Started};

/// How long a failed create's VM gets to shut down before it is killed.
const CLEANUP_GRACE: Duration = Duration::from_secs(1);

/// What create needs from `create` and `run`.
pub struct CreateArgs<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    /// `run` in the foreground: a terminal may be the caller's own.
    pub foreground: bool,
}

/// The checks that need no VM, in runc's order: id, id in use, bundle and config.json (read
/// and checked once, here: the process, the root file system, hooks, bind sources come later),
/// terminal and console socket. Returns the bundle and whether the process has a terminal.
pub fn check(ctx: &Ctx, a: &CreateArgs<'_>) -> anyhow::Result<(Bundle, bool)> {
    check_id(a.id)?;
    if ctx.dir(a.id).exists() {
        bail!("container with id \"{}\" already exists", a.id);
    }
    let path =
        std::path::absolute(a.bundle).with_context(|| format!("bundle {}", a.bundle.display()))?;
    let bundle = load_bundle(&path)?;
    let terminal = bundle
        .spec
        .process()
        .as_ref()
        .and_then(|p| p.terminal())
        .unwrap_or(false);
    match (terminal, a.console_socket) {
        (true, None) if !a.foreground => {
            bail!("cannot allocate tty if hull will detach without setting console socket")
        }
        (false, Some(_)) => {
            bail!("cannot use console socket if hull will not detach or allocate tty")
        }
        _ => {}
    }
    if let Some(s) = a.console_socket {
        if !s.exists() {
            bail!("console socket {} does not exist", s.display());
        }
    }
    Ok((bundle, terminal))
}

/// Creates the container and its monitor; returns the monitor.
pub fn create(ctx: &Ctx, a: &CreateArgs<'_>) -> anyhow::Result<Started> {
    let (bundle, terminal) = check(ctx, a)?;
    let config = RuntimeConfig::load().context("hull's configuration")?;
    // The VM's size, host cgroup and network, from the spec (hull_runtime::sandbox).
    let opts = SandboxOptions::from_spec(&bundle.spec)?;
    let monitor = monitor::prespawn(
        &ctx.globals,
        &MonitorArgs {
            sandbox: a.id.to_string(),
            container: a.id.to_string(),
            process: None,
            process_on_fd: true,
            exec: false,
            terminal,
            console_socket: a.console_socket.map(Path::to_path_buf),
            agent_socket: None,
        },
    )?;
    block_on(async {
        let sb = Sandbox::create(&config, &ctx.root, a.id, &opts)
            .await
            .with_context(|| format!("cannot create the VM of container \"{}\"", a.id))?;
        let r = create_in(a, &sb, &bundle, terminal, monitor).await;
        if let Ok(m) = &r {
            // The pid-file process stands for the container on the host: it is accounted
            // with the VM.
            sb.join_host_cgroup(m.pid);
        }
        match r {
            Ok(m) => Ok(m),
            Err(e) => {
                if let Err(c) = sb.destroy(CLEANUP_GRACE).await {
                    tracing::warn!("cleaning up after a failed create: {c}");
                    let _ = hull_runtime::sandbox::cleanup(&ctx.root, a.id);
                }
                Err(e)
            }
        }
    })?
}

async fn create_in(
    a: &CreateArgs<'_>,
    sb: &Sandbox,
    bundle: &Bundle,
    terminal: bool,
    monitor: monitor::Pending,
) -> anyhow::Result<Started> {
    let stdio = crate::monitor::stdio_spec(
        terminal,
        a.console_socket.is_some(),
        bundle.spec.process().as_ref(),
    );
    let opts = CreateOptions {
        stdio: Some(stdio),
        ..Default::default()
    };
    let mut c = Container::create(sb, a.id, bundle, &opts)
        .await
        .with_context(|| format!("cannot create container \"{}\"", a.id))?;
    tracing::debug!("container {} created in the guest", a.id);
    let m = monitor.go(c.init_process().0)?;
    let recorded = (|| {
        if let Some(p) = a.pid_file {
            write_pid_file(p, m.pid)?;
        }
        c.set_host_pid(sb, m.pid)
            .context("cannot record the monitor's pid")?;
        Ok::<_, anyhow::Error>(())
    })();
    if let Err(e) = recorded {
        let mut child = m.child;
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    Ok(m)
}

pub fn run(ctx: &Ctx, c: &liboci_cli::Create) -> anyhow::Result<ExitCode> {
    let _ = (c.no_pivot, c.no_new_keyring, c.preserve_fds);
    create(
        ctx,
        &CreateArgs {
            id: &c.container_id,
            bundle: &c.bundle,
            pid_file: c.pid_file.as_deref(),
            console_socket: c.console_socket.as_deref(),
            foreground: false,
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `hull run`.
pub fn run_cmd(ctx: &Ctx, r: &liboci_cli::Run) -> anyhow::Result<ExitCode> {
    let id = r.container_id.as_str();
    let t0 = std::time::Instant::now();
    let m = create(
        ctx,
        &CreateArgs {
            id,
            bundle: &r.bundle,
            pid_file: r.pid_file.as_deref(),
            console_socket: r.console_socket.as_deref(),
            foreground: !r.detach,
        },
    )?;
    tracing::debug!("run {id}: created after {:?}", t0.elapsed());
    if let Err(e) = super::start::start(ctx, id) {
        let _ = super::delete::delete(ctx, id, true);
        return Err(e);
    }
    if r.detach {
        return Ok(ExitCode::SUCCESS);
    }
    tracing::debug!("run {id}: started after {:?}", t0.elapsed());
    let code = super::foreground::wait(m.child)?;
    tracing::debug!("run {id}: exited after {:?}", t0.elapsed());
    if !r.keep {
        super::delete::delete(ctx, id, true)?;
        tracing::debug!("run {id}: deleted after {:?}", t0.elapsed());
    }
    Ok(ExitCode::from(code))
}
