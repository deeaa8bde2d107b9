//! One module per command.

pub mod check;
pub mod spec;
pub mod unsupported;

use liboci_cli::GlobalOpts;

/// Logging as runc's global flags ask: `--log FILE` (default stderr), `--log-format text|json`,
/// `--debug`. `HULL_LOG` (a tracing filter) overrides the level.
pub fn init_logging(g: &GlobalOpts) {
    let level = if g.debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HULL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let json = g.log_format.as_deref() == Some("json");
    let file = g.log.as_ref().and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .map_err(|e| eprintln!("hull: cannot open log file {}: {e}", p.display()))
            .ok()
    });
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match (file, json) {
        (Some(f), true) => builder
            .json()
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        (Some(f), false) => builder
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(f))
            .try_init(),
        (None, true) => builder.json().with_writer(std::io::stderr).try_init(),
        (None, false) => builder.with_writer(std::io::stderr).try_init(),
    };
}
