//! The `configure_network` call: the guest's NICs, addresses and routes, as the host read them
//! from the sandbox's network namespace (one guest NIC per interface there, found by its MAC).
//! The agent applies them over netlink before any container starts.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{AgentError, ErrorKind};

/// Most interfaces in one request.
pub const MAX_INTERFACES: usize = 16;
/// Most addresses per interface.
pub const MAX_ADDRESSES: usize = 32;
/// Most routes in one request.
pub const MAX_ROUTES: usize = 256;
/// Longest interface name (Linux's `IFNAMSIZ` - 1).
pub const MAX_IFNAME: usize = 15;

/// An address with its prefix length (`10.88.0.5/16`, `fd00::5/64`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl IpNet {
    fn check(&self) -> Result<(), String> {
        let max = if self.addr.is_ipv4() { 32 } else { 128 };
        if self.prefix_len > max {
            return Err(format!(
                "prefix length {} of {} is over {max}",
                self.prefix_len, self.addr
            ));
        }
        Ok(())
    }
}

/// One guest NIC: the virtio-net device whose MAC is `mac` (or `device_mac`, when given) gets
/// this name, MAC, MTU and addresses, and is brought up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetInterface {
    /// The name it had in the sandbox's network namespace (`eth0`), given to the guest NIC.
    pub name: String,
    /// `aa:bb:cc:dd:ee:ff`: the MAC of the interface in the namespace, which the host also gives
    /// the virtio-net device, so neighbours' ARP caches stay right.
    pub mac: String,
    /// The MAC the guest NIC has now, when it is not `mac`: the device is found by it and
    /// given `mac`. A sandbox that booted before its interface existed (docker's bridge
    /// network, which a prestart hook sets up) has a NIC with a placeholder MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_mac: Option<String>,
    pub mtu: u32,
    #[serde(default)]
    pub addresses: Vec<IpNet>,
}

impl NetInterface {
    /// The MAC the guest NIC is found by: `device_mac` if given, else `mac`.
    pub fn device_mac(&self) -> &str {
        self.device_mac.as_deref().unwrap_or(&self.mac)
    }
}

/// One route. `device` names one of the request's interfaces; no `destination` is the default
/// route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetRoute {
    #[serde(default)]
    pub destination: Option<IpNet>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    pub device: String,
    /// The preferred source address, if the route has one.
    #[serde(default)]
    pub source: Option<IpAddr>,
    #[serde(default)]
    pub metric: Option<u32>,
    /// `link` for a route to a directly connected network without a gateway, else `universe`.
    #[serde(default)]
    pub scope_link: bool,
}

/// The `configure_network` request. Loopback is always brought up, also for an empty request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    #[serde(default)]
    pub interfaces: Vec<NetInterface>,
    #[serde(default)]
    pub routes: Vec<NetRoute>,
}

/// Parses `aa:bb:cc:dd:ee:ff` (either case).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

impl NetworkConfig {
    /// Checks everything the agent relies on before it touches a NIC: the limits, names,
    /// MACs (unique), MTUs, prefix lengths, and that every route names an interface.
    pub fn check(&self) -> Result<(), AgentError> {
        let bad = |m: String| AgentError::new(ErrorKind::InvalidArgument, m);
        if self.interfaces.len() > MAX_INTERFACES {
            return Err(bad(format!("more than {MAX_INTERFACES} interfaces")));
        }
        if self.routes.len() > MAX_ROUTES {
            return Err(bad(format!("more than {MAX_ROUTES} routes")));
        }
        let mut macs = Vec::new();
        for i in &self.interfaces {
            if i.name.is_empty()
                || i.name.len() > MAX_IFNAME
                || i.name == "lo"
                || i.name.bytes().any(|b| {
                    b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control()
                })
            {
                return Err(bad(format!("invalid interface name {:?}", i.name)));
            }
            parse_mac(&i.mac)
                .ok_or_else(|| bad(format!("interface {}: invalid MAC {:?}", i.name, i.mac)))?;
            let found_by = i.device_mac();
            let mac = parse_mac(found_by).ok_or_else(|| {
                bad(format!(
                    "interface {}: invalid device MAC {found_by:?}",
                    i.name
                ))
            })?;
            if macs.contains(&mac) {
                return Err(bad(format!(
                    "interface {}: MAC {found_by} given twice",
                    i.name
                )));
            }
            macs.push(mac);
            if !(68..=65535).contains(&i.mtu) {
                return Err(bad(format!(
                    "interface {}: MTU {} out of range",
                    i.name, i.mtu
                )));
            }
            if i.addresses.len() > MAX_ADDRESSES {
                return Err(bad(format!(
                    "interface {}: more than {MAX_ADDRESSES} addresses",
                    i.name
                )));
            }
            for a in &i.addresses {
                a.check()
                    .map_err(|m| bad(format!("interface {}: {m}", i.name)))?;
            }
        }
        if self
            .interfaces
            .iter()
            .enumerate()
            .any(|(n, i)| self.interfaces[..n].iter().any(|j| j.name == i.name))
        {
            return Err(bad("an interface name given twice".into()));
        }
        for r in &self.routes {
            if !self.interfaces.iter().any(|i| i.name == r.device) {
                return Err(bad(format!(
                    "a route names an unknown interface {:?}",
                    r.device
                )));
            }
            if let Some(d) = &r.destination {
                d.check().map_err(|m| bad(format!("route: {m}")))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth0() -> NetInterface {
        NetInterface {
            name: "eth0".into(),
            mac: "02:42:ac:11:00:02".into(),
            device_mac: None,
            mtu: 1500,
            addresses: vec![IpNet {
                addr: "172.17.0.2".parse().unwrap(),
                prefix_len: 16,
            }],
        }
    }

    #[test]
    fn macs_parse_or_not() {
        assert_eq!(
            parse_mac("02:42:AC:11:00:02"),
            Some([2, 0x42, 0xac, 0x11, 0, 2])
        );
        for bad in [
            "",
            "02:42:ac:11:00",
            "02:42:ac:11:00:02:03",
            "2:42:ac:11:00:02",
            "zz:42:ac:11:00:02",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_valid_config_passes_and_bad_ones_say_why() {
        let ok = NetworkConfig {
            interfaces: vec![eth0()],
            routes: vec![NetRoute {
                destination: None,
                gateway: Some("172.17.0.1".parse().unwrap()),
                device: "eth0".into(),
                source: None,
                metric: None,
                scope_link: false,
            }],
        };
        ok.check().unwrap();
        NetworkConfig::default().check().unwrap();

        let mut c = ok.clone();
        c.routes[0].device = "eth9".into();
        assert!(c.check().unwrap_err().to_string().contains("eth9"));
        let mut c = ok.clone();
        c.interfaces[0].mac = "nope".into();
        assert!(c.check().unwrap_err().to_string().contains("invalid MAC"));
        let mut c = ok.clone();
        c.interfaces[0].device_mac = Some("02:68:75:00:00:zz".into());
        assert!(c
            .check()
            .unwrap_err()
            .to_string()
            .contains("invalid device MAC"));
        let mut c = ok.clone();
        c.interfaces[0].device_mac = Some("02:68:75:00:00:01".into());
        c.check().unwrap();
        assert_eq!(c.interfaces[0].device_mac(), "02:68:75:00:00:01");
        let mut c = ok.clone();
        c.interfaces[0].addresses[0].prefix_len = 33;
        assert!(c
            .check()
            .unwrap_err()
            .to_string()
            .contains("prefix length 33"));
        let mut c = ok.clone();
        c.interfaces[0].name = "../x".into();
        assert!(c.check().is_err());
        let mut c = ok.clone();
        c.interfaces[0].mtu = 10;
        assert!(c.check().unwrap_err().to_string().contains("MTU 10"));
        let mut c = ok.clone();
        let mut twin = eth0();
        twin.name = "eth1".into();
        c.interfaces.push(twin);
        assert!(c.check().unwrap_err().to_string().contains("given twice"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = serde_json::from_str::<NetworkConfig>(r#"{"interfaces":[],"bogus":1}"#);
        assert!(e.is_err());
    }
}
