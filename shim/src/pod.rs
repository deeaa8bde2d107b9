//! Which pod a container belongs to, and where its sandbox lives: the CRI annotations of a
//! bundle, the shim grouping (one shim and one VM per pod), the VM's size from the pod's
//! annotations, and the sandbox's directory under the shim's state root.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hull_runtime::sandbox::SandboxOptions;

/// CRI: `sandbox` for a pod's sandbox (pause) container, `container` for the others.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI: the pod's sandbox id, on every container of the pod.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Pod annotation: the VM's vCPUs.
pub const VM_VCPUS: &str = "io.hull.vm.vcpus";
/// Pod annotation: the VM's memory in MiB.
pub const VM_MEMORY_MIB: &str = "io.hull.vm.memory_mib";
/// Environment variable overriding the shim's state root (tests).
pub const ROOT_ENV: &str = "HULL_SHIM_ROOT";
/// The shim's state root: one directory per containerd namespace, one sandbox per pod below.
pub const DEFAULT_ROOT: &str = "/run/hull/shim";
/// Most bytes of a Unix socket path (the runtime's sockets live in the sandbox directory).
const MAX_SOCKET_PATH: usize = 107;
/// The longest socket name the runtime puts in a sandbox directory.
const LONGEST_SOCKET: &str = "vsock.sock_4294967295";

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
    #[error("annotation {key}={value:?}: {reason}")]
    BadAnnotation {
        key: &'static str,
        value: String,
        reason: String,
    },
    #[error("annotation {CRI_CONTAINER_TYPE}=container needs {CRI_SANDBOX_ID}")]
    NoSandboxId,
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

fn parse_annotation<T: std::str::FromStr>(
    annotations: &HashMap<String, String>,
    key: &'static str,
) -> Result<Option<T>, PodError>
where
    T::Err: std::fmt::Display,
{
    let Some(value) = annotations.get(key) else {
        return Ok(None);
    };
    let bad = |reason: String| PodError::BadAnnotation {
        key,
        value: value.clone(),
        reason,
    };
    let v = value.trim().parse::<T>().map_err(|e| bad(e.to_string()))?;
    Ok(Some(v))
}

/// The VM's size from the pod's annotations (unset: the runtime configuration's defaults).
pub fn vm_options(annotations: &HashMap<String, String>) -> Result<SandboxOptions, PodError> {
    let vcpus: Option<u32> = parse_annotation(annotations, VM_VCPUS)?;
    let memory_mib: Option<u64> = parse_annotation(annotations, VM_MEMORY_MIB)?;
    if vcpus == Some(0) {
        return Err(PodError::BadAnnotation {
            key: VM_VCPUS,
            value: "0".into(),
            reason: "must be at least 1".into(),
        });
    }
    if memory_mib.is_some_and(|m| m < 64) {
        return Err(PodError::BadAnnotation {
            key: VM_MEMORY_MIB,
            value: memory_mib.unwrap_or_default().to_string(),
            reason: "must be at least 64".into(),
        });
    }
    Ok(SandboxOptions {
        vcpus,
        memory_mib,
        ..SandboxOptions::default()
    })
}

/// The shim's state root for containerd namespace `namespace` (`$HULL_SHIM_ROOT` or
/// [`DEFAULT_ROOT`], then the namespace).
pub fn state_root(namespace: &str) -> PathBuf {
    let base = std::env::var_os(ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
    base.join(namespace)
}

/// FNV-1a, 64 bits: a stable short name for ids too long for a socket path.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The sandbox name (its directory under `root`) for the pod `group`: the group id itself when
/// it is a valid sandbox id and its sockets fit in a Unix socket path, else `h` and a hash of it
/// (CRI's 64-character ids under a deep root do not fit).
pub fn sandbox_name(root: &Path, group: &str) -> String {
    let fits = |name: &str| {
        root.join(name).join(LONGEST_SOCKET).as_os_str().len() <= MAX_SOCKET_PATH
            && hull_runtime::sandbox::validate_id(name).is_ok()
    };
    if fits(group) {
        group.to_string()
    } else {
        format!("h{:016x}", fnv1a(group))
    }
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
    fn vm_size_from_annotations() {
        let o = vm_options(&ann(&[])).unwrap();
        assert_eq!((o.vcpus, o.memory_mib), (None, None));
        let o = vm_options(&ann(&[(VM_VCPUS, "2"), (VM_MEMORY_MIB, " 512 ")])).unwrap();
        assert_eq!((o.vcpus, o.memory_mib), (Some(2), Some(512)));
        for (k, v, why) in [
            (VM_VCPUS, "two", "invalid digit"),
            (VM_VCPUS, "0", "at least 1"),
            (VM_MEMORY_MIB, "-5", "invalid digit"),
            (VM_MEMORY_MIB, "16", "at least 64"),
        ] {
            let e = vm_options(&ann(&[(k, v)])).unwrap_err().to_string();
            assert!(e.contains(k) && e.contains(why), "{k}={v}: {e}");
        }
    }

    #[test]
    fn sandbox_names_fit_socket_paths() {
        let root = Path::new("/run/hull/shim/k8s.io");
        assert_eq!(sandbox_name(root, "t1"), "t1");
        let cri = "f".repeat(64);
        let name = sandbox_name(root, &cri);
        assert_ne!(name, cri);
        assert_eq!(name, sandbox_name(root, &cri), "stable");
        assert_ne!(name, sandbox_name(root, &"e".repeat(64)));
        assert!(root.join(&name).join(LONGEST_SOCKET).as_os_str().len() <= MAX_SOCKET_PATH);
        // Not a valid sandbox id: hashed too.
        assert!(sandbox_name(root, "a/b").starts_with('h'));
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
