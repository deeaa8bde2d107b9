//! Networking checks shared by the CRI and docker tests: a plain HTTP client and what a
//! network set-up can leave behind (namespaces, taps, links).

use std::process::Command;
use std::time::Duration;

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
