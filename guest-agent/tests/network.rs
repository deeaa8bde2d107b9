//! `configure_network` against a real kernel: each test runs in a fresh network namespace (a
//! thread that unshared CLONE_NEWNET) with a veth pair standing in for the guest's virtio NIC,
//! and reads the result back with `ip -j`. Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and the
//! veth module; without them the tests fail, saying so.

use std::process::Command;

use hull_agent::network::{configure, NetError};
use hull_agent_protocol::{ErrorKind, IpNet, NetInterface, NetRoute, NetworkConfig};
use serde_json::Value;

/// The MAC of the veth end that plays the guest NIC, and of its peer.
const NIC_MAC: &str = "02:00:0a:58:00:05";
const PEER_MAC: &str = "02:00:0a:58:00:01";

/// Runs `f` in a thread of its own in a new, empty network namespace.
fn in_netns(f: impl FnOnce() + Send + 'static) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the network tests need root (they create network namespaces and veth devices)"
    );
    let t = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| {
            panic!("unshare(CLONE_NEWNET): {e} (the network tests need CAP_SYS_ADMIN)")
        });
        f();
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

/// Runs `configure` on a current-thread runtime (in the calling thread's namespace).
fn apply(cfg: &NetworkConfig) -> Result<(), NetError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(configure(cfg))
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_json(args: &[&str]) -> Vec<Value> {
    let mut all = vec!["-j"];
    all.extend_from_slice(args);
    let out = ip(&all);
    if out.trim().is_empty() {
        return Vec::new();
    }
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {all:?}: {e}: {out}"))
}

/// The guest NIC (`nic`, MAC [`NIC_MAC`]) and its peer (`peer`, up, so the NIC has a carrier).
fn veth(nic: &str, peer: &str) {
    ip(&[
        "link", "add", nic, "address", NIC_MAC, "type", "veth", "peer", "name", peer, "address",
        PEER_MAC,
    ]);
    ip(&["link", "set", peer, "up"]);
}

fn link(name: &str) -> Value {
    let mut l = ip_json(&["link", "show", "dev", name]);
    assert_eq!(l.len(), 1, "link {name}: {l:?}");
    l.remove(0)
}

fn flags(l: &Value) -> Vec<String> {
    l["flags"]
        .as_array()
        .map(|f| {
            f.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn is_up(name: &str) -> bool {
    flags(&link(name)).iter().any(|f| f == "UP")
}

/// `family local/prefixlen` of every address on the device, with its flags.
fn addresses(dev: &str) -> Vec<Value> {
    ip_json(&["addr", "show", "dev", dev])
        .first()
        .and_then(|l| l["addr_info"].as_array().cloned())
        .unwrap_or_default()
}

fn has_addr(dev: &str, family: &str, local: &str, prefix: u64) -> Option<Value> {
    addresses(dev).into_iter().find(|a| {
        a["family"] == family && a["local"] == local && a["prefixlen"].as_u64() == Some(prefix)
    })
}

fn net(s: &str) -> IpNet {
    let (a, p) = s.split_once('/').unwrap();
    IpNet {
        addr: a.parse().unwrap(),
        prefix_len: p.parse().unwrap(),
    }
}

fn route(dst: Option<&str>, gw: Option<&str>) -> NetRoute {
    NetRoute {
        destination: dst.map(net),
        gateway: gw.map(|g| g.parse().unwrap()),
        device: "eth0".into(),
        source: None,
        metric: None,
        scope_link: false,
    }
}

fn eth0() -> NetInterface {
    NetInterface {
        name: "eth0".into(),
        mac: NIC_MAC.into(),
        device_mac: None,
        mtu: 1400,
        addresses: vec![net("10.88.0.5/16"), net("fd00:88::5/64")],
    }
}

/// A pod's usual network: eth0 with an IPv4 and an IPv6 address, default routes for both, an
/// extra connected route with scope link and a metric, and the connected route the kernel adds
/// itself for 10.88.0.5/16 (so EEXIST of an identical route is met on the first call).
fn pod_config() -> NetworkConfig {
    let mut connected = route(Some("10.99.0.0/24"), None);
    connected.scope_link = true;
    connected.metric = Some(50);
    let mut kernel_made = route(Some("10.88.0.0/16"), None);
    kernel_made.scope_link = true;
    let mut v6_default = route(None, Some("fd00:88::1"));
    v6_default.metric = Some(200);
    let mut with_src = route(Some("10.77.0.0/16"), Some("10.88.0.1"));
    with_src.source = Some("10.88.0.5".parse().unwrap());
    with_src.metric = Some(300);
    NetworkConfig {
        interfaces: vec![eth0()],
        routes: vec![
            route(None, Some("10.88.0.1")),
            connected,
            kernel_made,
            v6_default,
            with_src,
        ],
    }
}

fn find_route<'a>(routes: &'a [Value], dst: &str) -> &'a Value {
    routes
        .iter()
        .find(|r| r["dst"] == dst)
        .unwrap_or_else(|| panic!("no route to {dst} in {routes:#?}"))
}

/// Everything [`pod_config`] asks for is there.
fn assert_pod_network() {
    let l = link("eth0");
    assert_eq!(l["address"], NIC_MAC);
    assert_eq!(l["mtu"], 1400);
    assert!(flags(&l).iter().any(|f| f == "UP"), "eth0 up: {l}");
    assert!(is_up("lo"), "lo up");

    assert!(has_addr("eth0", "inet", "10.88.0.5", 16).is_some());
    let v6 = has_addr("eth0", "inet6", "fd00:88::5", 64)
        .unwrap_or_else(|| panic!("fd00:88::5/64 on eth0: {:#?}", addresses("eth0")));
    // IFA_F_NODAD: usable at once, never tentative.
    assert_eq!(v6["nodad"], true, "{v6}");
    assert!(v6.get("tentative").is_none(), "{v6}");
    // Exactly those two, besides the link-local one the kernel makes.
    let others: Vec<Value> = addresses("eth0")
        .into_iter()
        .filter(|a| a["scope"] != "link")
        .collect();
    assert_eq!(others.len(), 2, "{others:#?}");

    let v4 = ip_json(&["-4", "route", "show"]);
    let d = find_route(&v4, "default");
    assert_eq!(d["gateway"], "10.88.0.1");
    assert_eq!(d["dev"], "eth0");
    let c = find_route(&v4, "10.99.0.0/24");
    assert_eq!(c["dev"], "eth0");
    assert_eq!(c["scope"], "link");
    assert_eq!(c["metric"], 50);
    assert!(c.get("gateway").is_none());
    let s = find_route(&v4, "10.77.0.0/16");
    assert_eq!(s["gateway"], "10.88.0.1");
    assert_eq!(s["prefsrc"], "10.88.0.5");
    assert_eq!(s["metric"], 300);
    assert_eq!(find_route(&v4, "10.88.0.0/16")["scope"], "link");
    assert_eq!(v4.len(), 4, "{v4:#?}");

    let v6 = ip_json(&["-6", "route", "show"]);
    let d6 = find_route(&v6, "default");
    assert_eq!(d6["gateway"], "fd00:88::1");
    assert_eq!(d6["dev"], "eth0");
    assert_eq!(d6["metric"], 200);
}

#[test]
fn a_pod_network_is_applied_and_applying_it_again_changes_nothing() {
    in_netns(|| {
        veth("veth-nic", "veth-peer");
        assert!(!is_up("lo"), "a new namespace has lo down");
        apply(&pod_config()).unwrap();
        assert_pod_network();
        let before = (
            ip(&["-4", "addr", "show", "dev", "eth0"]),
            ip(&["-4", "route", "show"]),
            ip(&["-6", "route", "show"]),
        );
        // Twice: same state (IPv6 link-local and timers aside, so compare what was asked for).
        apply(&pod_config()).unwrap();
        assert_pod_network();
        let after = (
            ip(&["-4", "addr", "show", "dev", "eth0"]),
            ip(&["-4", "route", "show"]),
            ip(&["-6", "route", "show"]),
        );
        // Lines, sorted: the kernel may list the link-local routes of eth0 and the peer in
        // another order once eth0 was down and up again.
        let strip = |s: &str| {
            let mut v: Vec<String> = s
                .lines()
                .filter(|l| !l.contains("valid_lft") && !l.contains("expires"))
                .map(String::from)
                .collect();
            v.sort();
            v
        };
        assert_eq!(strip(&before.0), strip(&after.0));
        assert_eq!(strip(&before.1), strip(&after.1));
        assert_eq!(strip(&before.2), strip(&after.2));
    });
}

#[test]
fn old_addresses_are_flushed() {
    in_netns(|| {
        veth("veth-nic", "veth-peer");
        ip(&["addr", "add", "192.168.5.5/24", "dev", "veth-nic"]);
        ip(&["addr", "add", "fd00:5::5/64", "dev", "veth-nic", "nodad"]);
        apply(&pod_config()).unwrap();
        assert!(has_addr("eth0", "inet", "192.168.5.5", 24).is_none());
        assert!(has_addr("eth0", "inet6", "fd00:5::5", 64).is_none());
        assert_pod_network();
    });
}

#[test]
fn an_empty_request_brings_lo_up() {
    in_netns(|| {
        assert!(!is_up("lo"));
        apply(&NetworkConfig::default()).unwrap();
        assert!(is_up("lo"));
    });
}

#[test]
fn an_unknown_mac_is_named_and_nothing_changes() {
    in_netns(|| {
        veth("veth-nic", "veth-peer");
        let mut cfg = pod_config();
        let mut eth1 = eth0();
        eth1.name = "eth1".into();
        eth1.mac = "02:00:00:00:00:99".into();
        eth1.addresses = vec![net("10.89.0.5/16")];
        cfg.interfaces.push(eth1);
        let before = ip(&["addr", "show"]);
        let e = apply(&cfg).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("eth1") && msg.contains("02:00:00:00:00:99"),
            "{msg}"
        );
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        // Not even eth0 (found) or lo were touched.
        assert_eq!(ip(&["addr", "show"]), before);
        assert!(!is_up("lo"));
        assert!(!is_up("veth-nic"));
    });
}

#[test]
fn an_invalid_request_changes_nothing() {
    in_netns(|| {
        veth("veth-nic", "veth-peer");
        let mut cfg = pod_config();
        cfg.interfaces[0].mac = "not-a-mac".into();
        let e = apply(&cfg).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("invalid MAC"), "{e}");
        // A route mixing families is refused before anything changes, too.
        let mut cfg = pod_config();
        cfg.routes
            .push(route(Some("10.1.0.0/16"), Some("fd00:88::1")));
        let e = apply(&cfg).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("10.1.0.0/16 via fd00:88::1"), "{e}");
        assert!(!is_up("lo"));
        assert!(!is_up("veth-nic"));
        assert!(addresses("veth-nic").is_empty());
    });
}

#[test]
fn an_unreachable_gateway_is_a_clear_error() {
    in_netns(|| {
        veth("veth-nic", "veth-peer");
        let mut cfg = pod_config();
        cfg.routes = vec![route(None, Some("192.168.77.1"))];
        let e = apply(&cfg).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("route default via 192.168.77.1 dev eth0")
                && msg.to_lowercase().contains("unreachable"),
            "{msg}"
        );
        assert_eq!(e.kind(), ErrorKind::Io);
    });
}

#[test]
fn a_device_holding_the_name_is_moved_out_of_the_way() {
    in_netns(|| {
        // The peer is called eth0; the NIC with the requested MAC must get that name.
        veth("veth-nic", "eth0");
        let index = link("eth0")["ifindex"].as_u64().unwrap();
        apply(&pod_config()).unwrap();
        assert_pod_network();
        let moved = link(&format!("hull{index}"));
        assert_eq!(moved["address"], PEER_MAC);
        assert_eq!(link("eth0")["address"], NIC_MAC);
    });
}

#[test]
fn two_nics_swap_names() {
    in_netns(|| {
        // The kernel named them the other way round.
        ip(&[
            "link",
            "add",
            "eth1",
            "address",
            "02:00:00:00:01:00",
            "type",
            "veth",
            "peer",
            "name",
            "p1",
        ]);
        ip(&[
            "link",
            "add",
            "eth0",
            "address",
            "02:00:00:00:01:01",
            "type",
            "veth",
            "peer",
            "name",
            "p0",
        ]);
        let nic = |name: &str, mac: &str, addr: &str| NetInterface {
            name: name.into(),
            mac: mac.into(),
            device_mac: None,
            mtu: 1500,
            addresses: vec![net(addr)],
        };
        let cfg = NetworkConfig {
            interfaces: vec![
                nic("eth0", "02:00:00:00:01:00", "10.1.0.2/24"),
                nic("eth1", "02:00:00:00:01:01", "10.2.0.2/24"),
            ],
            routes: vec![],
        };
        for _ in 0..2 {
            apply(&cfg).unwrap();
            assert_eq!(link("eth0")["address"], "02:00:00:00:01:00");
            assert_eq!(link("eth1")["address"], "02:00:00:00:01:01");
            assert!(has_addr("eth0", "inet", "10.1.0.2", 24).is_some());
            assert!(has_addr("eth1", "inet", "10.2.0.2", 24).is_some());
        }
    });
}

/// docker's bridge network: the NIC booted with a placeholder MAC (before the hook made the
/// interface) is found by it and takes the interface's MAC and name; applying again (the NIC
/// now has the interface's MAC) finds it by either.
#[test]
fn a_placeholder_nic_takes_the_interfaces_mac() {
    in_netns(|| {
        ip(&[
            "link",
            "add",
            "ens3",
            "address",
            "02:68:75:00:00:07",
            "type",
            "veth",
            "peer",
            "name",
            "p0",
        ]);
        let mut cfg = NetworkConfig {
            interfaces: vec![NetInterface {
                name: "eth0".into(),
                mac: "02:42:ac:11:00:02".into(),
                device_mac: Some("02:68:75:00:00:07".into()),
                mtu: 1500,
                addresses: vec![net("172.17.0.2/16")],
            }],
            routes: vec![],
        };
        apply(&cfg).unwrap();
        assert_eq!(link("eth0")["address"], "02:42:ac:11:00:02");
        assert!(has_addr("eth0", "inet", "172.17.0.2", 16).is_some());
        // The placeholder is gone: a second call by it fails naming it; by the MAC it works.
        let e = apply(&cfg).unwrap_err().to_string();
        assert!(e.contains("02:68:75:00:00:07"), "{e}");
        cfg.interfaces[0].device_mac = None;
        apply(&cfg).unwrap();
        assert_eq!(link("eth0")["address"], "02:42:ac:11:00:02");
    });
}
