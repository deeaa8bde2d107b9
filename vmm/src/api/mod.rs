//! The control API server on hull-vmm's event loop: JSON over a Unix socket, one request per
//! line, one response line per request, any number of requests per connection
//! (`socat - UNIX-CONNECT:api.sock` works). The requests, responses and limits are plain data in
//! `hull_vmm_api::api`, which documents the protocol; this module serves it and
//! [`VmController`] is what it drives.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};

pub use hull_vmm_api::api::*;

/// Most simultaneous API connections.
pub const MAX_CONNECTIONS: usize = 16;
/// A connection with nothing pending for this long makes room when all
/// [`MAX_CONNECTIONS`] are taken: clients that hold connections open and say nothing cannot
/// lock out the runtime's own requests (which would take the VMM for hung).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(2);

/// What the API drives (implemented by the VMM).
pub trait VmController: Send + Sync {
    fn pause(&self) -> Result<(), String>;
    fn resume(&self) -> Result<(), String>;
    fn shutdown(&self, timeout_ms: u64) -> Result<(), String>;
    /// A template run's snapshot (see `ApiRequest::Snapshot`).
    fn snapshot(&self) -> Result<(), String> {
        Err("this VM was not started as a template (snapshot_to)".into())
    }
    /// The `seccomp_probe` test hook (see `ApiRequest::SeccompProbe`).
    fn seccomp_probe(&self) -> Result<(), String> {
        Err("seccomp_probe is a test hook this VM was not configured with".into())
    }
    fn stats(&self) -> VmStats;
    fn state(&self) -> RunState;
}

/// Runs one request line against `ctl`.
pub fn handle_line(ctl: &dyn VmController, line: &[u8]) -> ApiResponse {
    let req: ApiRequest = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => return ApiResponse::error(format!("invalid request: {e}")),
    };
    let done = |r: Result<(), String>| match r {
        Ok(()) => ApiResponse {
            state: Some(ctl.state()),
            ..ApiResponse::ok()
        },
        Err(e) => ApiResponse::error(e),
    };
    match req {
        ApiRequest::Pause {} => done(ctl.pause()),
        ApiRequest::Resume {} => done(ctl.resume()),
        ApiRequest::Shutdown { timeout_ms } => {
            let t = timeout_ms.unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT_MS);
            if t > MAX_SHUTDOWN_TIMEOUT_MS {
                return ApiResponse::error(format!(
                    "timeout_ms must be at most {MAX_SHUTDOWN_TIMEOUT_MS}"
                ));
            }
            done(ctl.shutdown(t))
        }
        ApiRequest::SeccompProbe {} => done(ctl.seccomp_probe()),
        ApiRequest::Snapshot {} => done(ctl.snapshot()),
        ApiRequest::Stats {} => ApiResponse {
            stats: Some(ctl.stats()),
            ..ApiResponse::ok()
        },
    }
}

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot listen on api socket {path}: {source}")]
    Bind {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
    /// When it last sent anything (or was accepted).
    last: Instant,
}

/// Whether the peer of `stream` may drive this VMM (its API, or the agent behind the hybrid
/// vsock socket): root, or the user hull-vmm runs as. (The sockets' modes already keep others
/// out; this holds if a directory's mode is ever wrong.)
pub(crate) fn peer_allowed(stream: &UnixStream) -> bool {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    match getsockopt(stream, PeerCredentials) {
        Ok(c) => c.uid() == 0 || c.uid() == nix::unistd::geteuid().as_raw(),
        Err(_) => false,
    }
}

fn refuse(mut s: UnixStream, why: &str) {
    let _ = writeln!(
        s,
        "{}",
        serde_json::to_string(&ApiResponse::error(why)).unwrap_or_default()
    );
}

/// The API socket on the VMM's event loop.
pub struct ApiServer {
    listener: UnixListener,
    conns: HashMap<RawFd, Conn>,
    ctl: Arc<dyn VmController>,
}

impl ApiServer {
    /// Binds `path` (which the caller has checked does not exist and removes at exit).
    pub fn bind(path: &Path, ctl: Arc<dyn VmController>) -> Result<ApiServer, ApiError> {
        let err = |source| ApiError::Bind {
            path: path.to_path_buf(),
            source,
        };
        let listener = UnixListener::bind(path).map_err(err)?;
        // Its owner's alone, whatever the process's umask (the virtio-fs passthrough clears it);
        // peers are checked on accept too.
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        Ok(ApiServer {
            listener,
            conns: HashMap::new(),
            ctl,
        })
    }

    fn accept(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if !peer_allowed(&stream) {
                        tracing::warn!("api: a connection from another user refused");
                        refuse(stream, "permission denied");
                        continue;
                    }
                    if self.conns.len() >= MAX_CONNECTIONS {
                        self.drop_idle(ops);
                    }
                    if self.conns.len() >= MAX_CONNECTIONS {
                        refuse(stream, "too many connections");
                        continue;
                    }
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    if let Err(e) = ops.add(Events::new(&stream, EventSet::IN)) {
                        tracing::warn!("api: cannot watch a connection: {e:?}");
                        continue;
                    }
                    self.conns.insert(
                        fd,
                        Conn {
                            stream,
                            buf: Vec::new(),
                            last: Instant::now(),
                        },
                    );
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!("api: accept failed: {e}");
                    break;
                }
            }
        }
    }

    /// Closes the connections that have had nothing pending for [`IDLE_TIMEOUT`].
    fn drop_idle(&mut self, ops: &mut EventOps) {
        let now = Instant::now();
        let idle: Vec<RawFd> = self
            .conns
            .iter()
            .filter(|(_, c)| c.buf.is_empty() && now.duration_since(c.last) >= IDLE_TIMEOUT)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in idle {
            tracing::debug!("api: closing a connection idle for {IDLE_TIMEOUT:?}");
            self.close(fd, ops);
        }
    }

    fn close(&mut self, fd: RawFd, ops: &mut EventOps) {
        if let Some(c) = self.conns.remove(&fd) {
            let _ = ops.remove(Events::new(&c.stream, EventSet::IN));
        }
    }

    /// Reads what is available; answers every complete line. False when the connection ends.
    fn serve(&mut self, fd: RawFd) -> bool {
        let ctl = self.ctl.clone();
        let Some(c) = self.conns.get_mut(&fd) else {
            return false;
        };
        let mut chunk = [0u8; 4096];
        loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    c.buf.extend_from_slice(&chunk[..n]);
                    c.last = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            if c.buf.len() > MAX_REQUEST && !c.buf.contains(&b'\n') {
                break;
            }
        }
        while let Some(pos) = c.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = c.buf.drain(..=pos).collect();
            let line = &line[..line.len() - 1];
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let resp = handle_line(ctl.as_ref(), line);
            let mut out = serde_json::to_vec(&resp).unwrap_or_default();
            out.push(b'\n');
            // Responses are small; a client that does not read them is dropped.
            if c.stream.write_all(&out).is_err() {
                return false;
            }
        }
        if c.buf.len() > MAX_REQUEST {
            let mut out = serde_json::to_vec(&ApiResponse::error(format!(
                "request longer than {MAX_REQUEST} bytes"
            )))
            .unwrap_or_default();
            out.push(b'\n');
            let _ = c.stream.write_all(&out);
            return false;
        }
        true
    }
}

impl MutEventSubscriber for ApiServer {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.listener.as_raw_fd() {
            self.accept(ops);
            return;
        }
        let alive = events.event_set().contains(EventSet::IN) && self.serve(fd);
        if !alive {
            self.close(fd, ops);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.listener, EventSet::IN)) {
            tracing::error!("api: cannot watch the listening socket: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Fake {
        calls: Mutex<Vec<String>>,
    }
    impl VmController for Fake {
        fn pause(&self) -> Result<(), String> {
            self.calls.lock().unwrap().push("pause".into());
            Ok(())
        }
        fn resume(&self) -> Result<(), String> {
            Err("not paused".into())
        }
        fn shutdown(&self, t: u64) -> Result<(), String> {
            self.calls.lock().unwrap().push(format!("shutdown {t}"));
            Ok(())
        }
        fn stats(&self) -> VmStats {
            VmStats {
                vcpus: 2,
                memory_mib: 128,
                uptime_ms: 5,
                state: RunState::Running,
                exits: ExitCounts::default(),
            }
        }
        fn state(&self) -> RunState {
            RunState::Paused
        }
    }

    fn j(r: &ApiResponse) -> serde_json::Value {
        serde_json::to_value(r).unwrap()
    }

    #[test]
    fn requests() {
        let f = Fake::default();
        assert_eq!(
            j(&handle_line(&f, br#"{"action":"pause"}"#)),
            serde_json::json!({"ok":true,"state":"paused"})
        );
        assert_eq!(
            j(&handle_line(&f, br#"{"action":"resume"}"#)),
            serde_json::json!({"ok":false,"error":"not paused"})
        );
        handle_line(&f, br#"{"action":"shutdown"}"#);
        handle_line(&f, br#"{"action":"shutdown","timeout_ms":0}"#);
        let r = handle_line(&f, br#"{"action":"shutdown","timeout_ms":600001}"#);
        assert!(!r.ok);
        assert_eq!(
            *f.calls.lock().unwrap(),
            vec!["pause", "shutdown 10000", "shutdown 0"]
        );
        let s = j(&handle_line(&f, br#"{"action":"stats"}"#));
        assert_eq!(s["stats"]["vcpus"], 2);
        // Clients (the runtime) parse responses with the same types.
        let back: ApiResponse = serde_json::from_value(s.clone()).unwrap();
        assert_eq!(back.stats.unwrap().memory_mib, 128);
        let err: ApiResponse = serde_json::from_str(r#"{"ok":false,"error":"x"}"#).unwrap();
        assert_eq!(err.error.as_deref(), Some("x"));
        assert_eq!(s["stats"]["exits"]["io_in"], 0);
    }

    #[test]
    fn bad_requests_are_errors() {
        let f = Fake::default();
        for bad in [
            &b"not json"[..],
            br#"{"action":"explode"}"#,
            br#"{"action":"pause","extra":1}"#,
            br#"{}"#,
            b"\xff\xfe",
        ] {
            let r = handle_line(&f, bad);
            assert!(!r.ok);
            assert!(r.error.unwrap().starts_with("invalid request"));
        }
        assert!(f.calls.lock().unwrap().is_empty());
    }

    type Manager =
        event_manager::EventManager<Arc<std::sync::Mutex<dyn MutEventSubscriber + Send>>>;

    /// An API server on a fresh socket in a directory of its own, on an event manager the test
    /// runs by hand: (the directory, the socket, the manager).
    fn served(name: &str) -> (std::path::PathBuf, std::path::PathBuf, Manager) {
        use event_manager::SubscriberOps;
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let ctl: Arc<dyn VmController> = Arc::new(Fake::default());
        let server = ApiServer::bind(&path, ctl).unwrap();
        let mut em = Manager::new().unwrap();
        em.add_subscriber(Arc::new(std::sync::Mutex::new(server)));
        (dir, path, em)
    }

    #[test]
    fn server_over_a_socket() {
        let (dir, path, mut em) = served("hull-api-test");
        let mut client = UnixStream::connect(&path).unwrap();
        client
            .write_all(b"{\"action\":\"stats\"}\n\n{\"action\":\"pause\"}\n")
            .unwrap();
        let mut got = String::new();
        let mut buf = [0u8; 4096];
        client.set_nonblocking(true).unwrap();
        for _ in 0..100 {
            em.run_with_timeout(50).unwrap();
            match client.read(&mut buf) {
                Ok(n) => got.push_str(std::str::from_utf8(&buf[..n]).unwrap()),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            if got.lines().count() >= 2 {
                break;
            }
        }
        let lines: Vec<&str> = got.lines().collect();
        assert_eq!(lines.len(), 2, "{got}");
        assert!(lines[0].contains("\"uptime_ms\":5"));
        assert_eq!(lines[1], r#"{"ok":true,"state":"paused"}"#);
        drop(client);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn idle_connections_make_room_for_a_new_one() {
        let (dir, path, mut em) = served("hull-api-idle");
        // A stuck client takes every connection and says nothing.
        let mut stuck = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            stuck.push(UnixStream::connect(&path).unwrap());
            em.run_with_timeout(50).unwrap();
        }
        let ask = |em: &mut event_manager::EventManager<_>| -> String {
            let mut c = UnixStream::connect(&path).unwrap();
            c.write_all(b"{\"action\":\"stats\"}\n").unwrap();
            c.set_nonblocking(true).unwrap();
            let mut got = String::new();
            let mut buf = [0u8; 4096];
            for _ in 0..100 {
                em.run_with_timeout(50).unwrap();
                match c.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => got.push_str(std::str::from_utf8(&buf[..n]).unwrap()),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("{e}"),
                }
                if got.contains('\n') {
                    break;
                }
            }
            got
        };
        // While they are fresh, a new connection is refused, with the reason.
        let got = ask(&mut em);
        assert!(got.contains("too many connections"), "{got}");
        // Once they have been idle for the limit, they make room: the request is answered.
        std::thread::sleep(IDLE_TIMEOUT + Duration::from_millis(100));
        let got = ask(&mut em);
        assert!(got.contains("\"uptime_ms\":5"), "{got}");
        drop(stuck);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_connection_from_another_user_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, path, mut em) = served("hull-api-peer");
        // As if the socket's mode were wrong: anyone may connect.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let p = path.clone();
        // A thread of its own takes another user's effective uid (what SO_PEERCRED records;
        // the raw system call changes only the calling thread) and connects. It keeps root as
        // its real and saved uid so that it can take back root's file-system uid: the path is
        // then found even when the temporary directory is private to root (CI's TMPDIR).
        let client = std::thread::spawn(move || {
            // SAFETY: setresuid(2) and setfsuid(2) on this thread only, with plain integers.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, -1i64, 65534, 0) };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            // SAFETY: as above; setfsuid returns the previous value, checked below.
            unsafe { libc::syscall(libc::SYS_setfsuid, 0) };
            // SAFETY: setfsuid(-1) only reads the current value.
            let fsuid = unsafe { libc::syscall(libc::SYS_setfsuid, -1i64) };
            assert_eq!(fsuid, 0, "file-system uid taken back");
            let mut c = UnixStream::connect(&p).unwrap();
            // The server may have refused and closed already (EPIPE): its answer is still
            // there to read.
            let _ = c.write_all(b"{\"action\":\"pause\"}\n");
            let mut got = String::new();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = c.read_to_string(&mut got);
            got
        });
        let mut got = None;
        for _ in 0..200 {
            em.run_with_timeout(50).unwrap();
            if client.is_finished() {
                got = Some(client.join().unwrap());
                break;
            }
        }
        let got = got.expect("the client finished");
        assert!(got.contains("permission denied"), "{got}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
