//! Which pod a container belongs to: the CRI annotations of a bundle, the shim grouping (one
//! shim and one VM per pod), and the shim's state root. (The VM's size from the pod's
//! annotations and the sandbox's name under the root are hull-runtime's:
//! `SandboxOptions::from_spec`, `sandbox_name`.)

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// CRI: `sandbox` for a pod's sandbox (pause) container, `container` for the others.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI: the pod's sandbox id, on every container of the pod.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Environment variable overriding the shim's state root (tests).
pub const ROOT_ENV: &str = "HULL_SHIM_ROOT";
/// The shim's state root: one directory per containerd namespace, one sandbox per pod below.
pub const DEFAULT_ROOT: &str = "/run/hull/shim";

/// What a container is to its pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// It owns the pod's VM: a CRI sandbox container, or a plain container (`ctr run`) that is a
    /// pod of its own.
    Sandbox,
    /// A CRI container that joins the VM of sandbox container `sandbox`.
    Container { sandbox: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PodError {
    #[error("annotation {CRI_CONTAINER_TYPE}=container needs {CRI_SANDBOX_ID}")]
    NoSandboxId,
    #[error(
        "hull cannot run a pod in the node's {namespace} namespace ({field}: true): a hull pod \
         runs in a VM of its own, whose {what} are not the node's; run this pod with runc \
         (docs/kubernetes.md)"
    )]
    HostNamespace {
        namespace: &'static str,
        field: &'static str,
        what: &'static str,
    },
}

/// A CRI pod's sandbox that asks for the node's pid or IPC namespace (containerd leaves the
/// entry out of the sandbox's spec for `hostPID`/`hostIPC`) is refused: inside a VM they
/// cannot mean the node's, and a pod that wants them (a node agent, a debugger) would see the
/// VM's instead without knowing. A pod that asks for the node's network (`hostNetwork`) runs
/// with the VM's own network stack (loopback only: containerd sets up no CNI network for it),
/// and [`host_network`] says so for the shim's log.
pub fn check_host_namespaces(
    annotations: &HashMap<String, String>,
    spec: &oci_spec::runtime::Spec,
) -> Result<(), PodError> {
    use oci_spec::runtime::LinuxNamespaceType as T;
    if annotations.get(CRI_CONTAINER_TYPE).map(String::as_str) != Some("sandbox") {
        return Ok(());
    }
    let has = |t: T| {
        spec.linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == t))
    };
    if !has(T::Pid) {
        return Err(PodError::HostNamespace {
            namespace: "pid",
            field: "hostPID",
            what: "processes",
        });
    }
    if !has(T::Ipc) {
        return Err(PodError::HostNamespace {
            namespace: "IPC",
            field: "hostIPC",
            what: "IPC objects",
        });
    }
    Ok(())
}

/// Whether a CRI pod's sandbox asks for the node's network (`hostNetwork: true`: no network
/// namespace entry, which gives the VM loopback only).
pub fn host_network(annotations: &HashMap<String, String>, spec: &oci_spec::runtime::Spec) -> bool {
    annotations.get(CRI_CONTAINER_TYPE).map(String::as_str) == Some("sandbox")
        && hull_runtime::sandbox::SandboxNetwork::from_spec(spec)
            == hull_runtime::sandbox::SandboxNetwork::Loopback
}

/// The role of a container with these spec annotations.
pub fn role(annotations: &HashMap<String, String>) -> Result<Role, PodError> {
    match annotations.get(CRI_CONTAINER_TYPE).map(String::as_str) {
        Some("container") => match annotations.get(CRI_SANDBOX_ID) {
            Some(s) if !s.is_empty() => Ok(Role::Container { sandbox: s.clone() }),
            _ => Err(PodError::NoSandboxId),
        },
        _ => Ok(Role::Sandbox),
    }
}

/// The id that names the shim serving container `id` (its socket address is computed from it,
/// as runc-v2's `--group`): the pod's sandbox id for a CRI container, else its own id.
pub fn group(id: &str, annotations: &HashMap<String, String>) -> String {
    match role(annotations) {
        Ok(Role::Container { sandbox }) => sandbox,
        _ => id.to_string(),
    }
}

/// The shim's state root for containerd namespace `namespace` (`$HULL_SHIM_ROOT` or
/// [`DEFAULT_ROOT`], then the namespace).
pub fn state_root(namespace: &str) -> PathBuf {
    let base = std::env::var_os(ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    base.join(namespace)
}

/// The annotations of the bundle's config.json (none when it has none).
pub fn bundle_annotations(bundle: &Path) -> std::io::Result<HashMap<String, String>> {
    #[derive(serde::Deserialize)]
    struct Spec {
        #[serde(default)]
        annotations: Option<HashMap<String, String>>,
    }
    let path = bundle.join("config.json");
    let text = std::fs::read(&path)?;
    let spec: Spec = serde_json::from_slice(&text).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })?;
    Ok(spec.annotations.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// hostPID and hostIPC sandboxes are refused with the reason; hostNetwork runs (noted);
    /// plain containers and a pod's other containers are not checked.
    #[test]
    fn host_namespaces_of_a_pod() {
        let spec = |ns: &[&str]| -> oci_spec::runtime::Spec {
            let ns: Vec<_> = ns.iter().map(|t| serde_json::json!({"type": t})).collect();
            serde_json::from_value(serde_json::json!({
                "ociVersion": "1.0.2", "linux": {"namespaces": ns},
            }))
            .unwrap()
        };
        let sandbox = ann(&[(CRI_CONTAINER_TYPE, "sandbox"), (CRI_SANDBOX_ID, "pod1")]);
        let all = spec(&["pid", "ipc", "uts", "mount", "network"]);
        assert_eq!(check_host_namespaces(&sandbox, &all), Ok(()));
        assert!(!host_network(&sandbox, &all));
        let e = check_host_namespaces(&sandbox, &spec(&["ipc", "uts", "mount", "network"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("node's pid namespace (hostPID: true)"), "{e}");
        let e = check_host_namespaces(&sandbox, &spec(&["pid", "uts", "mount", "network"]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("node's IPC namespace (hostIPC: true)"), "{e}");
        let host_net = spec(&["pid", "ipc", "uts", "mount"]);
        assert_eq!(check_host_namespaces(&sandbox, &host_net), Ok(()));
        assert!(host_network(&sandbox, &host_net));
        // `ctr run` (no CRI annotation) and a pod's container: the sandbox decided.
        let none = spec(&["mount"]);
        assert_eq!(check_host_namespaces(&ann(&[]), &none), Ok(()));
        let member = ann(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "pod1")]);
        assert_eq!(check_host_namespaces(&member, &none), Ok(()));
        assert!(!host_network(&member, &none));
    }

    #[test]
    fn roles_and_groups() {
        let plain = ann(&[]);
        assert_eq!(role(&plain), Ok(Role::Sandbox));
        assert_eq!(group("t1", &plain), "t1");

        let sandbox = ann(&[(CRI_CONTAINER_TYPE, "sandbox"), (CRI_SANDBOX_ID, "pod1")]);
        assert_eq!(role(&sandbox), Ok(Role::Sandbox));
        assert_eq!(group("pod1", &sandbox), "pod1");

        let member = ann(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "pod1")]);
        assert_eq!(
            role(&member),
            Ok(Role::Container {
                sandbox: "pod1".into()
            })
        );
        assert_eq!(group("c1", &member), "pod1");

        let orphan = ann(&[(CRI_CONTAINER_TYPE, "container")]);
        assert_eq!(role(&orphan), Err(PodError::NoSandboxId));
        assert_eq!(group("c1", &orphan), "c1");
    }

    #[test]
    fn grouped_containers_share_the_shim_address() {
        let sandbox = ann(&[(CRI_CONTAINER_TYPE, "sandbox"), (CRI_SANDBOX_ID, "pod1")]);
        let member = ann(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "pod1")]);
        let a = containerd_shim::socket_address("/run/c.sock", "k8s.io", &group("pod1", &sandbox));
        let b = containerd_shim::socket_address("/run/c.sock", "k8s.io", &group("c1", &member));
        let c = containerd_shim::socket_address("/run/c.sock", "k8s.io", &group("t1", &ann(&[])));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.starts_with("unix:///run/containerd/s/"), "{a}");
    }

    #[test]
    fn annotations_of_a_bundle() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","annotations":{"a":"b"}}"#,
        )
        .unwrap();
        assert_eq!(bundle_annotations(dir.path()).unwrap(), ann(&[("a", "b")]));
        std::fs::write(dir.path().join("config.json"), r#"{"ociVersion":"1"}"#).unwrap();
        assert!(bundle_annotations(dir.path()).unwrap().is_empty());
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        let e = bundle_annotations(dir.path()).unwrap_err().to_string();
        assert!(e.contains("config.json"), "{e}");
    }
}
