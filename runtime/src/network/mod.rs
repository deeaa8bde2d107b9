//! The host side of pod networking, as Kata's "tcfilter" mode does it.
//!
//! A pod (CRI) or docker container gets its network as interfaces (a veth from the CNI bridge
//! plugin or docker) in a network namespace. hull mirrors each of them into the VM:
//!
//! 1. [`inspect`] reads the namespace (links, addresses, main-table routes) into the
//!    [`NetworkConfig`] the guest agent applies (`configure_network`).
//! 2. [`plumb`] creates, in that namespace, one persistent tap per interface (`tap0_hull`,
//!    `tap1_hull`, ...) with the interface's MTU, and joins the two with tc: an ingress qdisc on
//!    each and a u32 match-all filter with `mirred egress redirect` to the other device (as
//!    `tc filter add dev eth0 parent ffff: protocol all u32 match u8 0 0 action mirred egress
//!    redirect dev tap0_hull`). hull-vmm then opens the taps by name in the same namespace and
//!    gives the guest NIC the interface's MAC ([`TapDevice`]).
//! 3. [`teardown`] removes the taps (and with them their qdiscs and filters) and the ingress
//!    qdisc on the original interfaces. It needs only the namespace path (it finds `*_hull` taps
//!    and the qdiscs redirecting to them), so it also cleans up after a crash.
//!
//! A failed [`plumb`] undoes everything it did before returning the error.
//!
//! docker's bridge network is made the other way round: the namespace is given to docker by a
//! prestart hook (`libnetwork-setkey`, with hull-vmm's pid), so the VM boots before the
//! interface exists. [`create_own`] makes the sandbox's namespace with a placeholder tap the
//! VM boots with; after the hook, [`attach`] mirrors the interface docker put there to that tap
//! and returns the config, in which the guest NIC is found by its placeholder MAC and takes
//! the interface's.
//!
//! Every netlink conversation runs on a dedicated thread that `setns(CLONE_NEWNET)`s into the
//! namespace, runs a current-thread tokio runtime with the `rtnetlink` connection, and exits:
//! the thread is never reused, so no other work ever runs in the pod's namespace.

mod inspect;
mod netns;
mod plumb;
mod tap;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;

pub use hull_agent_protocol::network::{IpNet, NetInterface, NetRoute, NetworkConfig};

/// The MAC of the guest NIC a sandbox of its own namespace boots with ([`create_own`]),
/// until [`attach`] gives it the interface's (locally administered: `02:68:75:6c:6c:00`).
pub const PLACEHOLDER_MAC: &str = "02:68:75:6c:6c:00";

/// Suffix of the taps hull creates; [`teardown`] removes every tun/tap link named so.
pub const TAP_SUFFIX: &str = "_hull";

/// One tap made by [`plumb`], for the VMM's `--net tap=NAME,mac=MAC,mtu=MTU`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapDevice {
    /// The tap's name in the namespace (`tap0_hull`); hull-vmm opens it there with
    /// `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`.
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`: the MAC of the mirrored interface, for the guest NIC.
    pub mac: String,
    /// The MTU of the mirrored interface (also the tap's).
    pub mtu: u32,
}

/// What went wrong reading or changing a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The namespace could not be opened or entered, or the path is not a network namespace.
    #[error("network namespace {path}: {source}")]
    Namespace { path: PathBuf, source: io::Error },
    /// An interface hull cannot mirror into the VM.
    #[error("interface {name}: {reason}")]
    Unsupported { name: String, reason: String },
    /// A route hull cannot give the guest (multipath).
    #[error("route {destination}: {reason}")]
    UnsupportedRoute { destination: String, reason: String },
    /// An interface named in the config is not in the namespace.
    #[error("interface {0}: not found in the network namespace")]
    NotFound(String),
    /// A link with the name of the tap hull wanted to create is already there.
    #[error("tap {0}: a link with that name already exists in the network namespace")]
    TapExists(String),
    /// Creating or configuring a tap failed.
    #[error("tap {name}: {source}")]
    Tap { name: String, source: io::Error },
    /// A netlink request failed.
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        source: rtnetlink::Error,
    },
    /// The config has more interfaces than hull mirrors.
    #[error("{0} interfaces: at most {max} can be mirrored", max = hull_agent_protocol::network::MAX_INTERFACES)]
    TooMany(usize),
    /// A setup failed and undoing it failed too: `undo` says what may be left behind.
    #[error("{error} (and undoing the setup failed: {undo})")]
    UndoFailed {
        error: Box<NetworkError>,
        undo: Box<NetworkError>,
    },
    /// The thread working in the namespace could not start, or panicked.
    #[error("network namespace thread: {0}")]
    Thread(String),
}

impl NetworkError {
    fn netlink(what: impl Into<String>, source: rtnetlink::Error) -> Self {
        NetworkError::Netlink {
            what: what.into(),
            source,
        }
    }
}

/// The network namespace an OCI spec joins (its `network` namespace entry with a path: CRI's
/// pod namespace, `ip netns`), which the sandbox's VM takes over. A new namespace (no path) or
/// none gives None: the VM has loopback only.
pub fn spec_netns(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)?
        .path()
        .clone()
        .filter(|p| !p.as_os_str().is_empty())
}

/// Reads the network namespace at `netns` (`/var/run/netns/X`, `/proc/PID/ns/net`) into the
/// config the guest agent applies: every non-loopback link with its MAC, MTU and addresses
/// (IPv6 link-local ones left out), and the main table's unicast routes through them (IPv6
/// link-local and multicast ones left out).
///
/// `None`, or a namespace with only `lo`, gives an empty config (the guest has loopback only).
/// A link hull cannot mirror (macvtap, ipvlan/ipvtap, tun/tap other than hull's own
/// `*_hull` taps, a non-Ethernet link with addresses) or an Ethernet link without any address
/// is an error naming it. The kernel's per-namespace fallback tunnel devices (`tunl0`, `sit0`,
/// `gretap0`, ...) without addresses are left out.
pub fn inspect(netns: Option<&Path>) -> Result<NetworkConfig, NetworkError> {
    let Some(netns) = netns else {
        return Ok(NetworkConfig::default());
    };
    let ns = netns::open(netns)?;
    netns::run_in(ns, netns, |h| async move { inspect::read(&h).await })
}

/// Plumbs every interface of `cfg` (as [`inspect`] gave it) in the namespace at `netns`: a
/// persistent tap `tap<N>_hull` per interface (N its position in `cfg.interfaces`) with the
/// interface's MTU, up, and the two tc redirects between them. Returns the taps in the order of
/// `cfg.interfaces`, for the VMM config.
///
/// On any error, everything done so far (for all interfaces) is undone before the error is
/// returned.
pub fn plumb(netns: &Path, cfg: &NetworkConfig) -> Result<Vec<TapDevice>, NetworkError> {
    if cfg.interfaces.is_empty() {
        return Ok(Vec::new());
    }
    if cfg.interfaces.len() > hull_agent_protocol::network::MAX_INTERFACES {
        return Err(NetworkError::TooMany(cfg.interfaces.len()));
    }
    let ns = netns::open(netns)?;
    let interfaces = cfg.interfaces.clone();
    netns::run_in(
        ns,
        netns,
        |h| async move { plumb::plumb(&h, &interfaces).await },
    )
}

/// Removes what [`plumb`] made in the namespace at `netns`: every tun/tap link named
/// `*_hull`, and the ingress qdisc of every link whose ingress filters redirect to one of them
/// (or that has an ingress qdisc without any filter, as a crash between adding the qdisc and
/// its filter leaves). Idempotent; a namespace that is gone (no such path, or no longer a
/// namespace) is not an error.
pub fn teardown(netns: &Path) -> Result<(), NetworkError> {
    let ns = match netns::open(netns) {
        Ok(ns) => ns,
        Err(NetworkError::Namespace { source, .. }) if netns::is_gone(&source) => {
            tracing::debug!(netns = %netns.display(), error = %source, "network namespace gone, nothing to tear down");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    netns::run_in(ns, netns, |h| async move { plumb::teardown(&h).await })
}

/// Makes a network namespace of the sandbox's own, bind-mounted at `netns` (a new file), with
/// `lo` up and the persistent tap `tap0_hull` (down) the VM boots with: its NIC gets
/// [`PLACEHOLDER_MAC`]. On error nothing is left (no mount, no file).
pub fn create_own(netns: &Path) -> Result<TapDevice, NetworkError> {
    let mut taps = create_taps(netns, 1)?;
    taps.pop()
        .ok_or_else(|| NetworkError::NotFound(plumb::tap_name(0)))
}

/// The MAC the `i`-th NIC of a VM with placeholder NICs gets (a sandbox's own network, a
/// template): [`PLACEHOLDER_MAC`] with `i` added to its last byte.
pub fn placeholder_mac(i: usize) -> String {
    format!("02:68:75:6c:6c:{:02x}", i % 256)
}

/// [`create_own`] with `n` taps (`tap<i>_hull`, each given [`placeholder_mac`]`(i)` in the
/// returned devices): what a template's VM boots with. On error nothing is left.
pub fn create_taps(netns: &Path, n: usize) -> Result<Vec<TapDevice>, NetworkError> {
    if n > hull_agent_protocol::network::MAX_INTERFACES {
        return Err(NetworkError::TooMany(n));
    }
    netns::create(netns)?;
    let made = netns::open(netns).and_then(|ns| {
        netns::run_in(ns, netns, move |h| async move {
            let lo = h
                .link()
                .get()
                .match_name("lo")
                .execute()
                .try_next()
                .await
                .map_err(|e| NetworkError::netlink("looking up lo", e))?
                .ok_or_else(|| NetworkError::NotFound("lo".into()))?;
            h.link()
                .set(
                    rtnetlink::LinkUnspec::new_with_index(lo.header.index)
                        .up()
                        .build(),
                )
                .execute()
                .await
                .map_err(|e| NetworkError::netlink("bringing lo up", e))?;
            for i in 0..n {
                plumb::create_tap(&h, &plumb::tap_name(i)).await?;
            }
            Ok(())
        })
    });
    if let Err(e) = made {
        if let Err(r) = netns::remove(netns) {
            tracing::warn!(netns = %netns.display(), error = %r, "removing a half-made network namespace");
        }
        return Err(e);
    }
    Ok((0..n)
        .map(|i| TapDevice {
            name: plumb::tap_name(i),
            mac: placeholder_mac(i),
            mtu: 1500,
        })
        .collect())
}

/// After the prestart hooks of a sandbox made by [`create_own`]: reads the namespace as
/// [`inspect`] does and mirrors its interface (at most one: the VM has one NIC) to the tap
/// `tap`. Returns the config for the agent, in which the interface is found in the guest by
/// [`PLACEHOLDER_MAC`] (`device_mac`). No interface (docker's `--network none`): an empty
/// config, the guest has loopback only. On error, the filters made so far are removed.
pub fn attach(netns: &Path, tap: &str) -> Result<NetworkConfig, NetworkError> {
    let ns = netns::open(netns)?;
    let tap = tap.to_string();
    netns::run_in(ns, netns, |h| async move {
        let mut cfg = inspect::read(&h).await?;
        plumb::attach(&h, &cfg, &tap).await?;
        for i in &mut cfg.interfaces {
            i.device_mac = Some(PLACEHOLDER_MAC.to_string());
        }
        Ok(cfg)
    })
}

/// Removes the namespace [`create_own`] made (unmounts it and deletes the file); the taps in
/// it go with it once hull-vmm has gone. Nothing there is not an error.
pub fn remove_own(netns: &Path) -> Result<(), NetworkError> {
    netns::remove(netns)
}
