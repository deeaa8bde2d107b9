//! Logging: every line goes into a bounded backlog that log connections
//! (`ConnectionKind::Log`) receive, followed by live lines; warnings and errors also go to
//! stderr (the console in the guest), as do the lines logged with the [`CONSOLE`] target. The
//! console is an emulated UART, about a millisecond per
//! byte in a nested VM, so routine lines on it would slow every boot and container start.
//!
//! Logging never blocks on a slow host: the backlog drops its oldest lines past
//! [`BACKLOG_BYTES`], and a lagging log connection skips lines (it is told how many).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast;
use tracing_subscriber::fmt::MakeWriter;

use crate::transport::BoxConn;

/// The target of the few lines that go to the console whatever their level (the VM's end:
/// `tracing::info!(target: log::CONSOLE, ...)`), so that a console log shows how a VM ended.
pub const CONSOLE: &str = "console";

/// Bytes of log lines kept for log connections that attach later.
pub const BACKLOG_BYTES: usize = 256 * 1024;
/// Live lines buffered per log connection before it starts skipping.
const LIVE_LINES: usize = 1024;

pub struct LogHub {
    backlog: Mutex<Backlog>,
    live: broadcast::Sender<Arc<str>>,
}

#[derive(Default)]
struct Backlog {
    lines: VecDeque<Arc<str>>,
    bytes: usize,
    dropped: u64,
}

static HUB: OnceLock<LogHub> = OnceLock::new();

/// The process-wide hub.
pub fn hub() -> &'static LogHub {
    HUB.get_or_init(|| LogHub {
        backlog: Mutex::new(Backlog::default()),
        live: broadcast::channel(LIVE_LINES).0,
    })
}

impl LogHub {
    fn push(&self, line: Arc<str>) {
        let mut b = crate::locked(&self.backlog);
        b.bytes += line.len();
        b.lines.push_back(line.clone());
        while b.bytes > BACKLOG_BYTES {
            match b.lines.pop_front() {
                Some(old) => {
                    b.bytes -= old.len();
                    b.dropped += 1;
                }
                None => break,
            }
        }
        // Sent under the backlog lock, so a subscriber sees each line exactly once.
        let _ = self.live.send(line);
    }

    /// The backlog (with a note if older lines were dropped) and a receiver for what follows.
    pub fn subscribe(&self) -> (Vec<Arc<str>>, broadcast::Receiver<Arc<str>>) {
        let b = crate::locked(&self.backlog);
        let mut lines = Vec::with_capacity(b.lines.len() + 1);
        if b.dropped > 0 {
            lines.push(Arc::from(format!(
                "[hull-agent: {} older log lines dropped]\n",
                b.dropped
            )));
        }
        lines.extend(b.lines.iter().cloned());
        (lines, self.live.subscribe())
    }
}

/// A `MakeWriter` that writes each event to stderr and the hub.
#[derive(Clone, Copy, Default)]
pub struct HubWriter;

pub struct EventWriter {
    buf: Vec<u8>,
    /// Whether the line also goes to the console (warnings and errors).
    console: bool,
}

impl Write for EventWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self.console {
            let _ = std::io::stderr().write_all(&self.buf);
        }
        let line: Arc<str> = Arc::from(String::from_utf8_lossy(&self.buf).into_owned());
        hub().push(line);
    }
}

impl<'a> MakeWriter<'a> for HubWriter {
    type Writer = EventWriter;
    fn make_writer(&'a self) -> Self::Writer {
        EventWriter {
            buf: Vec::new(),
            console: true,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        EventWriter {
            buf: Vec::new(),
            console: *meta.level() <= tracing::Level::WARN || meta.target() == CONSOLE,
        }
    }
}

/// Installs the subscriber: `HULL_AGENT_LOG` (or `RUST_LOG`) filters, default `info`.
pub fn init() {
    let filter = std::env::var("HULL_AGENT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(HubWriter)
        .with_ansi(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_target(false)
        .try_init();
}

/// A log connection: the backlog, then live lines, until the host closes it.
pub async fn serve_connection(conn: BoxConn) {
    let (mut rd, mut wr) = tokio::io::split(conn);
    let (backlog, mut live) = hub().subscribe();
    for line in backlog {
        if wr.write_all(line.as_bytes()).await.is_err() {
            return;
        }
    }
    let mut probe = [0u8; 256];
    loop {
        tokio::select! {
            r = live.recv() => {
                let line: Arc<str> = match r {
                    Ok(l) => l,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        Arc::from(format!("[hull-agent: {n} log lines skipped: reader too slow]\n"))
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if wr.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
            }
            r = rd.read(&mut probe) => if matches!(r, Ok(0) | Err(_)) { return },
        }
    }
}
