//! Logging as runc's global flags ask: `--log FILE` (default stderr), `--log-format text|json`,
//! `--debug`. `HULL_LOG` (a tracing filter) overrides the level.
//!
//! The json format is runc's (logrus's): one object per line,
//! `{"level":"error","msg":"...","time":"2006-01-02T15:04:05Z"}`, so that containerd's runc
//! shim, which reads the last `error` line of `--log <bundle>/log.json` to explain a failure,
//! finds hull's message there. Other fields of an event are added as further keys.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use liboci_cli::GlobalOpts;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Where errors go besides stderr.
#[derive(Debug, Clone, Default)]
pub struct LogTarget {
    /// The `--log` file, if logging goes to a file (then a failing command's error is logged
    /// there as well as printed on stderr).
    pub file: Option<PathBuf>,
}

/// Sets up logging; returns where it goes.
pub fn init(g: &GlobalOpts) -> anyhow::Result<LogTarget> {
    let level = if g.debug { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HULL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let json = match g.log_format.as_deref() {
        None | Some("text") => false,
        Some("json") => true,
        Some(other) => anyhow::bail!("invalid log format {other:?}: it must be text or json"),
    };
    let file = match &g.log {
        // runc's default.
        Some(p) if p.as_os_str() == "/dev/stderr" => None,
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| anyhow::anyhow!("cannot open log file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    let target = LogTarget {
        file: file.as_ref().and(g.log.clone()),
    };
    let writer: Box<dyn Write + Send> = match file {
        Some(f) => Box::new(f),
        None => Box::new(std::io::stderr()),
    };
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry.with(JsonLines::new(writer)).try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(target.file.is_none())
                    .with_writer(Mutex::new(writer)),
            )
            .try_init()
    };
    Ok(target)
}

/// runc's json log lines.
pub struct JsonLines {
    out: Mutex<Box<dyn Write + Send>>,
}

impl JsonLines {
    pub fn new(out: Box<dyn Write + Send>) -> JsonLines {
        JsonLines {
            out: Mutex::new(out),
        }
    }
}

#[derive(Default)]
struct Fields {
    msg: String,
    rest: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.msg = value.to_string();
        } else {
            self.rest.insert(field.name().into(), value.into());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.msg, "{value:?}");
        } else {
            self.rest
                .insert(field.name().into(), format!("{value:?}").into());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.rest.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.rest.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.rest.insert(field.name().into(), value.into());
    }
}

/// One log line in runc's json shape.
pub fn json_line(
    level: &Level,
    msg: &str,
    extra: serde_json::Map<String, serde_json::Value>,
) -> String {
    let level = match *level {
        Level::ERROR => "error",
        Level::WARN => "warning",
        Level::INFO => "info",
        Level::DEBUG => "debug",
        Level::TRACE => "trace",
    };
    let mut obj = extra;
    obj.insert("level".into(), level.into());
    obj.insert("msg".into(), msg.into());
    obj.insert("time".into(), crate::time::rfc3339_now().into());
    serde_json::Value::Object(obj).to_string()
}

impl<S: Subscriber> Layer<S> for JsonLines {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut f = Fields::default();
        event.record(&mut f);
        let line = json_line(event.metadata().level(), &f.msg, f.rest);
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_runcs_shape() {
        let mut extra = serde_json::Map::new();
        extra.insert("id".into(), "c1".into());
        let line = json_line(&Level::ERROR, "container \"c1\" does not exist", extra);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "container \"c1\" does not exist");
        assert_eq!(v["id"], "c1");
        let t = v["time"].as_str().unwrap();
        assert!(t.ends_with('Z') && t.len() == 20, "{t}");
        assert!(!line.contains('\n'));
    }
}
