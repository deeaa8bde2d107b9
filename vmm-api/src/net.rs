//! A virtio-net device as the user describes it: plain data (JSON config or the `--net` flag).
//! The device is backed by a host tap interface that someone else created and configured
//! (addresses, bridge, MTU): hull-vmm only attaches to it by name.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Most bytes of a tap interface name (IFNAMSIZ less the NUL).
pub const TAP_NAME_MAX: usize = 15;
/// Least MTU the Linux virtio-net driver accepts (IPv4's minimum, `ETH_MIN_MTU`).
pub const MIN_MTU: u16 = 68;

/// What is wrong with a network device's description (found without touching the host).
#[derive(Debug, thiserror::Error)]
pub enum NetSpecError {
    #[error("invalid --net `{spec}`: {reason}")]
    InvalidSpec { spec: String, reason: String },
    #[error("invalid tap name `{name}`: {reason}")]
    InvalidTap { name: String, reason: &'static str },
    #[error("invalid MAC address `{0}` (expected six hex bytes like aa:bb:cc:dd:ee:ff, unicast)")]
    InvalidMac(String),
    #[error("invalid MTU {0} (expected {MIN_MTU} to 65535)")]
    InvalidMtu(u16),
}

/// An Ethernet MAC address; `aa:bb:cc:dd:ee:ff` on the command line and in JSON.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = NetSpecError;
    fn from_str(s: &str) -> Result<MacAddr, NetSpecError> {
        let bad = || NetSpecError::InvalidMac(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for b in out.iter_mut() {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        // A multicast address (low bit of the first byte) cannot be a station's address.
        if out[0] & 1 != 0 {
            return Err(bad());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl TryFrom<String> for MacAddr {
    type Error = NetSpecError;
    fn try_from(s: String) -> Result<MacAddr, NetSpecError> {
        s.parse()
    }
}

impl From<MacAddr> for String {
    fn from(m: MacAddr) -> String {
        m.to_string()
    }
}

/// What moves a virtio-net device's frames between the guest's queues and the tap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetBackend {
    /// vhost-net where `/dev/vhost-net` can be opened and offers what the device needs,
    /// otherwise hull-vmm's own device (with a log line saying why).
    #[default]
    Auto,
    /// The host kernel's vhost-net (`/dev/vhost-net`): the guest's kicks reach a kernel thread
    /// through the queues' ioeventfds and its interrupts come back as the device's irqfd,
    /// without hull-vmm's event loop. Fails if the host has no vhost-net. A VM on it cannot
    /// be snapshotted.
    Vhost,
    /// hull-vmm's own device, on its event loop.
    Userspace,
}

impl NetBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            NetBackend::Auto => "auto",
            NetBackend::Vhost => "vhost",
            NetBackend::Userspace => "userspace",
        }
    }
}

impl FromStr for NetBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<NetBackend, String> {
        match s {
            "auto" => Ok(NetBackend::Auto),
            "vhost" => Ok(NetBackend::Vhost),
            "userspace" => Ok(NetBackend::Userspace),
            _ => Err(format!(
                "unknown network backend `{s}` (expected auto, vhost or userspace)"
            )),
        }
    }
}

/// One virtio-net device backed by an existing host tap interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The host tap interface (1 to 15 bytes), created beforehand (`ip tuntap add NAME mode tap`).
    pub tap: String,
    /// The guest's MAC address (offered with VIRTIO_NET_F_MAC); without it the guest driver
    /// picks a random one.
    #[serde(default)]
    pub mac: Option<MacAddr>,
    /// The MTU offered to the guest (VIRTIO_NET_F_MTU); without it the guest uses 1500.
    #[serde(default)]
    pub mtu: Option<u16>,
    /// What carries the frames (default `auto`).
    #[serde(default)]
    pub backend: NetBackend,
}

impl NetConfig {
    /// A device on `tap` with neither MAC nor MTU.
    pub fn new(tap: impl Into<String>) -> NetConfig {
        NetConfig {
            tap: tap.into(),
            mac: None,
            mtu: None,
            backend: NetBackend::Auto,
        }
    }

    /// Parses the `--net` flag: `tap=NAME[,mac=aa:bb:cc:dd:ee:ff][,mtu=N][,backend=B]`. Errors
    /// name the key or value they refuse.
    pub fn parse_cli(s: &str) -> Result<NetConfig, NetSpecError> {
        let bad = |reason: String| NetSpecError::InvalidSpec {
            spec: s.to_string(),
            reason,
        };
        let mut tap: Option<&str> = None;
        let mut mac = None;
        let mut mtu = None;
        let mut backend = NetBackend::Auto;
        let mut seen: Vec<&str> = Vec::new();
        for opt in s.split(',') {
            if opt.is_empty() {
                return Err(bad("empty option (stray comma?)".to_string()));
            }
            let Some((key, value)) = opt.split_once('=') else {
                return Err(bad(format!(
                    "`{opt}` is not KEY=VALUE (keys: tap, mac, mtu, backend)"
                )));
            };
            if seen.contains(&key) {
                return Err(bad(format!("key `{key}` given twice")));
            }
            seen.push(key);
            match key {
                "tap" => tap = Some(value),
                "mac" => {
                    mac = Some(
                        value
                            .parse::<MacAddr>()
                            .map_err(|e| bad(format!("mac: {e}")))?,
                    )
                }
                "mtu" => {
                    mtu = Some(value.parse::<u16>().map_err(|_| {
                        bad(format!(
                            "mtu: `{value}` is not a number between {MIN_MTU} and 65535"
                        ))
                    })?)
                }
                "backend" => backend = value.parse().map_err(bad)?,
                _ => {
                    return Err(bad(format!(
                        "unknown key `{key}` (expected tap, mac, mtu or backend)"
                    )))
                }
            }
        }
        let Some(tap) = tap else {
            return Err(bad("missing tap=NAME".to_string()));
        };
        let cfg = NetConfig {
            tap: tap.to_string(),
            mac,
            mtu,
            backend,
        };
        cfg.validate().map_err(|e| bad(e.to_string()))?;
        Ok(cfg)
    }

    /// Checks what can be checked without touching the host.
    pub fn validate(&self) -> Result<(), NetSpecError> {
        let reason = if self.tap.is_empty() {
            Some("the name is empty")
        } else if self.tap.len() > TAP_NAME_MAX {
            Some("the name is longer than 15 bytes")
        } else if self
            .tap
            .chars()
            .any(|c| c == '/' || c == ',' || c == ':' || c.is_whitespace() || c.is_control())
            || self.tap == "."
            || self.tap == ".."
        {
            Some("the name contains a slash, comma, colon, whitespace or control character")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(NetSpecError::InvalidTap {
                name: self.tap.clone(),
                reason,
            });
        }
        if let Some(mtu) = self.mtu {
            if mtu < MIN_MTU {
                return Err(NetSpecError::InvalidMtu(mtu));
            }
        }
        if let Some(mac) = self.mac {
            if mac.0[0] & 1 != 0 {
                return Err(NetSpecError::InvalidMac(mac.to_string()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_flag() {
        assert_eq!(
            NetConfig::parse_cli("tap=tap0").unwrap(),
            NetConfig::new("tap0")
        );
        let c = NetConfig::parse_cli("tap=hull-1,mac=aa:bb:cc:dd:ee:f0,mtu=1500").unwrap();
        assert_eq!(c.tap, "hull-1");
        assert_eq!(c.mac, Some(MacAddr([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xf0])));
        assert_eq!(c.mtu, Some(1500));
        // Any order; upper-case hex.
        let c = NetConfig::parse_cli("mtu=9000,mac=02:00:0A:0b:00:01,tap=t").unwrap();
        assert_eq!(c.mac.unwrap().to_string(), "02:00:0a:0b:00:01");
        assert_eq!(c.mtu, Some(9000));
        assert_eq!(c.backend, NetBackend::Auto);
        for b in [NetBackend::Auto, NetBackend::Vhost, NetBackend::Userspace] {
            let c = NetConfig::parse_cli(&format!("tap=t,backend={}", b.as_str())).unwrap();
            assert_eq!(c.backend, b);
        }
        assert_eq!(
            NetConfig::parse_cli("tap=x,mtu=68,mtu2=1")
                .unwrap_err()
                .to_string(),
            "invalid --net `tap=x,mtu=68,mtu2=1`: unknown key `mtu2` (expected tap, mac, mtu or backend)"
        );
        let name = "x".repeat(15);
        assert_eq!(
            NetConfig::parse_cli(&format!("tap={name}")).unwrap().tap,
            name
        );
    }

    fn err(s: &str) -> String {
        NetConfig::parse_cli(s)
            .expect_err(&format!("`{s}` must be refused"))
            .to_string()
    }

    #[test]
    fn refuses_bad_flags_naming_the_problem() {
        assert!(err("tap0").contains("`tap0` is not KEY=VALUE"));
        assert!(err("mac=02:00:00:00:00:01").contains("missing tap"));
        assert!(err("tap=").contains("name is empty"));
        assert!(err(&format!("tap={}", "x".repeat(16))).contains("15 bytes"));
        assert!(err("tap=a/b").contains("slash"));
        assert!(err("tap=..").contains("slash"));
        assert!(err("tap=t,bogus=1").contains("unknown key `bogus`"));
        assert!(err("tap=t,tap=u").contains("key `tap` given twice"));
        assert!(err("tap=t,").contains("empty option"));
        assert!(err("tap=t,backend=dpdk").contains("unknown network backend `dpdk`"));
        for mac in [
            "aa:bb:cc:dd:ee",
            "aa:bb:cc:dd:ee:ff:00",
            "aa-bb-cc-dd-ee-ff",
            "ga:bb:cc:dd:ee:ff",
            "a:bb:cc:dd:ee:ff",
            "01:00:5e:00:00:01",
        ] {
            let e = err(&format!("tap=t,mac={mac}"));
            assert!(e.contains("mac:") && e.contains(mac), "{e}");
        }
        for mtu in ["0", "67", "65536", "-1", "big", ""] {
            let e = err(&format!("tap=t,mtu={mtu}"));
            assert!(e.contains("mtu") && e.contains(mtu), "{e}");
        }
        // Every message names the spec it refuses.
        assert!(err("tap=t,bogus=1").contains("tap=t,bogus=1"));
    }

    #[test]
    fn json_round_trip_and_unknown_fields() {
        let c = NetConfig::parse_cli("tap=t,mac=02:00:00:00:00:01,mtu=1400").unwrap();
        let j = serde_json::to_string(&c).unwrap();
        assert!(j.contains("\"mac\":\"02:00:00:00:00:01\""), "{j}");
        assert_eq!(serde_json::from_str::<NetConfig>(&j).unwrap(), c);
        let min: NetConfig = serde_json::from_str(r#"{"tap":"t"}"#).unwrap();
        assert_eq!(min, NetConfig::new("t"));
        let e = serde_json::from_str::<NetConfig>(r#"{"tap":"t","ip":"10.0.0.2"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("ip"), "{e}");
        let e = serde_json::from_str::<NetConfig>(r#"{"tap":"t","mac":"zz"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("zz"), "{e}");
    }
}
