//! Reading a namespace's links, addresses and routes into a [`NetworkConfig`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkLayerType, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};

use super::{IpNet, NetInterface, NetRoute, NetworkConfig, NetworkError, TAP_SUFFIX};

/// Ethernet fallback tunnel devices the kernel puts in every namespace once their module is
/// loaded (the non-Ethernet ones, `tunl0`, `sit0`, `ip6tnl0`, `gre0`, ... are left out by their
/// link type).
const FALLBACK_ETHER: &[&str] = &["gretap0", "erspan0", "ip6gretap0", "ip6erspan0"];

/// Dumps links, addresses and routes through `h` and builds the config.
pub(super) async fn read(h: &Handle) -> Result<NetworkConfig, NetworkError> {
    let links: Vec<LinkMessage> = super::plumb::dump_links(h).await?;
    let addresses: Vec<AddressMessage> = h
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetworkError::netlink("listing addresses", e))?;
    let mut routes: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetworkError::netlink("listing IPv4 routes", e))?;
    let routes6: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| NetworkError::netlink("listing IPv6 routes", e))?;
    routes.extend(routes6);
    build(&links, &addresses, &routes)
}

/// A link as far as mirroring goes.
#[derive(Debug)]
pub(super) struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Vec<u8>,
    pub mtu: u32,
    pub kind: Option<InfoKind>,
    pub link_type: LinkLayerType,
    pub loopback: bool,
}

impl Link {
    pub(super) fn from_message(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: Vec::new(),
            mtu: 0,
            kind: None,
            link_type: m.header.link_layer_type,
            loopback: m.header.flags.contains(LinkFlags::Loopback),
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(mac) => l.mac = mac.clone(),
                LinkAttribute::Mtu(mtu) => l.mtu = *mtu,
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.clone());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }

    /// One of hull's own taps.
    pub(super) fn is_hull_tap(&self) -> bool {
        self.kind == Some(InfoKind::Tun) && self.name.ends_with(TAP_SUFFIX)
    }
}

fn format_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn is_ipv6_link_local(a: &Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

/// Builds the config from the dumps (no I/O, so the rules are plain to read).
pub(super) fn build(
    links: &[LinkMessage],
    addresses: &[AddressMessage],
    routes: &[RouteMessage],
) -> Result<NetworkConfig, NetworkError> {
    let mut cfg = NetworkConfig::default();
    // (index, name) of the mirrored interfaces, for the routes.
    let mut mirrored: Vec<(u32, String)> = Vec::new();
    for link in links.iter().map(Link::from_message) {
        if link.loopback || link.link_type == LinkLayerType::Loopback {
            continue;
        }
        if link.is_hull_tap() {
            tracing::debug!(name = %link.name, "skipping hull's own tap");
            continue;
        }
        let unsupported = |reason: String| NetworkError::Unsupported {
            name: link.name.clone(),
            reason,
        };
        if let Some(k @ (InfoKind::Tun | InfoKind::MacVtap | InfoKind::IpVlan | InfoKind::IpVtap)) =
            &link.kind
        {
            return Err(unsupported(format!(
                "a {k} link cannot be mirrored into the VM"
            )));
        }
        let mut addrs = Vec::new();
        for a in addresses.iter().filter(|a| a.header.index == link.index) {
            let (mut address, mut local) = (None, None);
            for attr in &a.attributes {
                match attr {
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    _ => {}
                }
            }
            // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on a
            // point-to-point link); IPv6 has IFA_ADDRESS only.
            let Some(ip) = local.or(address) else {
                continue;
            };
            if let IpAddr::V6(v6) = ip {
                if is_ipv6_link_local(&v6) {
                    continue;
                }
            }
            addrs.push(IpNet {
                addr: ip,
                prefix_len: a.header.prefix_len,
            });
        }
        if link.link_type != LinkLayerType::Ether {
            if addrs.is_empty() {
                tracing::debug!(name = %link.name, link_type = ?link.link_type, "skipping a non-Ethernet link without addresses");
                continue;
            }
            return Err(unsupported(format!(
                "a non-Ethernet link (type {:?}) cannot be mirrored into the VM",
                link.link_type
            )));
        }
        if addrs.is_empty() {
            if FALLBACK_ETHER.contains(&link.name.as_str()) {
                tracing::debug!(name = %link.name, "skipping the kernel's fallback tunnel device");
                continue;
            }
            return Err(unsupported(
                "it has no IP address (hull mirrors configured interfaces only)".into(),
            ));
        }
        if link.mac.len() != 6 {
            return Err(unsupported(format!(
                "no Ethernet MAC address (got {} bytes)",
                link.mac.len()
            )));
        }
        mirrored.push((link.index, link.name.clone()));
        cfg.interfaces.push(NetInterface {
            name: link.name,
            mac: format_mac(&link.mac),
            device_mac: None,
            mtu: link.mtu,
            addresses: addrs,
        });
    }

    for r in routes {
        if let Some(route) = route(r, &mirrored)? {
            cfg.routes.push(route);
        }
    }
    Ok(cfg)
}

/// One route, if it is a main-table unicast route through a mirrored interface and not an
/// IPv6 link-local or multicast one.
fn route(r: &RouteMessage, mirrored: &[(u32, String)]) -> Result<Option<NetRoute>, NetworkError> {
    let mut table = u32::from(r.header.table);
    let (mut dst, mut gateway, mut source, mut metric, mut oif, mut multipath) =
        (None, None, None, None, None, false);
    for a in &r.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(d) => dst = route_addr(d),
            RouteAttribute::Gateway(g) => gateway = route_addr(g),
            RouteAttribute::PrefSource(s) => source = route_addr(s),
            RouteAttribute::Priority(p) => metric = Some(*p),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::MultiPath(_) => multipath = true,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) || r.header.kind != RouteType::Unicast {
        return Ok(None);
    }
    if let Some(IpAddr::V6(d)) = dst {
        if is_ipv6_link_local(&d) || d.is_multicast() {
            return Ok(None);
        }
    }
    let destination = match dst {
        Some(addr) => Some(IpNet {
            addr,
            prefix_len: r.header.destination_prefix_length,
        }),
        None if r.header.destination_prefix_length == 0 => None,
        None => return Ok(None),
    };
    if multipath {
        let what = destination.as_ref().map_or("default".to_string(), |d| {
            format!("{}/{}", d.addr, d.prefix_len)
        });
        return Err(NetworkError::UnsupportedRoute {
            destination: what,
            reason: "multipath routes cannot be mirrored into the VM".into(),
        });
    }
    let Some(device) = oif.and_then(|i| mirrored.iter().find(|(idx, _)| *idx == i)) else {
        return Ok(None);
    };
    Ok(Some(NetRoute {
        destination,
        gateway,
        device: device.1.clone(),
        source,
        metric,
        scope_link: r.header.scope == RouteScope::Link,
    }))
}
