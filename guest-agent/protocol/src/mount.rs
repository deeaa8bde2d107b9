//! The `mount` call: which file systems the runtime may mount in the guest, and how a request is
//! checked (by the agent before it touches anything, and by the host client before it sends).

use serde::{Deserialize, Serialize};

use crate::error::{AgentError, ErrorKind};

/// Longest path accepted in a mount or unmount request (Linux's `PATH_MAX`).
pub const MAX_MOUNT_PATH: usize = 4096;
/// Longest virtio-fs tag (the `tag` field of the device's config space is 36 bytes).
pub const MAX_VIRTIOFS_TAG: usize = 36;
/// Most `data` entries in a mount request.
pub const MAX_MOUNT_DATA: usize = 16;

/// The file system types the agent mounts (the `fstype` field of a [`MountRequest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FsType {
    /// A virtio-fs share; `source` is its tag (`hull-vmm --fs TAG=DIR`).
    Virtiofs,
    /// A fresh tmpfs; `source` is only a label (default `tmpfs`).
    Tmpfs,
    /// A procfs instance; `source` is only a label (default `proc`).
    Proc,
    /// A recursive bind mount of the absolute path `source` (in the agent's view).
    Bind,
}

impl FsType {
    /// Every known type, as named in requests.
    pub const NAMES: &'static [&'static str] = &["virtiofs", "tmpfs", "proc", "bind"];

    pub fn parse(name: &str) -> Option<FsType> {
        Some(match name {
            "virtiofs" => FsType::Virtiofs,
            "tmpfs" => FsType::Tmpfs,
            "proc" => FsType::Proc,
            "bind" => FsType::Bind,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            FsType::Virtiofs => "virtiofs",
            FsType::Tmpfs => "tmpfs",
            FsType::Proc => "proc",
            FsType::Bind => "bind",
        }
    }

    /// The `data` keys this type accepts (`KEY=VALUE` entries of [`MountRequest::data`]).
    pub fn data_keys(self) -> &'static [&'static str] {
        match self {
            FsType::Tmpfs => &["size", "nr_inodes", "mode", "uid", "gid"],
            FsType::Proc => &["hidepid", "subset"],
            FsType::Virtiofs | FsType::Bind => &[],
        }
    }
}

/// Generic mount flags (besides read-only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountOption {
    Nosuid,
    Nodev,
    Noexec,
    Noatime,
    /// Made a shared mount once mounted (its own peer group): binds of it in containers then
    /// take `shared`/`slave`/`private`/`unbindable` as binds of a host's shared volume do.
    Shared,
}

/// Mount a file system in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountRequest {
    /// One of [`FsType::NAMES`]; anything else is refused naming the known types.
    pub fstype: String,
    /// virtiofs: the share's tag; bind: an absolute path; tmpfs/proc: a label (may be empty).
    #[serde(default)]
    pub source: String,
    /// Absolute path, without `..` components, not `/`. Missing directories are created (and
    /// removed again if the mount fails).
    pub target: String,
    /// Mount read-only: writes fail with EROFS.
    #[serde(default)]
    pub read_only: bool,
    #[serde(default)]
    pub options: Vec<MountOption>,
    /// File-system specific `KEY=VALUE` entries, only the keys [`FsType::data_keys`] lists
    /// (e.g. tmpfs `size=64m`).
    #[serde(default)]
    pub data: Vec<String>,
}

impl MountRequest {
    fn new(fstype: FsType, source: &str, target: &str) -> MountRequest {
        MountRequest {
            fstype: fstype.name().into(),
            source: source.into(),
            target: target.into(),
            read_only: false,
            options: Vec::new(),
            data: Vec::new(),
        }
    }

    /// The virtio-fs share `tag` at `target`.
    pub fn virtiofs(tag: &str, target: &str) -> MountRequest {
        MountRequest::new(FsType::Virtiofs, tag, target)
    }

    /// A fresh tmpfs at `target`.
    pub fn tmpfs(target: &str) -> MountRequest {
        MountRequest::new(FsType::Tmpfs, "tmpfs", target)
    }

    /// procfs at `target`.
    pub fn proc(target: &str) -> MountRequest {
        MountRequest::new(FsType::Proc, "proc", target)
    }

    /// A recursive bind mount of `source` at `target`.
    pub fn bind(source: &str, target: &str) -> MountRequest {
        MountRequest::new(FsType::Bind, source, target)
    }

    /// The same request, read-only.
    pub fn read_only(mut self) -> MountRequest {
        self.read_only = true;
        self
    }

    /// Checks everything that can be checked without touching the file system; the error names
    /// the field and what is wrong with it.
    pub fn validate(&self) -> Result<FsType, AgentError> {
        let fstype = FsType::parse(&self.fstype).ok_or_else(|| {
            invalid(format!(
                "unknown file system type {:?}: the agent mounts {}",
                self.fstype,
                FsType::NAMES.join(", ")
            ))
        })?;
        check_path("mount target", &self.target)?;
        if self.target.split('/').all(|c| c.is_empty() || c == ".") {
            return Err(invalid(format!(
                "mount target {:?} is the root directory: mount on a directory below it",
                self.target
            )));
        }
        match fstype {
            FsType::Virtiofs => {
                if self.source.is_empty() {
                    return Err(invalid(
                        "virtiofs source is empty: name the share's tag (hull-vmm --fs TAG=DIR)"
                            .into(),
                    ));
                }
                if self.source.len() > MAX_VIRTIOFS_TAG {
                    return Err(invalid(format!(
                        "virtiofs tag {:?} is {} bytes long, at most {MAX_VIRTIOFS_TAG} are allowed",
                        self.source,
                        self.source.len()
                    )));
                }
                if self.source.bytes().any(|b| b == 0 || b.is_ascii_control()) {
                    return Err(invalid(format!(
                        "virtiofs tag {:?} contains a NUL or control character",
                        self.source
                    )));
                }
            }
            FsType::Bind => check_path("bind source", &self.source)?,
            FsType::Tmpfs | FsType::Proc => {
                if self.source.len() > MAX_MOUNT_PATH
                    || self.source.bytes().any(|b| b == 0 || b.is_ascii_control())
                {
                    return Err(invalid(format!(
                        "{} source label {:?} is too long or contains a NUL or control character",
                        fstype.name(),
                        self.source
                    )));
                }
            }
        }
        if self.data.len() > MAX_MOUNT_DATA {
            return Err(invalid(format!(
                "mount data has {} entries, at most {MAX_MOUNT_DATA} are allowed",
                self.data.len()
            )));
        }
        for entry in &self.data {
            let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
            if !fstype.data_keys().contains(&key) {
                return Err(invalid(format!(
                    "mount data entry {entry:?} is not accepted for {}: {}",
                    fstype.name(),
                    if fstype.data_keys().is_empty() {
                        "this type takes no data entries".to_string()
                    } else {
                        format!("known keys are {}", fstype.data_keys().join(", "))
                    }
                )));
            }
            match entry.split_once('=') {
                Some((_, v))
                    if !v.is_empty()
                        && v.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'%') => {}
                _ => {
                    return Err(invalid(format!(
                        "mount data entry {entry:?} is not KEY=VALUE with a plain \
                         (letters, digits, _ and %) value"
                    )))
                }
            }
        }
        Ok(fstype)
    }
}

fn invalid(msg: String) -> AgentError {
    AgentError::new(ErrorKind::InvalidArgument, msg)
}

/// An absolute path without NUL bytes and without `..` components, at most [`MAX_MOUNT_PATH`]
/// bytes: what mount targets, bind sources, unmount targets and spawn roots must be.
pub fn check_path(what: &str, path: &str) -> Result<(), AgentError> {
    if path.is_empty() {
        return Err(invalid(format!("{what} is empty: give an absolute path")));
    }
    if path.len() > MAX_MOUNT_PATH {
        return Err(invalid(format!(
            "{what} is {} bytes long, at most {MAX_MOUNT_PATH} are allowed",
            path.len()
        )));
    }
    if path.contains('\0') {
        return Err(invalid(format!("{what} {path:?} contains a NUL byte")));
    }
    if !path.starts_with('/') {
        return Err(invalid(format!("{what} {path:?} is not an absolute path")));
    }
    if path.split('/').any(|c| c == "..") {
        return Err(invalid(format!(
            "{what} {path:?} has a \"..\" component: give the path without it"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(r: &MountRequest) -> String {
        let e = r.validate().unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        e.message
    }

    #[test]
    fn good_requests() {
        assert_eq!(
            MountRequest::virtiofs("rootfs", "/run/rootfs")
                .read_only()
                .validate()
                .unwrap(),
            FsType::Virtiofs
        );
        let mut t = MountRequest::tmpfs("/run/x/tmp");
        t.data = vec!["size=64m".into(), "mode=1777".into()];
        t.options = vec![MountOption::Nosuid, MountOption::Nodev];
        assert_eq!(t.validate().unwrap(), FsType::Tmpfs);
        assert_eq!(
            MountRequest::bind("/run/a", "/run/b").validate().unwrap(),
            FsType::Bind
        );
        assert_eq!(
            MountRequest::proc("/run/rootfs/proc").validate().unwrap(),
            FsType::Proc
        );
    }

    #[test]
    fn bad_requests_name_the_problem() {
        let mut r = MountRequest::virtiofs("rootfs", "/run/rootfs");
        r.fstype = "ext4".into();
        let m = msg(&r);
        assert!(
            m.contains("\"ext4\"") && m.contains("virtiofs, tmpfs"),
            "{m}"
        );
        for (target, what) in [
            ("run/rootfs", "not an absolute path"),
            ("", "is empty"),
            ("/run/../etc", "\"..\" component"),
            ("/run/..", "\"..\" component"),
            ("/run/a\0b", "NUL"),
            ("/", "root directory"),
            ("//./", "root directory"),
        ] {
            let m = msg(&MountRequest::virtiofs("rootfs", target));
            assert!(
                m.contains(what) && m.contains("mount target"),
                "{target:?}: {m}"
            );
        }
        assert!(msg(&MountRequest::virtiofs("", "/x")).contains("tag"));
        assert!(msg(&MountRequest::virtiofs(&"t".repeat(37), "/x")).contains("37 bytes"));
        assert!(msg(&MountRequest::virtiofs("a\nb", "/x")).contains("control"));
        assert!(msg(&MountRequest::bind("rel", "/x")).contains("bind source"));
        let long = format!("/{}", "a".repeat(MAX_MOUNT_PATH));
        assert!(msg(&MountRequest::tmpfs(&long)).contains("bytes long"));
        let mut t = MountRequest::tmpfs("/x");
        t.data = vec!["size=1m,exec".into()];
        assert!(msg(&t).contains("plain"));
        t.data = vec!["huge=always".into()];
        assert!(msg(&t).contains("known keys are size"));
        let mut v = MountRequest::virtiofs("rootfs", "/x");
        v.data = vec!["dax=always".into()];
        assert!(msg(&v).contains("takes no data"));
    }

    #[test]
    fn json_shape() {
        let r = MountRequest::virtiofs("rootfs", "/run/rootfs").read_only();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["fstype"], "virtiofs");
        assert_eq!(v["source"], "rootfs");
        assert_eq!(v["read_only"], true);
        let back: MountRequest =
            serde_json::from_str(r#"{"fstype":"tmpfs","target":"/t","options":["noexec"]}"#)
                .unwrap();
        assert_eq!(back.options, vec![MountOption::Noexec]);
        assert!(!back.read_only && back.source.is_empty());
    }
}
