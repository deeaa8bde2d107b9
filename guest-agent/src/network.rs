//! The `configure_network` call: the guest's NICs, addresses and routes, over rtnetlink.
//!
//! [`configure`] checks the request ([`NetworkConfig::check`]), finds every requested NIC by its
//! MAC before changing anything, then brings `lo` up, and for each interface: down, renamed (a
//! different device holding the wanted name is first renamed out of the way to `hull<index>`, as
//! the guest kernel may have named the virtio NICs in another order than the namespace had),
//! MTU, its addresses flushed and the requested ones added (IPv6 with `IFA_F_NODAD`, usable at
//! once), up. Then the routes, in order; a route that exists already and is identical (same
//! destination, gateway, device and metric) is not an error. Calling it twice with the same
//! request gives the same state.
//!
//! The netlink messages are `netlink-packet-route`'s; the socket is `netlink-sys`'s, non-blocking
//! and driven by tokio (`AsyncFd`), so the call runs on the agent's runtime.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hull_agent_protocol::network::parse_mac;
use hull_agent_protocol::{AgentError, ErrorKind, IpNet, NetInterface, NetRoute, NetworkConfig};
use netlink_packet_core::{
    NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage,
};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};
use tokio::io::unix::AsyncFd;

/// Why [`configure`] failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The request failed [`NetworkConfig::check`]; nothing was changed.
    #[error("{}", .0.message)]
    Invalid(AgentError),
    /// No non-loopback device has the interface's MAC; nothing was changed.
    #[error("interface {name}: no network device has MAC {mac}")]
    NoSuchMac { name: String, mac: String },
    /// Several devices have the MAC and none already has the interface's name; nothing was
    /// changed.
    #[error("interface {name}: {count} network devices have MAC {mac}")]
    AmbiguousMac {
        name: String,
        mac: String,
        count: usize,
    },
    /// A route the agent cannot express (families that do not match); nothing was changed.
    #[error("route {route}: {reason}")]
    BadRoute { route: String, reason: String },
    #[error("no loopback device")]
    NoLoopback,
    #[error("open a netlink socket: {0}")]
    Socket(#[source] io::Error),
    /// A netlink request failed; `what` says which step on which device.
    #[error("{what}: {source}")]
    Netlink {
        what: String,
        #[source]
        source: io::Error,
    },
    /// Adding a route failed (an unreachable gateway, a conflicting route, ...).
    #[error("route {route}: {source}")]
    Route {
        route: String,
        #[source]
        source: io::Error,
    },
}

impl NetError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            NetError::Invalid(e) => e.kind,
            NetError::NoSuchMac { .. }
            | NetError::AmbiguousMac { .. }
            | NetError::BadRoute { .. } => ErrorKind::InvalidArgument,
            NetError::NoLoopback
            | NetError::Socket(_)
            | NetError::Netlink { .. }
            | NetError::Route { .. } => ErrorKind::Io,
        }
    }
}

impl From<NetError> for AgentError {
    fn from(e: NetError) -> AgentError {
        match e {
            NetError::Invalid(e) => e,
            e => AgentError::new(e.kind(), e.to_string()),
        }
    }
}

fn step(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Netlink { what, source }
}

/// Applies `cfg` to the network namespace the calling thread is in (the guest's only one).
pub async fn configure(cfg: &NetworkConfig) -> Result<(), NetError> {
    cfg.check().map_err(NetError::Invalid)?;
    for r in &cfg.routes {
        route_family(r)?;
    }
    tracing::info!(
        "configure_network: {} interfaces, {} routes",
        cfg.interfaces.len(),
        cfg.routes.len()
    );
    let mut nl = Netlink::open().map_err(NetError::Socket)?;
    let mut links = list_links(&mut nl).await?;

    // Every NIC is found before anything changes.
    let mut found = Vec::with_capacity(cfg.interfaces.len());
    for i in &cfg.interfaces {
        found.push((i, find_by_mac(&links, i)?));
    }

    let lo = links
        .iter()
        .find(|l| l.loopback)
        .map(|l| l.index)
        .ok_or(NetError::NoLoopback)?;
    set_link(&mut nl, lo, Some(true), None, None)
        .await
        .map_err(step("set lo up"))?;

    for &(i, index) in &found {
        configure_interface(&mut nl, &mut links, i, index).await?;
    }
    for r in &cfg.routes {
        let oif = found
            .iter()
            .find(|(i, _)| i.name == r.device)
            .map(|&(_, index)| index)
            .ok_or_else(|| NetError::BadRoute {
                route: describe(r),
                reason: format!("no interface {:?} in the request", r.device),
            })?;
        add_route(&mut nl, r, oif).await?;
    }
    tracing::info!("configure_network: done");
    Ok(())
}

/// A network device as the kernel lists it.
#[derive(Debug)]
struct Link {
    index: u32,
    name: String,
    mac: Option<[u8; 6]>,
    loopback: bool,
}

async fn list_links(nl: &mut Netlink) -> Result<Vec<Link>, NetError> {
    let replies = nl
        .request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )
        .await
        .map_err(step("list the network devices"))?;
    let mut links = Vec::new();
    for r in replies {
        let RouteNetlinkMessage::NewLink(m) = r else {
            continue;
        };
        let mut link = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            loopback: m.header.link_layer_type == LinkLayerType::Loopback
                || m.header.flags.contains(LinkFlags::Loopback),
        };
        for a in m.attributes {
            match a {
                LinkAttribute::IfName(n) => link.name = n,
                LinkAttribute::Address(a) => link.mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                _ => {}
            }
        }
        links.push(link);
    }
    Ok(links)
}

/// The index of the non-loopback device with the interface's MAC.
fn find_by_mac(links: &[Link], i: &NetInterface) -> Result<u32, NetError> {
    let Some(mac) = parse_mac(i.device_mac()) else {
        // check() refused it already; no panic either way.
        return Err(NetError::Invalid(AgentError::new(
            ErrorKind::InvalidArgument,
            format!("interface {}: invalid MAC {:?}", i.name, i.device_mac()),
        )));
    };
    let matching: Vec<&Link> = links
        .iter()
        .filter(|l| !l.loopback && l.mac == Some(mac))
        .collect();
    match matching.as_slice() {
        [] => Err(NetError::NoSuchMac {
            name: i.name.clone(),
            mac: i.device_mac().to_string(),
        }),
        [l] => Ok(l.index),
        more => more
            .iter()
            .find(|l| l.name == i.name)
            .map(|l| l.index)
            .ok_or(NetError::AmbiguousMac {
                name: i.name.clone(),
                mac: i.device_mac().to_string(),
                count: more.len(),
            }),
    }
}

async fn configure_interface(
    nl: &mut Netlink,
    links: &mut [Link],
    i: &NetInterface,
    index: u32,
) -> Result<(), NetError> {
    let name = &i.name;
    let old = links
        .iter()
        .find(|l| l.index == index)
        .map(|l| l.name.clone())
        .unwrap_or_default();
    tracing::info!(
        "interface {name}: MAC {} is device {index} ({old}); MAC {}, MTU {}, {} addresses",
        i.device_mac(),
        i.mac,
        i.mtu,
        i.addresses.len()
    );
    set_link(nl, index, Some(false), None, None)
        .await
        .map_err(step(format!("set {old} down")))?;
    if old != *name {
        if let Some(other) = links
            .iter_mut()
            .find(|l| l.name == *name && l.index != index)
        {
            let aside = format!("hull{}", other.index);
            tracing::warn!(
                "interface {name}: device {} already has that name; renaming it to {aside}",
                other.index
            );
            set_link(nl, other.index, Some(false), Some(&aside), None)
                .await
                .map_err(step(format!(
                    "rename {name} (device {}) to {aside}",
                    other.index
                )))?;
            other.name = aside;
        }
        set_link(nl, index, None, Some(name), None)
            .await
            .map_err(step(format!("rename {old} to {name}")))?;
        if let Some(l) = links.iter_mut().find(|l| l.index == index) {
            l.name.clone_from(name);
        }
    }
    if i.device_mac() != i.mac {
        // A NIC booted with a placeholder MAC takes the interface's (virtio-net without a
        // control queue: the guest's own address, which the device does not filter on).
        let mac = parse_mac(&i.mac).ok_or_else(|| {
            NetError::Invalid(AgentError::new(
                ErrorKind::InvalidArgument,
                format!("interface {name}: invalid MAC {:?}", i.mac),
            ))
        })?;
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
        nl.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)
            .await
            .map_err(step(format!("set the MAC of {name} to {}", i.mac)))?;
    }
    set_link(nl, index, None, None, Some(i.mtu))
        .await
        .map_err(step(format!("set the MTU of {name} to {}", i.mtu)))?;
    flush_addresses(nl, index)
        .await
        .map_err(step(format!("flush the addresses of {name}")))?;
    for a in &i.addresses {
        nl.request(
            RouteNetlinkMessage::NewAddress(address_message(index, a)),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        )
        .await
        .map_err(step(format!(
            "add address {}/{} to {name}",
            a.addr, a.prefix_len
        )))?;
    }
    set_link(nl, index, Some(true), None, None)
        .await
        .map_err(step(format!("set {name} up")))?;
    Ok(())
}

/// One RTM_SETLINK: flags (up or down), name, MTU.
async fn set_link(
    nl: &mut Netlink,
    index: u32,
    up: Option<bool>,
    name: Option<&str>,
    mtu: Option<u32>,
) -> io::Result<()> {
    let mut m = LinkMessage::default();
    m.header.index = index;
    if let Some(up) = up {
        m.header.change_mask = LinkFlags::Up;
        if up {
            m.header.flags = LinkFlags::Up;
        }
    }
    if let Some(name) = name {
        m.attributes.push(LinkAttribute::IfName(name.to_string()));
    }
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    nl.request(RouteNetlinkMessage::SetLink(m), NLM_F_ACK)
        .await
        .map(drop)
}

/// Removes every address of the device (IPv4 and IPv6, link-local too, like `ip addr flush`).
async fn flush_addresses(nl: &mut Netlink, index: u32) -> io::Result<()> {
    let replies = nl
        .request(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            NLM_F_DUMP,
        )
        .await?;
    for r in replies {
        let RouteNetlinkMessage::NewAddress(a) = r else {
            continue;
        };
        if a.header.index != index {
            continue;
        }
        let mut del = AddressMessage::default();
        del.header = a.header;
        del.attributes = a
            .attributes
            .into_iter()
            .filter(|x| matches!(x, AddressAttribute::Address(_) | AddressAttribute::Local(_)))
            .collect();
        match nl
            .request(RouteNetlinkMessage::DelAddress(del), NLM_F_ACK)
            .await
        {
            // Gone meanwhile (IPv6 addresses go with the device going down).
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            r => {
                r?;
            }
        }
    }
    Ok(())
}

fn address_message(index: u32, a: &IpNet) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.index = index;
    m.header.prefix_len = a.prefix_len;
    match a.addr {
        IpAddr::V4(v4) => {
            m.header.family = AddressFamily::Inet;
            m.attributes.push(AddressAttribute::Local(a.addr));
            m.attributes.push(AddressAttribute::Address(a.addr));
            if a.prefix_len < 31 {
                let host = u32::MAX.checked_shr(u32::from(a.prefix_len)).unwrap_or(0);
                m.attributes
                    .push(AddressAttribute::Broadcast(Ipv4Addr::from(
                        u32::from(v4) | host,
                    )));
            }
        }
        IpAddr::V6(_) => {
            m.header.family = AddressFamily::Inet6;
            m.header.flags = AddressHeaderFlags::Nodad;
            m.attributes.push(AddressAttribute::Address(a.addr));
            m.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
    }
    m
}

/// `default via 10.0.0.1 dev eth0 metric 100`, as `ip route` would show it.
fn describe(r: &NetRoute) -> String {
    let mut s = match &r.destination {
        Some(d) => format!("{}/{}", d.addr, d.prefix_len),
        None => "default".to_string(),
    };
    if let Some(g) = r.gateway {
        s += &format!(" via {g}");
    }
    s += &format!(" dev {}", r.device);
    if let Some(src) = r.source {
        s += &format!(" src {src}");
    }
    if let Some(m) = r.metric {
        s += &format!(" metric {m}");
    }
    if r.scope_link {
        s += " scope link";
    }
    s
}

/// The route's family (IPv6 if its destination, else gateway, else source is; IPv4 when it
/// names no address); every address it names must be of that family.
fn route_family(r: &NetRoute) -> Result<bool, NetError> {
    let addrs = [r.destination.as_ref().map(|d| d.addr), r.gateway, r.source];
    let v6 = addrs.iter().flatten().next().is_some_and(IpAddr::is_ipv6);
    if addrs.iter().flatten().any(|a| a.is_ipv6() != v6) {
        return Err(NetError::BadRoute {
            route: describe(r),
            reason: "mixes IPv4 and IPv6 addresses".into(),
        });
    }
    Ok(v6)
}

/// `addr` with the bits past `prefix_len` cleared.
fn masked(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(prefix_len.min(32)))
                .unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(prefix_len.min(128)))
                .unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

fn route_message(r: &NetRoute, v6: bool, oif: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header.address_family = if v6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    m.header.table = RouteHeader::RT_TABLE_MAIN;
    m.header.protocol = RouteProtocol::Static;
    m.header.scope = if r.scope_link {
        RouteScope::Link
    } else {
        RouteScope::Universe
    };
    m.header.kind = RouteType::Unicast;
    if let Some(d) = &r.destination {
        m.header.destination_prefix_length = d.prefix_len;
        if d.prefix_len > 0 {
            m.attributes.push(RouteAttribute::Destination(
                masked(d.addr, d.prefix_len).into(),
            ));
        }
    }
    if let Some(g) = r.gateway {
        m.attributes.push(RouteAttribute::Gateway(g.into()));
    }
    m.attributes.push(RouteAttribute::Oif(oif));
    if let Some(s) = r.source {
        m.attributes.push(RouteAttribute::PrefSource(s.into()));
    }
    if let Some(p) = r.metric {
        m.attributes.push(RouteAttribute::Priority(p));
    }
    m
}

/// What identifies a route for "is this the same route": destination, gateway, device, metric.
#[derive(Debug, PartialEq)]
struct RouteKey {
    dst_len: u8,
    dst: Option<IpAddr>,
    gateway: Option<IpAddr>,
    oif: Option<u32>,
    priority: Option<u32>,
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn route_key(m: &RouteMessage) -> RouteKey {
    let mut k = RouteKey {
        dst_len: m.header.destination_prefix_length,
        dst: None,
        gateway: None,
        oif: None,
        priority: None,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => k.dst = ip_of(d),
            RouteAttribute::Gateway(g) => k.gateway = ip_of(g),
            RouteAttribute::Oif(o) => k.oif = Some(*o),
            RouteAttribute::Priority(p) => k.priority = Some(*p),
            _ => {}
        }
    }
    k
}

fn in_main_table(m: &RouteMessage) -> bool {
    let attr = m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Table(t) => Some(*t),
        _ => None,
    });
    attr.unwrap_or(u32::from(m.header.table)) == u32::from(RouteHeader::RT_TABLE_MAIN)
}

async fn add_route(nl: &mut Netlink, r: &NetRoute, oif: u32) -> Result<(), NetError> {
    let v6 = route_family(r)?;
    let msg = route_message(r, v6, oif);
    let want = route_key(&msg);
    let route = describe(r);
    tracing::debug!("adding route {route}");
    match nl
        .request(
            RouteNetlinkMessage::NewRoute(msg.clone()),
            NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
            // The kernel's key is destination, TOS, table and metric; it is the same route only
            // if the gateway and device are too.
            let mut dump = RouteMessage::default();
            dump.header.address_family = msg.header.address_family;
            let existing = nl
                .request(RouteNetlinkMessage::GetRoute(dump), NLM_F_DUMP)
                .await
                .map_err(|source| NetError::Route {
                    route: route.clone(),
                    source,
                })?;
            let same = existing.iter().any(|m| match m {
                RouteNetlinkMessage::NewRoute(m) if in_main_table(m) => {
                    let k = route_key(m);
                    // No metric asked: the kernel's default (0 for IPv4, 1024 for IPv6).
                    k.dst_len == want.dst_len
                        && k.dst == want.dst
                        && k.gateway == want.gateway
                        && k.oif == want.oif
                        && (want.priority.is_none()
                            || k.priority.unwrap_or(0) == want.priority.unwrap_or(0))
                }
                _ => false,
            });
            if same {
                tracing::debug!("route {route} exists already");
                Ok(())
            } else {
                Err(NetError::Route {
                    route,
                    source: io::Error::other(
                        "a different route with the same destination and metric exists",
                    ),
                })
            }
        }
        Err(source) => Err(NetError::Route { route, source }),
    }
}

/// Largest netlink datagram read at once (the kernel's dump messages are far smaller).
const RECV_BUF: usize = 1 << 16;

/// A NETLINK_ROUTE socket, one request at a time.
struct Netlink {
    fd: AsyncFd<Socket>,
    seq: u32,
    buf: Vec<u8>,
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        let mut s = Socket::new(NETLINK_ROUTE)?;
        s.bind_auto()?;
        s.set_non_blocking(true)?;
        // SAFETY: netlink_sys::Socket owns its descriptor (opened above, closed only on drop),
        // and AsyncFd owns the socket from here on, so the descriptor stays open and the same
        // file until the AsyncFd (which deregisters first) drops it.
        let fd = unsafe { AsyncFd::register(s) }.map_err(io::Error::from)?;
        Ok(Netlink {
            fd,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Sends one request and gathers its replies until the kernel's ack, error or end of dump.
    /// `flags` are added to `NLM_F_REQUEST` (`NLM_F_DUMP`, or `NLM_F_ACK` with create flags).
    async fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.seq = self.seq.wrapping_add(1).max(1);
        let seq = self.seq;
        let mut req = NetlinkMessage::from(msg);
        req.header.flags = NLM_F_REQUEST | flags;
        req.header.sequence_number = seq;
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);

        let kernel = SocketAddr::new(0, 0);
        loop {
            let mut guard = self.fd.writable().await?;
            if let Ok(sent) = guard.try_io(|s| s.get_ref().send_to(&out, &kernel, 0)) {
                if sent? != out.len() {
                    return Err(io::Error::other("netlink request sent in part"));
                }
                break;
            }
        }

        let mut replies = Vec::new();
        loop {
            let len = loop {
                let mut guard = self.fd.readable().await?;
                let buf = &mut self.buf;
                buf.clear();
                if let Ok(n) = guard.try_io(|s| s.get_ref().recv(buf, libc::MSG_TRUNC)) {
                    break n?;
                }
            };
            if len > self.buf.len() {
                return Err(io::Error::other(format!(
                    "netlink reply of {len} bytes truncated to {}",
                    self.buf.len()
                )));
            }
            let mut off = 0;
            while off < len {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..])
                    .map_err(|e| {
                        io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("undecodable netlink reply: {e}"),
                        )
                    })?;
                let msg_len = msg.header.length as usize;
                if msg_len == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink reply of length 0",
                    ));
                }
                off = off.saturating_add(msg_len.saturating_add(3) & !3);
                if msg.header.sequence_number != seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Error(e) if e.code.is_some() => return Err(e.to_io()),
                    // The ack of a change.
                    NetlinkPayload::Error(_) => return Ok(replies),
                    NetlinkPayload::Done(d) if d.code != 0 => {
                        return Err(io::Error::from_raw_os_error(d.code.saturating_neg()))
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(dst: Option<(&str, u8)>, gw: Option<&str>, src: Option<&str>) -> NetRoute {
        NetRoute {
            destination: dst.map(|(a, p)| IpNet {
                addr: a.parse().unwrap(),
                prefix_len: p,
            }),
            gateway: gw.map(|g| g.parse().unwrap()),
            device: "eth0".into(),
            source: src.map(|s| s.parse().unwrap()),
            metric: Some(7),
            scope_link: true,
        }
    }

    #[test]
    fn masks_at_every_prefix_length() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        assert_eq!(masked(v4, 0).to_string(), "0.0.0.0");
        assert_eq!(masked(v4, 8).to_string(), "10.0.0.0");
        assert_eq!(masked(v4, 32), v4);
        assert_eq!(masked(v4, 200), v4);
        let v6: IpAddr = "fd00:1:2:3::5".parse().unwrap();
        assert_eq!(masked(v6, 0).to_string(), "::");
        assert_eq!(masked(v6, 48).to_string(), "fd00:1:2::");
        assert_eq!(masked(v6, 128), v6);
    }

    #[test]
    fn broadcast_for_every_ipv4_prefix_length() {
        for p in 0..=32 {
            let m = address_message(
                3,
                &IpNet {
                    addr: "10.1.2.3".parse().unwrap(),
                    prefix_len: p,
                },
            );
            let brd = m.attributes.iter().find_map(|a| match a {
                AddressAttribute::Broadcast(b) => Some(*b),
                _ => None,
            });
            match p {
                0 => assert_eq!(brd, Some(Ipv4Addr::BROADCAST)),
                24 => assert_eq!(brd, Some("10.1.2.255".parse().unwrap())),
                31 | 32 => assert_eq!(brd, None),
                _ => assert!(brd.is_some()),
            }
        }
        let m = address_message(
            3,
            &IpNet {
                addr: "fd00::5".parse().unwrap(),
                prefix_len: 64,
            },
        );
        assert!(m.header.flags.contains(AddressHeaderFlags::Nodad));
    }

    #[test]
    fn routes_are_described_and_families_checked() {
        let d = r(None, Some("10.0.0.1"), Some("10.0.0.5"));
        assert_eq!(
            describe(&d),
            "default via 10.0.0.1 dev eth0 src 10.0.0.5 metric 7 scope link"
        );
        assert!(!route_family(&d).unwrap());
        assert!(route_family(&r(None, Some("fd00::1"), None)).unwrap());
        assert!(!route_family(&r(None, None, None)).unwrap());
        let e = route_family(&r(Some(("10.0.0.0", 8)), Some("fd00::1"), None)).unwrap_err();
        assert!(e.to_string().contains("10.0.0.0/8 via fd00::1"), "{e}");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);

        let m = route_message(&r(Some(("10.9.9.9", 16)), None, None), false, 4);
        let k = route_key(&m);
        assert_eq!(k.dst, Some("10.9.0.0".parse().unwrap()));
        assert_eq!((k.dst_len, k.oif, k.priority), (16, Some(4), Some(7)));
        assert_eq!(m.header.scope, RouteScope::Link);
        assert!(in_main_table(&m));
    }

    #[test]
    fn errors_map_to_agent_errors() {
        let e = AgentError::from(NetError::NoSuchMac {
            name: "eth0".into(),
            mac: "02:00:00:00:00:01".into(),
        });
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert_eq!(
            e.message,
            "interface eth0: no network device has MAC 02:00:00:00:00:01"
        );
        let inner = AgentError::new(ErrorKind::InvalidArgument, "invalid MAC");
        assert_eq!(AgentError::from(NetError::Invalid(inner.clone())), inner);
    }
}
