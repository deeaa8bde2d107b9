//! virtio-net end to end: hull-vmm boots the guest kernel with `--net tap=...` on a tap in the
//! (emulated) host, and the guest's busybox talks TCP and ICMP to the host through it.
//!
//! - The guest sees the MAC and MTU hull-vmm offers.
//! - ping both ways works (ARP, ICMP through the device).
//! - 8 MiB host to guest and ~8 MiB guest to host over HTTP (busybox wget) arrive byte-exact:
//!   both ends compute the SHA-256 independently. The bulk transfers exercise the offloads the
//!   device negotiates (checksum, TSO) and the mergeable receive buffers.
//!
//! All of it once on each backend: the host kernel's vhost-net (asked for by name, so hull-vmm
//! fails rather than falls back if the host has none) and hull-vmm's own device.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use hull_runtime::vmm::api::{NetBackend, NetConfig};
use hull_tests::net::{blob, serve, sha256_hex};
use hull_tests::vm;
use hull_tests::{Initramfs, TempDir};

const VM_LIMIT: Duration = Duration::from_secs(600);
const BLOB: usize = 8 << 20;
const HOST_IP: &str = "10.77.0.1";
const GUEST_IP: &str = "10.77.0.2";
const MAC: &str = "02:00:0a:4d:00:02";

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host tap with an address, removed on drop.
struct Tap(String);

impl Tap {
    fn new(name: &str) -> Tap {
        // A tap left by an earlier run that died.
        let _ = Command::new("ip")
            .args(["link", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["tuntap", "add", name, "mode", "tap"]);
        let t = Tap(name.to_string());
        ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", name]);
        ip(&["link", "set", name, "up"]);
        t
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[test]
fn guest_talks_tcp_and_icmp_through_a_tap_on_vhost_net() {
    assert!(
        std::path::Path::new("/dev/vhost-net").exists(),
        "this host has no /dev/vhost-net (modprobe vhost_net)"
    );
    talks_through_a_tap(NetBackend::Vhost);
}

#[test]
fn guest_talks_tcp_and_icmp_through_a_tap_on_hull_vmm_s_device() {
    talks_through_a_tap(NetBackend::Userspace);
}

fn talks_through_a_tap(backend: NetBackend) {
    let dir = TempDir::new("hull-net");
    let tap = Tap::new("hulltap0");
    let l = TcpListener::bind((HOST_IP, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let data = blob(BLOB);
    let want = sha256_hex(&data);
    let (go, wait) = std::sync::mpsc::channel();
    // `GET /blob`, `POST /up`, then `GET /done` (answered once the host has pinged the guest);
    // the first waits for the guest's boot.
    let server = serve(l, data, 3, Some(wait), VM_LIMIT);

    let script = format!(
        "cat /sys/class/net/eth0/address /sys/class/net/eth0/mtu\n\
         for d in /sys/bus/virtio/devices/*; do echo \"VIRTIO $(cat $d/device) $(cut -c30 $d/features)\"; done\n\
         ip link set lo up\n\
         ip addr add {GUEST_IP}/24 dev eth0\n\
         ip link set eth0 up\n\
         ping -c 2 -W 20 {HOST_IP} >/dev/null && echo GUEST-PING-OK\n\
         wget -q -O /tmp/blob http://{HOST_IP}:{port}/blob && echo GUEST-GOT\n\
         echo \"GUEST-SHA $(sha256sum /tmp/blob | cut -d' ' -f1)\"\n\
         seq 1 1200000 > /tmp/up\n\
         echo \"GUEST-UP-SHA $(sha256sum /tmp/up | cut -d' ' -f1)\"\n\
         wget -q -O - --post-file=/tmp/up http://{HOST_IP}:{port}/up\n\
         wget -q -O - http://{HOST_IP}:{port}/done\n"
    );
    let initrd = dir.path().join("initrd.cpio");
    Initramfs::new()
        .init_script(&format!(
            "mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t tmpfs tmp /tmp\n\
             {script}\necho GUEST-DONE\nreboot -f\n"
        ))
        .build(&initrd);
    let mut c = vm::config(&initrd);
    let mut net = NetConfig::new(tap.0.clone());
    net.mac = Some(MAC.parse().unwrap());
    net.mtu = Some(1400);
    net.backend = backend;
    c.net.push(net);
    let mut vmm = vm::launch(&c, dir.path());

    // The host pings the guest while the guest waits for `/done`.
    vm::wait_for(
        "the guest's upload",
        || vmm.console(),
        "GUEST-UP-SHA",
        VM_LIMIT,
    );
    let ping = Command::new("busybox")
        .args(["ping", "-c", "2", "-W", "20", GUEST_IP])
        .output()
        .expect("busybox (package busybox-static)");
    go.send(()).unwrap();
    let uploaded = server.join().unwrap();
    let console = vm::expect_exit(&mut vmm, VM_LIMIT, 0, "hull-vmm: ");
    let line = |prefix: &str| {
        console
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix).map(|s| s.trim().to_string()))
            .unwrap_or_else(|| panic!("no {prefix:?} line on the console:\n{console}"))
    };
    assert!(console.contains(MAC), "the guest's MAC:\n{console}");
    // The driver took VIRTIO_RING_F_EVENT_IDX (bit 29 of the features the guest shows):
    // the transfers both ways below ran with event suppression.
    assert!(
        console.lines().any(|l| l.trim() == "VIRTIO 0x0001 1"),
        "virtio-net without EVENT_IDX:\n{console}"
    );
    assert!(
        console.lines().any(|l| l.trim() == "1400"),
        "the guest's MTU:\n{console}"
    );
    assert!(
        console.contains("GUEST-PING-OK"),
        "guest pings host:\n{console}"
    );
    assert!(
        ping.status.success(),
        "host pings guest: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert!(console.contains("GUEST-GOT"), "guest downloads:\n{console}");
    assert_eq!(line("GUEST-SHA "), want, "8 MiB host to guest");
    let uploaded = uploaded.unwrap_or_else(|e| panic!("the host's server: {e}\n{console}"));
    assert_eq!(
        uploaded.upload_sha.as_deref(),
        Some(line("GUEST-UP-SHA ").as_str()),
        "8 MiB guest to host"
    );
    assert!(console.contains("GUEST-DONE"));
    drop(tap);
}
