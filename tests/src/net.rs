//! Networking checks shared by the VM, CRI and docker tests: a plain HTTP client, bulk
//! transfers checked with SHA-256 on both ends (a small HTTP server of the test's and busybox
//! wget on the other side), which virtio-net backend a VM's NIC is on, a runtime config and
//! wrapper for hull-vmm's own (userspace) device, and what a network set-up can leave behind
//! (namespaces, taps, links).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A GET of `http://addr:port/` from the host, with a deadline; the whole response.
pub fn http_get(addr: &str, port: u16) -> Result<String, String> {
    use std::io::{Read, Write};
    let sa: std::net::SocketAddr = format!("{addr}:{port}").parse().unwrap();
    let mut s = std::net::TcpStream::connect_timeout(&sa, Duration::from_secs(30))
        .map_err(|e| format!("connect {sa}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Every named network namespace (`/var/run/netns`) and every hull tap (`*_hull`) in them and
/// in the host's namespace.
pub fn netns_and_taps() -> (Vec<String>, Vec<String>) {
    let ns: Vec<String> = std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let mut taps = Vec::new();
    for n in ns.iter().map(Some).chain([None]) {
        let mut cmd = Command::new("ip");
        if let Some(n) = n {
            cmd.args(["-n", n]);
        }
        let out = cmd.args(["-o", "link", "show"]).output().unwrap();
        taps.extend(
            text(&out.stdout)
                .lines()
                .filter(|l| l.contains("_hull"))
                .map(|l| format!("{}: {l}", n.map(String::as_str).unwrap_or("host"))),
        );
    }
    (ns, taps)
}

/// Every nsfs mount point (a namespace kept by a bind mount: `ip netns`, docker's
/// `<exec-root>/netns/`, a hull sandbox's own `net.ns`), sorted.
pub fn nsfs_mounts() -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut v: Vec<String> = info
        .lines()
        .filter(|l| {
            l.split_once(" - ")
                .is_some_and(|(_, r)| r.split(' ').next() == Some("nsfs"))
        })
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect();
    v.sort();
    v
}

/// The names of the host namespace's links (a veth docker or CNI left shows here).
pub fn host_links() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let mut v: Vec<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    v.sort();
    v
}

/// Deterministic, incompressible-looking bytes (xorshift64): what the host sends in a transfer
/// test (incompressible, so nothing on the way can shrink it).
pub fn blob(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The SHA-256 of `data` in lowercase hex, by the host's `sha256sum` (coreutils): a tool
/// independent of the guest's busybox, which computes the other end's.
pub fn sha256_hex(data: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum (coreutils)");
    let mut stdin = c.stdin.take().unwrap();
    let data = data.to_vec();
    let w = std::thread::spawn(move || stdin.write_all(&data));
    let out = c.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("sha256sum printed a sum")
        .to_string()
}

/// What [`serve`] saw.
#[derive(Debug, Default)]
pub struct Served {
    /// The SHA-256 (hex) of the body `POST /up` received, if one came.
    pub upload_sha: Option<String>,
    /// That body's length in bytes.
    pub upload_len: usize,
    /// Each request's peer address, in the order they came.
    pub peers: Vec<IpAddr>,
}

/// `l.accept()`, waiting at most `limit` (a peer that never comes fails the server rather than
/// hanging the test).
fn accept_within(l: &TcpListener, limit: Duration) -> Result<(TcpStream, IpAddr), String> {
    l.set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let start = Instant::now();
    loop {
        match l.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false)
                    .map_err(|e| format!("accepted socket: {e}"))?;
                return Ok((s, peer.ip()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if start.elapsed() > limit {
                    return Err(format!("no request came within {limit:?}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    }
}

/// Serves `requests` HTTP/1.0 requests on `l`, each connection's I/O (and the wait for it)
/// limited to `limit`: `GET /done` is answered once `go` says so (a guest waits on it while the
/// host does its part; at once without `go`); any other `GET` answers `data`; `POST /up` keeps
/// the SHA-256 and length of the body it received. The result is checked by the test.
pub fn serve(
    l: TcpListener,
    data: Vec<u8>,
    requests: usize,
    go: Option<Receiver<()>>,
    limit: Duration,
) -> JoinHandle<Result<Served, String>> {
    std::thread::spawn(move || {
        let mut served = Served::default();
        for _ in 0..requests {
            let (s, peer) = accept_within(&l, limit)?;
            served.peers.push(peer);
            s.set_read_timeout(Some(limit)).unwrap();
            s.set_write_timeout(Some(limit)).unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line)
                .map_err(|e| format!("request: {e}"))?;
            let mut len = 0usize;
            loop {
                let mut h = String::new();
                r.read_line(&mut h).map_err(|e| format!("header: {e}"))?;
                if h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().map_err(|e| format!("length {v:?}: {e}"))?;
                }
            }
            let mut s: TcpStream = s;
            if line.starts_with("GET /done") {
                if let Some(go) = &go {
                    let _ = go.recv_timeout(limit);
                }
                s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\ndone\n")
                    .map_err(|e| format!("reply: {e}"))?;
            } else if line.starts_with("GET ") {
                write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n",
                    data.len()
                )
                .map_err(|e| format!("reply: {e}"))?;
                s.write_all(&data)
                    .map_err(|e| format!("body ({} bytes) to {peer}: {e}", data.len()))?;
            } else {
                let mut body = vec![0u8; len];
                r.read_exact(&mut body)
                    .map_err(|e| format!("upload of {len} bytes from {peer}: {e}"))?;
                served.upload_sha = Some(sha256_hex(&body));
                served.upload_len = len;
                s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                    .map_err(|e| format!("reply: {e}"))?;
            }
        }
        Ok(served)
    })
}

/// Bytes each way of [`check_transfers`].
pub const TRANSFER_BYTES: usize = 16 << 20;
/// How long one side of a transfer may wait for the other.
const TRANSFER_LIMIT: Duration = Duration::from_secs(240);

/// 16 MiB each way between the test process and a container, checked end to end: the test
/// serves [`blob`] over HTTP on `host:0` (an address of the host's that the container reaches);
/// in the container, `exec` (which runs `sh -c SCRIPT` there and returns its stdout, failing the
/// test if the command fails) downloads it with busybox wget into busybox sha256sum, then
/// uploads 16 MiB of text, 12 MiB of the guest's /dev/urandom in base64 (busybox wget posts a
/// file as a C string: up to its first NUL), from a file it checksummed first (bytes the host
/// cannot predict: only the two SHA-256s can agree). Both SHA-256s are
/// compared with the host's own (coreutils) of what it sent and received, and both requests
/// must come from `peer` (the container's address: the bytes crossed its NIC). `what` names
/// the container in failures.
pub fn check_transfers(host: &str, peer: &str, what: &str, exec: &dyn Fn(&str) -> String) {
    let l = TcpListener::bind((host, 0))
        .unwrap_or_else(|e| panic!("{what}: bind a server to the host's {host}: {e}"));
    let port = l.local_addr().unwrap().port();
    let data = blob(TRANSFER_BYTES);
    let want = sha256_hex(&data);
    let server = serve(l, data, 2, None, TRANSFER_LIMIT);
    let sum = |out: &str, file: &str| -> String {
        out.lines()
            .find_map(|l| l.strip_suffix(file).map(|s| s.trim().to_string()))
            .filter(|s| s.len() == 64)
            .unwrap_or_else(|| panic!("{what}: no sha256sum of {file:?} in {out:?}"))
    };
    let t0 = Instant::now();
    let down = exec(&format!(
        "set -o pipefail; wget -q -O - http://{host}:{port}/blob | sha256sum"
    ));
    assert_eq!(
        sum(&down, "  -"),
        want,
        "{what}: the SHA-256 of the {TRANSFER_BYTES} bytes host to container"
    );
    let down_time = t0.elapsed();
    let t1 = Instant::now();
    let up = exec(&format!(
        "set -o pipefail; head -c {} /dev/urandom | base64 -w 0 > /tmp/up && sha256sum /tmp/up && \
         wget -q -O - --post-file=/tmp/up http://{host}:{port}/up; st=$?; rm -f /tmp/up; exit $st",
        TRANSFER_BYTES / 4 * 3
    ));
    let up_time = t1.elapsed();
    let sent = sum(&up, "  /tmp/up");
    assert!(
        up.contains("\nok"),
        "{what}: the server's answer to the upload: {up:?}"
    );
    let served = server
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("{what}: the host's server: {e}"));
    assert_eq!(
        served.upload_len, TRANSFER_BYTES,
        "{what}: the bytes that came up"
    );
    assert_eq!(
        served.upload_sha.as_deref(),
        Some(sent.as_str()),
        "{what}: the SHA-256 of the {} bytes container to host",
        served.upload_len
    );
    eprintln!(
        "{what}: {TRANSFER_BYTES} bytes host to container in {down_time:?}, {} back in \
         {up_time:?} (each with its exec)",
        served.upload_len
    );
    let peer: IpAddr = peer
        .parse()
        .unwrap_or_else(|e| panic!("{what}: its address {peer:?}: {e}"));
    assert!(
        served.peers.iter().all(|p| *p == peer),
        "{what}: the transfers came from {:?}, not the container's address {peer}",
        served.peers
    );
}

/// The pid of the host kernel's vhost worker for the hull-vmm process `vmm` (named
/// `vhost-<pid>`), or `None` when none runs: the VM's NICs are then not on vhost-net. Before
/// Linux 6.4 the worker is a kernel thread (a process of its own in /proc); since, a thread of
/// hull-vmm's own (in `/proc/<vmm>/task`): both are looked at.
pub fn vhost_worker(vmm: i32) -> Option<i32> {
    let name = format!("vhost-{vmm}");
    let pids = |dir: &Path| -> Vec<i32> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let own = pids(&Path::new("/proc").join(vmm.to_string()).join("task"));
    own.into_iter().chain(pids(Path::new("/proc"))).find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
    })
}

/// Asserts which virtio-net backend the running hull-vmm `vmm` uses: the host kernel's vhost-net
/// (`vhost`: its worker `vhost-<pid>` runs) or hull-vmm's own device (none runs). `what` names
/// the VM in failures.
pub fn assert_net_backend(vmm: i32, vhost: bool, what: &str) {
    let comm = std::fs::read_to_string(format!("/proc/{vmm}/comm")).unwrap_or_default();
    assert_eq!(
        comm.trim(),
        "hull-vmm",
        "{what}: process {vmm} is not a running hull-vmm"
    );
    match (vhost, vhost_worker(vmm)) {
        (true, Some(_)) | (false, None) => {}
        (true, None) => panic!(
            "{what}: no vhost-{vmm} worker: hull-vmm {vmm}'s NIC is not on the host's vhost-net"
        ),
        (false, Some(w)) => panic!(
            "{what}: hull-vmm {vmm} has a vhost worker (pid {w}): its NIC is on the host's \
             vhost-net, not hull-vmm's own device"
        ),
    }
}

/// Writes the runtime config `out`: `base`'s (a config.toml of hull's) with
/// `net_backend = "userspace"` added, for sandboxes whose NICs are hull-vmm's own device.
pub fn write_userspace_config(base: &Path, out: &Path) {
    let mut s =
        std::fs::read_to_string(base).unwrap_or_else(|e| panic!("read {}: {e}", base.display()));
    assert!(
        !s.contains("net_backend"),
        "{} already names a net_backend:\n{s}",
        base.display()
    );
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    s.push_str("net_backend = \"userspace\"\n");
    std::fs::write(out, s).unwrap_or_else(|e| panic!("write {}: {e}", out.display()));
}

/// `'s'` for sh, whatever `s` holds.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Writes the executable script `path` that runs `program` with its arguments and
/// `HULL_CONFIG=config` (how a daemon that names a runtime or shim by one binary runs hull with
/// a config of its own: docker's `--add-runtime`, containerd's shim lookup).
pub fn write_config_wrapper(path: &Path, config: &Path, program: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let config = config.to_str().expect("a UTF-8 path");
    let program = program.to_str().expect("a UTF-8 path");
    std::fs::write(
        path,
        format!(
            "#!/bin/sh\nHULL_CONFIG={} exec {} \"$@\"\n",
            sh_quote(config),
            sh_quote(program)
        ),
    )
    .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}
