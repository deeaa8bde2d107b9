//! What a new sandbox looks like, and the one way both front ends derive it from the OCI spec
//! of the container that creates it (the CLI's container, a pod's sandbox container).

use std::path::PathBuf;
use std::time::Duration;

use oci_spec::runtime::Spec;

use super::SandboxError;

/// Spec annotation: the VM's vCPUs (overrides the size derived from the limits).
pub const VM_VCPUS: &str = "io.hull.vm.vcpus";
/// Spec annotation: the VM's memory in MiB (overrides the size derived from the limits).
pub const VM_MEMORY_MIB: &str = "io.hull.vm.memory_mib";
/// The least memory a VM may be given.
pub const MIN_MEMORY_MIB: u64 = 64;

/// What a new sandbox looks like; unset fields come from the runtime configuration.
#[derive(Clone, Debug, Default)]
pub struct SandboxOptions {
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u64>,
    /// How long the guest may take to reach its agent (default
    /// [`super::DEFAULT_BOOT_TIMEOUT`]).
    pub boot_timeout: Option<Duration>,
    /// A cgroup v2 directory hull-vmm starts in (see [`crate::host_cgroup::prepare`]), so that
    /// the whole VM is accounted to the container or pod that asked for it. The sandbox owns
    /// it from then on: it is recorded in its state and removed by every cleanup.
    pub host_cgroup: Option<PathBuf>,
    /// Where the VM's network comes from.
    pub network: SandboxNetwork,
    /// Which calls the guest's agent serves ([`hull_agent_protocol::CallPolicy`]): what a
    /// front end needs, by default. `All` (a process outside every container, unmounts) is
    /// for tests and debugging only.
    pub agent_calls: AgentCalls,
}

/// Which calls the guest's agent serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AgentCalls {
    /// What a sandbox's front ends need (`CallPolicy::Sandbox`).
    #[default]
    FrontEnd,
    /// Every call of the protocol (`CallPolicy::All`): tests and debugging.
    All,
}

impl AgentCalls {
    /// The agent's policy.
    pub fn policy(self) -> hull_agent_protocol::CallPolicy {
        match self {
            AgentCalls::FrontEnd => hull_agent_protocol::CallPolicy::Sandbox,
            AgentCalls::All => hull_agent_protocol::CallPolicy::All,
        }
    }
}

/// Where a sandbox's VM gets its network.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SandboxNetwork {
    /// None: the guest has loopback only.
    #[default]
    Loopback,
    /// A network namespace that exists, whose interfaces the VM takes over (CRI's pod
    /// namespace, the OCI spec's network namespace path): each gets a tap mirrored to it with
    /// tc there, and a guest NIC with its MAC, MTU, addresses and routes.
    Join(PathBuf),
    /// A namespace of the sandbox's own (`<dir>/net.ns`), which hull-vmm runs in with one NIC
    /// on a placeholder tap. A prestart hook given hull-vmm's pid (docker's
    /// `libnetwork-setkey`) puts the container's interface there; the first container's create
    /// then mirrors it into that NIC ([`crate::network::attach`]). No interface: loopback only.
    Own,
}

impl SandboxNetwork {
    /// What an OCI spec asks for: a network namespace with a path is joined, one without a
    /// path (a new namespace, as docker's bridge and `none` networks and a plain `ctr run`
    /// give) is the sandbox's own, and no network namespace (the host's network) gives
    /// loopback only.
    pub fn from_spec(spec: &Spec) -> SandboxNetwork {
        if let Some(p) = crate::network::spec_netns(spec) {
            return SandboxNetwork::Join(p);
        }
        let new_netns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.typ() == oci_spec::runtime::LinuxNamespaceType::Network)
            });
        if new_netns {
            SandboxNetwork::Own
        } else {
            SandboxNetwork::Loopback
        }
    }
}

impl SandboxOptions {
    /// The sandbox for the container of `spec`: the VM sized from its limits
    /// ([`crate::host_cgroup::vm_size`]) unless the annotations [`VM_VCPUS`] and
    /// [`VM_MEMORY_MIB`] say otherwise, hull-vmm in its `cgroupsPath` (cgroup v2 hosts), and
    /// its network ([`SandboxNetwork::from_spec`]). A bad annotation is an error naming it.
    pub fn from_spec(spec: &Spec) -> Result<SandboxOptions, SandboxError> {
        let size = crate::host_cgroup::vm_size(spec);
        let annotations = spec.annotations().as_ref();
        let get = |key| annotations.and_then(|a| a.get(key)).map(String::as_str);
        let vcpus = match get(VM_VCPUS) {
            Some(v) => Some(parse(VM_VCPUS, v, 1)?),
            None => size.vcpus,
        };
        let memory_mib = match get(VM_MEMORY_MIB) {
            Some(v) => Some(parse(VM_MEMORY_MIB, v, MIN_MEMORY_MIB)?),
            None => size.memory_mib,
        };
        let host_cgroup = match spec
            .linux()
            .as_ref()
            .and_then(|l| l.cgroups_path().as_deref())
        {
            Some(p) => crate::host_cgroup::prepare(p)?,
            None => None,
        };
        Ok(SandboxOptions {
            vcpus,
            memory_mib,
            boot_timeout: None,
            host_cgroup,
            network: SandboxNetwork::from_spec(spec),
            agent_calls: AgentCalls::default(),
        })
    }
}

fn parse<T>(key: &'static str, value: &str, min: T) -> Result<T, SandboxError>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    T::Err: std::fmt::Display,
{
    let bad = |reason: String| SandboxError::BadAnnotation {
        key,
        value: value.to_string(),
        reason,
    };
    let v = value.trim().parse::<T>().map_err(|e| bad(e.to_string()))?;
    if v < min {
        return Err(bad(format!("must be at least {min}")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: serde_json::Value) -> Spec {
        let mut base = serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn size_from_limits_and_annotations() {
        let o = SandboxOptions::from_spec(&spec(serde_json::json!({}))).unwrap();
        assert_eq!((o.vcpus, o.memory_mib), (None, None));
        assert_eq!(o.network, SandboxNetwork::Loopback);
        let limits = serde_json::json!({"resources": {"memory": {"limit": 67108864}}});
        let o = SandboxOptions::from_spec(&spec(serde_json::json!({"linux": limits}))).unwrap();
        assert_eq!(
            o.memory_mib,
            Some(64 + crate::host_cgroup::VM_MEMORY_OVERHEAD_MIB)
        );
        let o = SandboxOptions::from_spec(&spec(serde_json::json!({
            "linux": limits,
            "annotations": {VM_VCPUS: "2", VM_MEMORY_MIB: " 512 "}
        })))
        .unwrap();
        assert_eq!((o.vcpus, o.memory_mib), (Some(2), Some(512)));
        for (k, v) in [
            (VM_VCPUS, "0"),
            (VM_VCPUS, "x"),
            (VM_MEMORY_MIB, "63"),
            (VM_MEMORY_MIB, "-1"),
        ] {
            let e = SandboxOptions::from_spec(&spec(serde_json::json!({"annotations": {k: v}})))
                .unwrap_err()
                .to_string();
            assert!(e.contains(k) && e.contains(v), "{e}");
        }
    }

    #[test]
    fn network_from_the_namespaces() {
        let ns = |v| spec(serde_json::json!({"linux": {"namespaces": v}}));
        assert_eq!(
            SandboxNetwork::from_spec(&ns(serde_json::json!([{"type": "network"}]))),
            SandboxNetwork::Own
        );
        assert_eq!(
            SandboxNetwork::from_spec(&ns(
                serde_json::json!([{"type": "network", "path": "/var/run/netns/p"}])
            )),
            SandboxNetwork::Join("/var/run/netns/p".into())
        );
        assert_eq!(
            SandboxNetwork::from_spec(&ns(serde_json::json!([{"type": "pid"}]))),
            SandboxNetwork::Loopback
        );
    }
}
