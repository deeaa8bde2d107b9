//! Against real network namespaces, veths, taps and tc (root needed; no VM). Each test makes its
//! own namespaces (`hulltest-<pid>-<n>`) and a guard removes them, also on failure.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use serde_json::Value;

use super::*;

/// These tests need root (namespaces, veths, taps, tc); without it they fail, saying so.
fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the network tests need root (they create network namespaces, veths, taps and tc \
         filters); run them as root"
    );
}

/// A named network namespace, deleted on drop.
struct Ns {
    name: String,
}

impl Ns {
    fn new() -> Ns {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "hulltest-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        run(&["ip", "netns", "add", &name]);
        Ns { name }
    }

    fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Runs `ip -n NS ARGS...`, which must succeed.
    fn ip(&self, args: &str) -> String {
        let mut v = vec!["ip", "-n", &self.name];
        v.extend(args.split_whitespace());
        run(&v)
    }

    /// `ip -n NS -j ARGS...` parsed (None if the command fails, e.g. no such device).
    fn ip_json(&self, args: &str) -> Option<Value> {
        let mut v = vec!["-n", &self.name, "-j"];
        v.extend(args.split_whitespace());
        json("ip", &v)
    }

    /// `tc -n NS -j ARGS...` parsed.
    fn tc_json(&self, args: &str) -> Option<Value> {
        let mut v = vec!["-n", &self.name, "-j"];
        v.extend(args.split_whitespace());
        json("tc", &v)
    }

    /// Runs `f` on a thread that has joined this namespace.
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = File::open(self.path()).unwrap();
        std::thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(cmd: &str, args: &[&str]) -> Option<Value> {
    let out = Command::new(cmd).args(args).output().unwrap();
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).unwrap();
    if s.trim().is_empty() {
        return Some(Value::Array(Vec::new()));
    }
    Some(serde_json::from_str(&s).unwrap_or_else(|e| panic!("{cmd} {args:?}: {e}: {s}")))
}

/// A pod namespace with `ifname` (a veth, `mac`, `mtu`, `addr`) whose peer `peer` is in `outside`
/// with `peer_addr`; both up.
#[allow(clippy::too_many_arguments)]
fn veth(
    pod: &Ns,
    ifname: &str,
    mac: &str,
    mtu: u32,
    addr: Option<&str>,
    outside: &Ns,
    peer: &str,
    peer_addr: Option<&str>,
) {
    run(&[
        "ip",
        "link",
        "add",
        ifname,
        "netns",
        &pod.name,
        "type",
        "veth",
        "peer",
        "name",
        peer,
        "netns",
        &outside.name,
    ]);
    pod.ip(&format!("link set {ifname} address {mac} mtu {mtu} up"));
    outside.ip(&format!("link set {peer} mtu {mtu} up"));
    if let Some(a) = addr {
        pod.ip(&format!("addr add {a} dev {ifname}"));
    }
    if let Some(a) = peer_addr {
        outside.ip(&format!("addr add {a} dev {peer}"));
    }
}

fn net(s: &str) -> IpNet {
    let (a, p) = s.split_once('/').unwrap();
    IpNet {
        addr: a.parse().unwrap(),
        prefix_len: p.parse().unwrap(),
    }
}

fn has_link(ns: &Ns, name: &str) -> bool {
    ns.ip_json(&format!("link show dev {name}")).is_some()
}

fn has_ingress(ns: &Ns, dev: &str) -> bool {
    let q = ns.tc_json(&format!("qdisc show dev {dev}")).unwrap();
    q.as_array().unwrap().iter().any(|q| q["kind"] == "ingress")
}

/// Whether `dev`'s ingress has a u32 filter with `mirred egress redirect` to `to`.
fn redirects(ns: &Ns, dev: &str, to: &str) -> bool {
    let Some(f) = ns.tc_json(&format!("filter show dev {dev} ingress")) else {
        return false;
    };
    f.as_array().unwrap().iter().any(|f| {
        f["kind"] == "u32"
            && f["protocol"] == "all"
            && f["options"]["actions"].as_array().is_some_and(|a| {
                a.iter().any(|a| {
                    a["kind"] == "mirred"
                        && a["mirred_action"] == "redirect"
                        && a["direction"] == "egress"
                        && a["to_dev"] == to
                })
            })
    })
}

/// Nothing of hull's is left in `pod`: no `*_hull` tap and no ingress qdisc on `devs`.
fn assert_clean(pod: &Ns, devs: &[&str]) {
    let links = pod.ip_json("link show").unwrap();
    let names: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["ifname"].as_str())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("tap")
            && n.ends_with(TAP_SUFFIX)
            && pod.ip_json(&format!("-d link show dev {n}")).unwrap()[0]["linkinfo"]["info_kind"]
                == "tun"),
        "a hull tap is left: {names:?}"
    );
    for d in devs {
        assert!(!has_ingress(pod, d), "an ingress qdisc is left on {d}");
    }
}

fn eth0_config() -> (Ns, Ns, NetworkConfig) {
    let (pod, outside) = (Ns::new(), Ns::new());
    veth(
        &pod,
        "eth0",
        "02:00:0a:63:01:02",
        1400,
        Some("10.99.1.2/24"),
        &outside,
        "peer0",
        Some("10.99.1.1/24"),
    );
    pod.ip("addr add fd00:99::2/64 dev eth0 nodad");
    outside.ip("addr add fd00:99::1/64 dev peer0 nodad");
    pod.ip("route add default via 10.99.1.1");
    pod.ip("-6 route add default via fd00:99::1 metric 1024");
    let cfg = inspect(Some(&pod.path())).unwrap();
    (pod, outside, cfg)
}

#[test]
fn inspect_reads_interfaces_addresses_and_routes_exactly() {
    require_root();
    let (_pod, _outside, cfg) = eth0_config();
    assert_eq!(
        cfg.interfaces,
        vec![NetInterface {
            name: "eth0".into(),
            mac: "02:00:0a:63:01:02".into(),
            device_mac: None,
            mtu: 1400,
            addresses: vec![net("10.99.1.2/24"), net("fd00:99::2/64")],
        }]
    );
    let route = |dst: Option<&str>, gw: Option<&str>, src: Option<&str>, metric, link| NetRoute {
        destination: dst.map(net),
        gateway: gw.map(|g| g.parse().unwrap()),
        device: "eth0".into(),
        source: src.map(|s| s.parse().unwrap()),
        metric,
        scope_link: link,
    };
    let mut want = vec![
        route(None, Some("10.99.1.1"), None, None, false),
        route(Some("10.99.1.0/24"), None, Some("10.99.1.2"), None, true),
        route(Some("fd00:99::/64"), None, None, Some(256), false),
        route(None, Some("fd00:99::1"), None, Some(1024), false),
    ];
    let mut got = cfg.routes.clone();
    let key = |r: &NetRoute| format!("{r:?}");
    want.sort_by_key(key);
    got.sort_by_key(key);
    assert_eq!(got, want, "routes: {:#?}", cfg.routes);
    cfg.check().unwrap();
}

#[test]
fn no_namespace_or_loopback_only_is_an_empty_config() {
    require_root();
    assert_eq!(inspect(None).unwrap(), NetworkConfig::default());
    let ns = Ns::new();
    ns.ip("link set lo up");
    assert_eq!(inspect(Some(&ns.path())).unwrap(), NetworkConfig::default());
    assert!(plumb(&ns.path(), &NetworkConfig::default())
        .unwrap()
        .is_empty());
    let gone = PathBuf::from(format!(
        "/var/run/netns/hulltest-{}-none",
        std::process::id()
    ));
    assert!(matches!(
        inspect(Some(&gone)),
        Err(NetworkError::Namespace { .. })
    ));
}

#[test]
fn plumb_makes_the_tap_and_both_redirects_and_teardown_removes_them() {
    require_root();
    let (pod, _outside, cfg) = eth0_config();
    let taps = plumb(&pod.path(), &cfg).unwrap();
    assert_eq!(
        taps,
        vec![TapDevice {
            name: "tap0_hull".into(),
            mac: "02:00:0a:63:01:02".into(),
            mtu: 1400,
        }]
    );
    let l = pod.ip_json("-d link show dev tap0_hull").unwrap();
    assert_eq!(l[0]["mtu"], 1400, "{l}");
    assert_eq!(l[0]["linkinfo"]["info_kind"], "tun", "{l}");
    assert_eq!(l[0]["linkinfo"]["info_data"]["type"], "tap", "{l}");
    assert_eq!(l[0]["linkinfo"]["info_data"]["persist"], true, "{l}");
    assert!(
        l[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{l}"
    );
    assert!(has_ingress(&pod, "eth0") && has_ingress(&pod, "tap0_hull"));
    assert!(redirects(&pod, "eth0", "tap0_hull"));
    assert!(redirects(&pod, "tap0_hull", "eth0"));
    // The config still reads the same with the tap there.
    assert_eq!(inspect(Some(&pod.path())).unwrap(), cfg);

    teardown(&pod.path()).unwrap();
    assert!(!has_link(&pod, "tap0_hull"));
    assert_clean(&pod, &["eth0"]);
    assert!(has_link(&pod, "eth0"));
    teardown(&pod.path()).unwrap();

    // A namespace that is gone is not an error.
    let path = pod.path();
    drop(pod);
    teardown(&path).unwrap();
    teardown(std::path::Path::new("/proc/4194304/ns/net")).unwrap();
}

#[test]
fn teardown_cleans_up_after_a_crash_given_only_the_namespace() {
    require_root();
    let (pod, _outside, cfg) = eth0_config();
    // A crash after plumb: hull lost all state but the path.
    plumb(&pod.path(), &cfg).unwrap();
    // And a stray ingress qdisc without a filter (a crash between the qdisc and its filter) on a
    // second interface, and an unrelated veth named like ours that must stay.
    veth(
        &pod,
        "eth1",
        "02:00:0a:63:02:02",
        1500,
        Some("10.99.2.2/24"),
        &_outside,
        "peer1",
        None,
    );
    run(&[
        "tc", "-n", &pod.name, "qdisc", "add", "dev", "eth1", "ingress",
    ]);
    teardown(&pod.path()).unwrap();
    assert_clean(&pod, &["eth0", "eth1"]);
    assert!(has_link(&pod, "eth0") && has_link(&pod, "eth1"));

    // A teardown that crashed after deleting the tap but before the qdisc: the filter on eth0
    // redirects to a link that is gone, and the next teardown still removes it.
    plumb(&pod.path(), &cfg).unwrap();
    pod.ip("link del tap0_hull");
    assert!(has_ingress(&pod, "eth0"));
    teardown(&pod.path()).unwrap();
    assert_clean(&pod, &["eth0", "eth1"]);
}

#[test]
fn an_interface_without_an_address_is_an_error_naming_it() {
    require_root();
    let (pod, outside) = (Ns::new(), Ns::new());
    veth(
        &pod,
        "eth0",
        "02:00:0a:63:04:02",
        1500,
        Some("10.99.4.2/24"),
        &outside,
        "peer0",
        None,
    );
    veth(
        &pod,
        "net1",
        "02:00:0a:63:05:02",
        1500,
        None,
        &outside,
        "peer1",
        None,
    );
    let e = inspect(Some(&pod.path())).unwrap_err();
    assert!(
        matches!(&e, NetworkError::Unsupported { name, .. } if name == "net1"),
        "{e}"
    );
    assert!(e.to_string().contains("net1") && e.to_string().contains("no IP address"));
    assert_clean(&pod, &["eth0", "net1"]);

    // A config naming an interface that is not there fails the same way, leaving nothing.
    let cfg = NetworkConfig {
        interfaces: vec![NetInterface {
            name: "eth9".into(),
            mac: "02:00:0a:63:09:02".into(),
            device_mac: None,
            mtu: 1500,
            addresses: vec![net("10.99.9.2/24")],
        }],
        routes: Vec::new(),
    };
    let e = plumb(&pod.path(), &cfg).unwrap_err();
    assert!(
        matches!(&e, NetworkError::NotFound(n) if n == "eth9"),
        "{e}"
    );
    assert_clean(&pod, &["eth0", "net1"]);
}

#[test]
fn a_tap_link_cannot_be_mirrored() {
    require_root();
    let pod = Ns::new();
    pod.enter(|| tap::create_persistent("mytap0").unwrap());
    pod.ip("addr add 10.99.6.2/24 dev mytap0");
    let e = inspect(Some(&pod.path())).unwrap_err();
    assert!(
        matches!(&e, NetworkError::Unsupported { name, .. } if name == "mytap0"),
        "{e}"
    );
}

#[test]
fn a_setup_failing_halfway_leaves_nothing() {
    require_root();
    let (pod, outside) = (Ns::new(), Ns::new());
    veth(
        &pod,
        "eth0",
        "02:00:0a:63:07:02",
        1500,
        Some("10.99.7.2/24"),
        &outside,
        "peer0",
        None,
    );
    veth(
        &pod,
        "eth1",
        "02:00:0a:63:08:02",
        9000,
        Some("10.99.8.2/24"),
        &outside,
        "peer1",
        None,
    );
    let cfg = inspect(Some(&pod.path())).unwrap();
    assert_eq!(cfg.interfaces.len(), 2);
    // Something else already has the second tap's name.
    run(&[
        "ip",
        "link",
        "add",
        "tap1_hull",
        "netns",
        &pod.name,
        "type",
        "veth",
        "peer",
        "name",
        "other",
        "netns",
        &outside.name,
    ]);
    let e = plumb(&pod.path(), &cfg).unwrap_err();
    assert!(
        matches!(&e, NetworkError::TapExists(n) if n == "tap1_hull"),
        "{e}"
    );
    assert!(!has_link(&pod, "tap0_hull"), "the first tap is left");
    assert_clean(&pod, &["eth0", "eth1"]);
    // Not hull's: left alone, also by teardown.
    assert!(has_link(&pod, "tap1_hull"));
    teardown(&pod.path()).unwrap();
    assert!(has_link(&pod, "tap1_hull"));
}

/// Reads frames from `f` until `want` accepts one or `limit` passes.
fn read_until(f: &mut File, limit: Duration, want: impl Fn(&[u8]) -> bool) -> Option<Vec<u8>> {
    let end = Instant::now() + limit;
    let mut buf = vec![0u8; 65536];
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        let mut pfd = libc::pollfd {
            fd: f.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis().max(1)).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd, for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r <= 0 {
            continue;
        }
        let n = f.read(&mut buf).unwrap();
        if want(&buf[..n]) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// The experimental ethertype of the frame the test writes into the tap.
const TEST_ETHERTYPE: u16 = 0x88b5;

#[test]
fn traffic_really_flows_between_the_interface_and_the_tap() {
    require_root();
    let (pod, outside) = (Ns::new(), Ns::new());
    veth(
        &pod,
        "eth0",
        "02:00:0a:63:03:02",
        1500,
        Some("10.99.3.2/24"),
        &outside,
        "peer0",
        Some("10.99.3.1/24"),
    );
    let cfg = inspect(Some(&pod.path())).unwrap();
    let taps = plumb(&pod.path(), &cfg).unwrap();
    assert_eq!(taps[0].name, "tap0_hull");

    // Stand in for hull-vmm: open the tap by name in the pod's namespace.
    let mut tapf = pod.enter(|| tap::open("tap0_hull", libc::IFF_TAP | libc::IFF_NO_PI).unwrap());

    // Outside -> eth0 -> tap: the peer's ARP for 10.99.3.2 comes off the tap.
    // (A UDP datagram from the peer's namespace: its kernel first ARPs for the address.)
    outside.enter(|| {
        let u = std::net::UdpSocket::bind("10.99.3.1:0").unwrap();
        u.send_to(b"hello", "10.99.3.2:9").unwrap();
    });
    let arp = read_until(&mut tapf, Duration::from_secs(5), |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[38..42] == [10, 99, 3, 2]
    });
    assert!(
        arp.is_some(),
        "no ARP request for 10.99.3.2 came off the tap"
    );

    // Tap -> eth0 -> outside: a frame written into the tap arrives at the peer.
    let sock: OwnedFd = outside.enter(|| {
        // SAFETY: plain socket(2); the result is checked below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::c_int::from(TEST_ETHERTYPE.to_be()),
            )
        };
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a fresh socket nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    });
    let mut sock = File::from(sock);
    let mut frame = vec![0xff; 6];
    frame.extend([0x02, 0x00, 0x0a, 0x63, 0x03, 0x02]);
    frame.extend(TEST_ETHERTYPE.to_be_bytes());
    frame.extend(b"hull tcfilter test frame");
    frame.resize(60, 0);
    tapf.write_all(&frame).unwrap();
    let got = read_until(&mut sock, Duration::from_secs(5), |f| {
        f.windows(24).any(|w| w == b"hull tcfilter test frame")
    });
    assert!(
        got.is_some(),
        "the frame written into the tap did not reach the peer"
    );

    drop(tapf);
    teardown(&pod.path()).unwrap();
    assert_clean(&pod, &["eth0"]);
}

/// A sandbox's own namespace, made by `create_own` where `ip -n` finds it
/// (`/var/run/netns/hulltest-<pid>-own<n>`); `ip netns del` on drop removes it if the test
/// did not.
fn own_ns(n: usize) -> (Ns, TapDevice) {
    std::fs::create_dir_all("/var/run/netns").unwrap();
    let ns = Ns {
        name: format!("hulltest-{}-own{n}", std::process::id()),
    };
    let tap = create_own(&ns.path()).unwrap();
    (ns, tap)
}

#[test]
fn an_own_namespace_boots_with_a_placeholder_and_attaches_what_the_hook_put_there() {
    require_root();
    let (own, tap) = own_ns(0);
    assert_eq!(
        tap,
        TapDevice {
            name: "tap0_hull".into(),
            mac: PLACEHOLDER_MAC.into(),
            mtu: 1500,
        }
    );
    let l = own.ip_json("-d link show dev tap0_hull").unwrap();
    assert_eq!(l[0]["linkinfo"]["info_data"]["persist"], true, "{l}");
    let lo = own.ip_json("link show dev lo").unwrap();
    assert!(
        lo[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{lo}"
    );
    // Making it again at the same path fails and leaves the first one alone.
    assert!(matches!(
        create_own(&own.path()),
        Err(NetworkError::Namespace { .. })
    ));
    assert!(has_link(&own, "tap0_hull"));

    // Before any hook (docker's --network none): nothing to attach, nothing changed.
    assert_eq!(
        attach(&own.path(), "tap0_hull").unwrap(),
        NetworkConfig::default()
    );
    assert!(!has_ingress(&own, "tap0_hull"));

    // The hook's part (docker's libnetwork): a veth with an address and a default route.
    let outside = Ns::new();
    veth(
        &own,
        "eth0",
        "02:42:ac:11:00:02",
        1400,
        Some("172.17.0.2/16"),
        &outside,
        "peer0",
        Some("172.17.0.1/16"),
    );
    own.ip("route add default via 172.17.0.1");
    let cfg = attach(&own.path(), "tap0_hull").unwrap();
    assert_eq!(
        cfg.interfaces,
        vec![NetInterface {
            name: "eth0".into(),
            mac: "02:42:ac:11:00:02".into(),
            device_mac: Some(PLACEHOLDER_MAC.into()),
            mtu: 1400,
            addresses: vec![net("172.17.0.2/16")],
        }]
    );
    assert!(
        cfg.routes
            .iter()
            .any(|r| r.destination.is_none() && r.gateway == Some("172.17.0.1".parse().unwrap())),
        "{:?}",
        cfg.routes
    );
    cfg.check().unwrap();
    let l = own.ip_json("link show dev tap0_hull").unwrap();
    assert_eq!(l[0]["mtu"], 1400, "{l}");
    assert!(redirects(&own, "eth0", "tap0_hull"));
    assert!(redirects(&own, "tap0_hull", "eth0"));

    // Removing it: the mount and the file go, and with them (no process holds it) the
    // namespace, its tap and docker's veth, whose peer outside goes too.
    remove_own(&own.path()).unwrap();
    assert!(!own.path().exists());
    // (The kernel frees a namespace from a work queue: wait for it, generously.)
    let deadline = Instant::now() + Duration::from_secs(30);
    while has_link(&outside, "peer0") {
        assert!(Instant::now() < deadline, "the namespace is still there");
        std::thread::sleep(Duration::from_millis(50));
    }
    remove_own(&own.path()).unwrap();
}

#[test]
fn an_own_namespace_with_two_interfaces_is_an_error_naming_the_second() {
    require_root();
    let (own, _tap) = own_ns(1);
    let outside = Ns::new();
    for (n, mac) in [(0, "02:42:ac:11:00:02"), (1, "02:42:ac:12:00:02")] {
        veth(
            &own,
            &format!("eth{n}"),
            mac,
            1500,
            Some(&format!("172.{}.0.2/16", 17 + n)),
            &outside,
            &format!("peer{n}"),
            None,
        );
    }
    let e = attach(&own.path(), "tap0_hull").unwrap_err();
    assert!(
        matches!(&e, NetworkError::Unsupported { name, .. } if name == "eth1"),
        "{e}"
    );
    assert_clean_ingress(&own, &["eth0", "eth1", "tap0_hull"]);
    remove_own(&own.path()).unwrap();
}

fn assert_clean_ingress(ns: &Ns, devs: &[&str]) {
    for d in devs {
        assert!(!has_ingress(ns, d), "an ingress qdisc is left on {d}");
    }
}
