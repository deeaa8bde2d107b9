use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use hull_vmm_api::exit::VmmExit;
use hull_vmm_api::{ApiRequest, ApiResponse, SerialConfig, VmConfig};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// The configuration hull-vmm is started with, in the VM's directory.
pub const CONFIG_FILE: &str = "vm.json";
/// hull-vmm's stdout: the guest console when the configuration sends it to stdout.
pub const CONSOLE_FILE: &str = "console.log";
/// hull-vmm's stderr: its log and the line saying why it stopped.
pub const LOG_FILE: &str = "vmm.log";
/// How long one API request may take (a pause waits up to 10 s for the vCPUs to park).
const API_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest API response line read (responses are a few hundred bytes).
const MAX_RESPONSE: u64 = 64 * 1024;

/// What went wrong launching or driving hull-vmm.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("cannot open the network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VM directory {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot serialise the VM configuration: {0}")]
    Serialise(#[source] serde_json::Error),
    #[error("cannot start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {binary} in cgroup {cgroup} and network namespace {netns}: {source}")]
    SpawnIn {
        binary: PathBuf,
        cgroup: String,
        netns: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the VM has no API socket in its configuration")]
    NoApiSocket,
    #[error("API socket {path}: {source}")]
    Api {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("API socket {path}: unreadable response: {reason}")]
    BadResponse { path: PathBuf, reason: String },
    #[error("API request refused: {0}")]
    Refused(String),
    #[error("waiting for hull-vmm (pid {pid}): {source}")]
    Wait {
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot signal hull-vmm (pid {pid}): {source}")]
    Signal {
        pid: u32,
        #[source]
        source: nix::Error,
    },
}

/// How a hull-vmm process ended.
#[derive(Clone, Debug)]
pub struct VmmExited {
    /// The raw wait status.
    pub status: ExitStatus,
    /// What the status means (`hull_vmm_api::exit`).
    pub exit: VmmExit,
}

/// A hull-vmm process started by [`VmmProcess::launch`]. Dropped while it still runs, it is
/// killed (SIGKILL) and reaped, so that no VM outlives an error path; [`VmmProcess::detach`]
/// lets it run on.
pub struct VmmProcess {
    child: Child,
    dir: PathBuf,
    /// Where the guest console goes: the configuration's serial file, else `console.log`.
    console: PathBuf,
    api_socket: Option<PathBuf>,
    exited: Option<VmmExited>,
    detached: bool,
}

/// Creates (or truncates) `path` readable and writable by its owner only: the VM's
/// configuration, console and log are nobody else's.
pub fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), VmmError> {
    let err = |source| VmmError::WriteFile {
        path: path.to_path_buf(),
        source,
    };
    // Written whole and renamed into place, so a reader never sees half a file.
    let tmp = path.with_extension("tmp");
    let mut f = private_file(&tmp).map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// How hull-vmm is started, besides its configuration.
#[derive(Clone, Copy, Debug, Default)]
pub struct Launch<'a> {
    /// Extra environment variables.
    pub env: &'a [(&'a str, &'a str)],
    /// A cgroup v2 directory it starts in; not being able to join it fails the launch.
    pub cgroup: Option<&'a Path>,
    /// A network namespace it runs in (where the taps of its `net` devices are). Not being able
    /// to enter it fails the launch.
    pub netns: Option<&'a Path>,
    /// SIGKILL it when the thread that launched it ends (`PR_SET_PDEATHSIG`): for a VM that
    /// must not outlive its launcher (a template being made), unlike a sandbox's.
    pub die_with_parent: bool,
}

impl VmmProcess {
    /// Writes `config` to `dir/vm.json` (creating `dir`) and starts `binary --config` on it.
    /// Returns as soon as the process runs: the guest boots in the background. A configuration
    /// hull-vmm refuses shows as a prompt exit with [`VmmExit::Config`] and the reason in the
    /// log ([`VmmProcess::log`]).
    pub fn launch(binary: &Path, config: &VmConfig, dir: &Path) -> Result<VmmProcess, VmmError> {
        VmmProcess::launch_with_env(binary, config, dir, &[])
    }

    /// [`VmmProcess::launch`] with extra environment variables for hull-vmm (e.g. `HULL_LOG`).
    pub fn launch_with_env(
        binary: &Path,
        config: &VmConfig,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Result<VmmProcess, VmmError> {
        VmmProcess::launch_with(
            binary,
            config,
            dir,
            &Launch {
                env,
                ..Launch::default()
            },
        )
    }

    /// [`VmmProcess::launch`], with the environment, cgroup and network namespace of `how`.
    pub fn launch_with(
        binary: &Path,
        config: &VmConfig,
        dir: &Path,
        how: &Launch<'_>,
    ) -> Result<VmmProcess, VmmError> {
        let env = how.env;
        let cgroup = how.cgroup;
        let dir_err = |source| VmmError::Dir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let json = serde_json::to_vec_pretty(config).map_err(VmmError::Serialise)?;
        let config_path = dir.join(CONFIG_FILE);
        write_file(&config_path, &json)?;
        let open = |name: &str| {
            let path = dir.join(name);
            private_file(&path).map_err(|source| VmmError::WriteFile { path, source })
        };
        // A serial file (capped by hull-vmm) is the console; otherwise hull-vmm's stdout is.
        let (console, stdout) = match &config.serial {
            SerialConfig::File(p) => (p.clone(), Stdio::null()),
            _ => (dir.join(CONSOLE_FILE), Stdio::from(open(CONSOLE_FILE)?)),
        };
        let mut cmd = Command::new(binary);
        cmd.arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(open(LOG_FILE)?)
            .envs(env.iter().copied())
            .process_group(0);
        if let Some(procs) = cgroup.and_then(|c| {
            std::ffi::CString::new(c.join("cgroup.procs").into_os_string().into_vec()).ok()
        }) {
            let join = move || -> std::io::Result<()> {
                // SAFETY: open(2) (async-signal-safe) of a NUL-terminated path made before fork.
                let fd = unsafe { libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself. hull-vmm never runs outside its cgroup:
                // a failure fails the launch.
                // SAFETY: write(2) (async-signal-safe) of one static byte to the fd above.
                let n = unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) };
                let e = std::io::Error::last_os_error();
                // SAFETY: close(2) (async-signal-safe) of the fd this closure opened.
                unsafe { libc::close(fd) };
                if n != 1 {
                    return Err(e);
                }
                Ok(())
            };
            // SAFETY: the closure runs in the child between fork and exec; it only makes the
            // async-signal-safe calls above, allocates nothing and takes no lock.
            unsafe { cmd.pre_exec(join) };
        }
        if let Some(path) = how.netns {
            let ns = File::open(path).map_err(|source| VmmError::Netns {
                path: path.to_path_buf(),
                source,
            })?;
            let enter = move || -> std::io::Result<()> {
                // SAFETY: setns(2) (async-signal-safe) on a network namespace fd this closure
                // owns (opened before fork); it changes only the child's own namespace.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            // SAFETY: the closure runs in the child between fork and exec and makes only the
            // async-signal-safe call above; it allocates nothing and takes no lock.
            unsafe { cmd.pre_exec(enter) };
        }
        if how.die_with_parent {
            let die = || -> std::io::Result<()> {
                // SAFETY: prctl(2) (async-signal-safe) with integer arguments; it changes only
                // the child's own parent-death signal.
                if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            };
            // SAFETY: the closure runs in the child between fork and exec and makes only the
            // async-signal-safe call above; it allocates nothing and takes no lock.
            unsafe { cmd.pre_exec(die) };
        }
        let child = cmd.spawn().map_err(|source| match (cgroup, how.netns) {
            (None, None) => VmmError::Spawn {
                binary: binary.to_path_buf(),
                source,
            },
            _ => VmmError::SpawnIn {
                binary: binary.to_path_buf(),
                cgroup: cgroup
                    .map(|c| c.display().to_string())
                    .unwrap_or("-".into()),
                netns: how
                    .netns
                    .map(|c| c.display().to_string())
                    .unwrap_or("-".into()),
                source,
            },
        })?;
        tracing::debug!(pid = child.id(), dir = %dir.display(), "hull-vmm started");
        Ok(VmmProcess {
            child,
            dir: dir.to_path_buf(),
            console,
            api_socket: config.api_socket.clone(),
            exited: None,
            detached: false,
        })
    }

    /// hull-vmm's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The VM's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The guest console so far (the configuration's serial file, or hull-vmm's stdout), with
    /// the serial line's `\r\n` turned back into `\n`.
    pub fn console(&self) -> String {
        read_text(&self.console)
    }

    /// What hull-vmm wrote to stderr so far.
    pub fn log(&self) -> String {
        read_text(&self.dir.join(LOG_FILE))
    }

    /// Sends one request to the API socket and returns the response; a response with
    /// `ok: false` is [`VmmError::Refused`].
    pub fn api(&self, request: &ApiRequest) -> Result<ApiResponse, VmmError> {
        let line = serde_json::to_string(request).map_err(VmmError::Serialise)?;
        let path = self.api_socket.as_ref().ok_or(VmmError::NoApiSocket)?;
        let text = self.api_raw(&line)?;
        let resp: ApiResponse = serde_json::from_str(&text).map_err(|e| VmmError::BadResponse {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if !resp.ok {
            return Err(VmmError::Refused(resp.error.unwrap_or_default()));
        }
        Ok(resp)
    }

    /// Sends one raw request line and returns the raw response line (without its newline).
    pub fn api_raw(&self, line: &str) -> Result<String, VmmError> {
        let path = self.api_socket.as_ref().ok_or(VmmError::NoApiSocket)?;
        api_request(path, line)
    }

    /// Sends `signal` to hull-vmm (SIGTERM stops the VM and exits 128+15).
    pub fn signal(&self, signal: Signal) -> Result<(), VmmError> {
        nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), signal).map_err(|source| {
            VmmError::Signal {
                pid: self.child.id(),
                source,
            }
        })
    }

    /// How it ended, if it has.
    pub fn try_wait(&mut self) -> Result<Option<VmmExited>, VmmError> {
        if self.exited.is_none() {
            let pid = self.child.id();
            if let Some(status) = self
                .child
                .try_wait()
                .map_err(|source| VmmError::Wait { pid, source })?
            {
                self.exited = Some(VmmExited {
                    status,
                    exit: VmmExit::from_wait(status.code(), status.signal()),
                });
            }
        }
        Ok(self.exited.clone())
    }

    /// Waits at most `limit` for hull-vmm to exit; `None` if it still runs then.
    pub fn wait_timeout(&mut self, limit: Duration) -> Result<Option<VmmExited>, VmmError> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.try_wait()? {
                return Ok(Some(e));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills hull-vmm (SIGKILL) if it still runs, and reaps it.
    pub fn kill(&mut self) -> Result<VmmExited, VmmError> {
        if let Some(e) = self.try_wait()? {
            return Ok(e);
        }
        let pid = self.child.id();
        // ESRCH/ECHILD races with a process that just exited are fine: wait() tells.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map_err(|source| VmmError::Wait { pid, source })?;
        let e = VmmExited {
            status,
            exit: VmmExit::from_wait(status.code(), status.signal()),
        };
        self.exited = Some(e.clone());
        Ok(e)
    }

    /// Lets hull-vmm run on after this handle is dropped; returns its pid.
    pub fn detach(mut self) -> u32 {
        self.detached = true;
        self.child.id()
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        if !self.detached {
            if let Err(e) = self.kill() {
                tracing::warn!("cannot stop hull-vmm: {e}");
            }
        }
    }
}

/// Sends one request line to the hull-vmm API socket at `path` and returns the response line
/// (without its newline). Works for any hull-vmm, also one this process did not start.
pub fn api_request(path: &Path, line: &str) -> Result<String, VmmError> {
    api_request_within(path, line, API_TIMEOUT)
}

/// [`api_request`], with `limit` for each write and read instead of the default.
pub fn api_request_within(path: &Path, line: &str, limit: Duration) -> Result<String, VmmError> {
    let err = |source| VmmError::Api {
        path: path.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(err)?;
    s.set_read_timeout(Some(limit)).map_err(err)?;
    s.set_write_timeout(Some(limit)).map_err(err)?;
    s.write_all(format!("{line}\n").as_bytes()).map_err(err)?;
    let mut out = String::new();
    BufReader::new(std::io::Read::take(s, MAX_RESPONSE))
        .read_line(&mut out)
        .map_err(err)?;
    if !out.ends_with('\n') {
        return Err(VmmError::BadResponse {
            path: path.to_path_buf(),
            reason: format!("no complete line (got {} bytes)", out.len()),
        });
    }
    out.pop();
    Ok(out)
}

fn read_text(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).replace("\r\n", "\n"))
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
