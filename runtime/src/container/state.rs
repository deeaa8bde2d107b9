//! A container's record on disk: `<sandbox dir>/containers/<id>.json`, written whole to a
//! temporary file and renamed into place.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use hull_agent_protocol::ProcessId;
use oci_spec::runtime::Hooks;
use serde::{Deserialize, Serialize};

use super::ContainerError;

/// The directory of container records in a sandbox's directory.
pub const CONTAINERS_DIR: &str = "containers";

/// What a later process needs to drive a container again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    /// The sandbox it runs in.
    pub sandbox: String,
    /// The host bundle directory (absolute).
    pub bundle: PathBuf,
    /// The host root file system (absolute).
    pub rootfs: PathBuf,
    /// When it was created, RFC 3339 in UTC.
    pub created: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The agent's handle of the init process, and its guest pid.
    pub init_process: ProcessId,
    pub guest_pid: i32,
    /// A host process that stands for the container (the CLI's pid-file process), once set.
    #[serde(default)]
    pub host_pid: Option<u32>,
    /// The share's directory on the host (`<sandbox>/shared/containers/<id>`) and in the guest
    /// (the bundle the agent was given), and the rootfs in the guest
    /// (`/run/hull/rootfs/<id>@<nonce>`, on the root file systems' share).
    pub share: PathBuf,
    pub guest_bundle: String,
    pub guest_rootfs: String,
    /// The bundle's hooks: poststart and poststop run long after the create.
    #[serde(default)]
    pub hooks: Option<Hooks>,
}

/// The record file of container `id` in the sandbox directory `sandbox_dir`.
pub fn record_path(sandbox_dir: &Path, id: &str) -> PathBuf {
    sandbox_dir.join(CONTAINERS_DIR).join(format!("{id}.json"))
}

impl ContainerRecord {
    /// Reads the record of `id`; [`ContainerError::NotFound`] if there is none.
    pub fn read(sandbox_dir: &Path, id: &str) -> Result<ContainerRecord, ContainerError> {
        let path = record_path(sandbox_dir, id);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ContainerError::NotFound(id.to_string()))
            }
            Err(source) => {
                return Err(ContainerError::Io {
                    what: "cannot read the container state",
                    path,
                    source,
                })
            }
        };
        serde_json::from_slice(&data).map_err(|e| ContainerError::Io {
            what: "invalid container state",
            path,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Writes the record atomically (temporary file, then rename).
    pub fn write(&self, sandbox_dir: &Path) -> Result<(), ContainerError> {
        let path = record_path(sandbox_dir, &self.id);
        let dir = sandbox_dir.join(CONTAINERS_DIR);
        let tmp = dir.join(format!(".{}.json.tmp", self.id));
        let io = |source| ContainerError::Io {
            what: "cannot write the container state",
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let data = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let mut f = crate::vmm::private_file(&tmp).map_err(io)?;
        f.write_all(&data).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Removes the record of `id`; none is fine.
    pub fn remove(sandbox_dir: &Path, id: &str) -> Result<(), ContainerError> {
        let path = record_path(sandbox_dir, id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ContainerError::Io {
                what: "cannot remove the container state",
                path,
                source,
            }),
        }
    }

    /// The ids of the containers recorded in the sandbox directory, sorted.
    pub fn list(sandbox_dir: &Path) -> Result<Vec<String>, ContainerError> {
        let dir = sandbox_dir.join(CONTAINERS_DIR);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(ContainerError::Io {
                    what: "cannot list the containers",
                    path: dir,
                    source,
                })
            }
        };
        let mut ids = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ContainerError::Io {
                what: "cannot list the containers",
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Temporary files start with a dot.
            if let Some(id) = name
                .strip_suffix(".json")
                .filter(|_| !name.starts_with('.'))
            {
                ids.push(id.to_string());
            }
        }
        ids.sort();
        Ok(ids)
    }
}

/// `t` as RFC 3339 in UTC with nanoseconds, as runc prints `created`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        let at = |s: u64, n: u32| rfc3339(UNIX_EPOCH + Duration::new(s, n));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.000000005Z");
        assert_eq!(at(1_709_251_199, 0), "2024-02-29T23:59:59.000000000Z");
        assert_eq!(at(4_102_444_800, 0), "2100-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn record_round_trip_list_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let hooks: Hooks = serde_json::from_value(serde_json::json!({
            "poststop": [{"path": "/bin/true", "timeout": 3}]
        }))
        .unwrap();
        let mut rec = ContainerRecord {
            id: "c1".into(),
            sandbox: "s".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: rfc3339(SystemTime::now()),
            annotations: [("a".to_string(), "b".to_string())].into(),
            init_process: ProcessId(4),
            guest_pid: 17,
            host_pid: None,
            share: dir.path().join("shared/containers/c1"),
            guest_bundle: "/run/hull/shared/containers/c1".into(),
            guest_rootfs: "/run/hull/shared/containers/c1/rootfs".into(),
            hooks: Some(hooks),
        };
        assert_eq!(
            ContainerRecord::list(dir.path()).unwrap(),
            Vec::<String>::new()
        );
        rec.write(dir.path()).unwrap();
        assert_eq!(ContainerRecord::read(dir.path(), "c1").unwrap(), rec);
        rec.host_pid = Some(99);
        rec.write(dir.path()).unwrap();
        assert_eq!(ContainerRecord::read(dir.path(), "c1").unwrap(), rec);
        rec.id = "a0".into();
        rec.write(dir.path()).unwrap();
        // A leftover temporary file is not a container.
        std::fs::write(dir.path().join("containers/.x.json.tmp"), b"{").unwrap();
        assert_eq!(ContainerRecord::list(dir.path()).unwrap(), ["a0", "c1"]);
        ContainerRecord::remove(dir.path(), "c1").unwrap();
        ContainerRecord::remove(dir.path(), "c1").unwrap();
        let e = ContainerRecord::read(dir.path(), "c1").unwrap_err();
        assert!(
            matches!(e, ContainerError::NotFound(ref id) if id == "c1"),
            "{e}"
        );
        std::fs::write(record_path(dir.path(), "bad"), b"{not json").unwrap();
        let e = ContainerRecord::read(dir.path(), "bad")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bad.json"), "{e}");
    }
}
