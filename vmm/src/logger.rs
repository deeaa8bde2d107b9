//! hull-vmm's log under a byte budget. The guest decides how often some lines are logged (a
//! refused vsock connection, a bad descriptor chain), and hull-vmm's stderr is a file on the
//! host (`vmm.log` in the sandbox's directory, on `/run`: host memory). So the log keeps its
//! first lines (at most `max` bytes), then one line saying that it stopped, then nothing more.
//! The line that says why hull-vmm stopped is not a log line (`eprintln!` in the binary) and is
//! always written.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use tracing_subscriber::fmt::MakeWriter;

/// Bytes of log hull-vmm writes before it drops further lines: far more than a VM that is not
/// being flooded writes in its life (a few lines at the default `warn` level).
pub const LOG_MAX_BYTES: u64 = 1 << 20;

/// A log sink that writes at most `max` bytes to `inner`, each event's line whole or not at all.
pub struct LogBudget<W> {
    inner: Mutex<W>,
    left: AtomicU64,
    max: u64,
    noted: AtomicBool,
}

impl<W: Write> LogBudget<W> {
    pub fn new(inner: W, max: u64) -> LogBudget<W> {
        LogBudget {
            inner: Mutex::new(inner),
            left: AtomicU64::new(max),
            max,
            noted: AtomicBool::new(false),
        }
    }

    /// Takes `n` bytes from the budget; false (and nothing taken) if fewer are left.
    fn take(&self, n: u64) -> bool {
        self.left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n)
            })
            .is_ok()
    }

    fn write_line(&self, buf: &[u8]) -> io::Result<()> {
        if !self.noted.load(Ordering::Relaxed) && self.take(buf.len() as u64) {
            return self.lock().write_all(buf);
        }
        if !self.noted.swap(true, Ordering::Relaxed) {
            let note = format!(
                "hull-vmm: the log reached its limit of {} bytes; later lines are dropped\n",
                self.max
            );
            return self.lock().write_all(note.as_bytes());
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, W> {
        // A thread that panicked while writing a line leaves the writer usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The inner writer (tests).
    pub fn into_inner(self) -> W {
        self.inner.into_inner().unwrap_or_else(|p| p.into_inner())
    }
}

/// One event's writer: tracing's formatter hands it the whole line in one `write_all`.
pub struct BudgetWriter<'a, W> {
    budget: &'a LogBudget<W>,
}

impl<W: Write> Write for BudgetWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.budget.write_line(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.budget.lock().flush()
    }
}

impl<'a, W: Write + 'a> MakeWriter<'a> for LogBudget<W> {
    type Writer = BudgetWriter<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        BudgetWriter { budget: self }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_past_the_budget_are_dropped_after_one_note() {
        let b = LogBudget::new(Vec::new(), 20);
        for _ in 0..3 {
            b.make_writer().write_all(b"0123456789\n").unwrap(); // 11 bytes
        }
        // 6 bytes would fit the 9 left, but the log has stopped: it keeps its first lines.
        b.make_writer().write_all(b"short\n").unwrap();
        for _ in 0..1000 {
            b.make_writer().write_all(b"flood flood flood\n").unwrap();
        }
        let out = String::from_utf8(b.into_inner()).unwrap();
        assert_eq!(
            out,
            "0123456789\n\
             hull-vmm: the log reached its limit of 20 bytes; later lines are dropped\n"
        );
    }

    #[test]
    fn tracing_events_go_through_the_budget() {
        use std::sync::Arc;
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let out = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::fmt()
            .with_writer(LogBudget::new(Shared(out.clone()), 200))
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..100 {
                tracing::warn!(i, "a line the guest made happen");
            }
        });
        let out = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        assert!(out.len() <= 200 + 100, "{out}");
        assert!(out.contains("i=0"), "{out}");
        assert!(!out.contains("i=99"), "{out}");
        assert_eq!(
            out.matches("reached its limit of 200 bytes").count(),
            1,
            "{out}"
        );
    }
}
