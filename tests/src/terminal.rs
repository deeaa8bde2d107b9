//! A real terminal for interactive tests (`ctr run -t`, `docker run -it`): the command runs in a
//! detached tmux session on a tmux server of the test's own, so the test types into it, reads
//! its screen, resizes it and sees it end, as a user at a terminal would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// One command in a tmux window of its own.
pub struct Terminal {
    socket: PathBuf,
    /// Where the command's exit status is written when it ends.
    status: PathBuf,
}

impl Terminal {
    /// Starts `argv` (with `env` added) in a `cols`x`rows` terminal. `dir` holds tmux's socket.
    pub fn start(
        dir: &Path,
        argv: &[&str],
        env: &[(&str, &str)],
        cols: u16,
        rows: u16,
    ) -> Terminal {
        let socket = dir.join("tmux.sock");
        let status = dir.join("tmux.status");
        let _ = std::fs::remove_file(&status);
        let quoted: Vec<String> = argv.iter().map(|a| shell_quote(a)).collect();
        let exports: String = env
            .iter()
            .map(|(k, v)| format!("export {k}={}; ", shell_quote(v)))
            .collect();
        // The window stays (remain-on-exit) so the screen can be read after the command ends.
        let script = format!(
            "{exports}{}; echo $? > {}",
            quoted.join(" "),
            shell_quote(&status.to_string_lossy())
        );
        let t = Terminal { socket, status };
        let out = t
            .tmux()
            .args(["-f", "/dev/null", "new-session", "-d", "-x"])
            .arg(cols.to_string())
            .arg("-y")
            .arg(rows.to_string())
            .args(["sh", "-c", &script])
            .output()
            .expect("tmux (package tmux) runs");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = t
            .tmux()
            .args(["set-option", "-g", "remain-on-exit", "on"])
            .status();
        t
    }

    fn tmux(&self) -> Command {
        let mut c = Command::new("tmux");
        c.arg("-S").arg(&self.socket);
        c
    }

    /// Types `text` (a literal string; "\n" is Enter).
    pub fn type_text(&self, text: &str) {
        for (i, part) in text.split('\n').enumerate() {
            if i > 0 {
                self.keys(&["Enter"]);
            }
            if !part.is_empty() {
                let st = self
                    .tmux()
                    .args(["send-keys", "-l", part])
                    .status()
                    .unwrap();
                assert!(st.success(), "tmux send-keys {part:?}");
            }
        }
    }

    /// Sends tmux key names (e.g. `C-d`, `Enter`).
    pub fn keys(&self, keys: &[&str]) {
        let st = self.tmux().arg("send-keys").args(keys).status().unwrap();
        assert!(st.success(), "tmux send-keys {keys:?}");
    }

    /// The screen's text.
    pub fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-J", "-S", "-200"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen shows `needle` (panics with the screen after `limit`).
    pub fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if s.contains(needle) {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "the terminal did not show {needle:?} within {limit:?}; it shows:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Resizes the terminal (the program in it gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) {
        let st = self
            .tmux()
            .args(["resize-window", "-x"])
            .arg(cols.to_string())
            .arg("-y")
            .arg(rows.to_string())
            .status()
            .unwrap();
        assert!(st.success(), "tmux resize-window");
    }

    /// Waits for the command to end: its exit status.
    pub fn wait_exit(&self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Ok(s) = std::fs::read_to_string(&self.status) {
                if let Ok(code) = s.trim().parse() {
                    return code;
                }
            }
            assert!(
                start.elapsed() < limit,
                "the command in the terminal did not end within {limit:?}; it shows:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Runs `argv` (a shell with a terminal: `ctr run -t`, `docker run -it`, ...) in a terminal:
/// `tty` is a pty, `stty size` is the terminal's and follows a resize, what is typed reaches
/// the shell, Ctrl-D ends it with status 0. `limit` bounds each wait.
pub fn interactive_shell(dir: &Path, argv: &[&str], limit: Duration) {
    let term = Terminal::start(dir, argv, &[], 80, 24);
    term.type_text("tty; stty size; echo sum-$((40+2))\n");
    let screen = term.wait_for("sum-42", limit);
    assert!(screen.contains("/dev/pts/"), "tty is not a pty:\n{screen}");
    assert!(
        screen.contains("\n24 80"),
        "stty size is not 24x80:\n{screen}"
    );
    term.resize(100, 30);
    term.type_text("stty size\n");
    term.wait_for("\n30 100", limit);
    term.keys(&["C-d"]);
    let code = term.wait_exit(limit);
    assert_eq!(
        code,
        0,
        "Ctrl-D ends the shell; the terminal shows:\n{}",
        term.screen()
    );
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
