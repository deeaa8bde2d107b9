//! The host side of a sandbox's share. A container's part of it: `<share>/containers/<id>/` holds the bundle's
//! rootfs bind-mounted at `rootfs/`, each bind mount's source at `mounts/<n>`, and the guest's
//! `config.json`. The guest sees it at `/run/hull/shared/containers/<id>/`.
//!
//! Removal never deletes recursively: it unmounts everything below the directory, then removes
//! the mount points one by one without following into them, so a mount that could not be
//! undone makes the removal fail instead of deleting the host's files through it.

use std::path::{Path, PathBuf};

use nix::mount::MsFlags;
use oci_spec::runtime::Spec;

/// What went wrong with the share.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("{what}: {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A bind mount's host source cannot be bound.
    #[error("bind mount at {}: source {}: {reason}", destination.display(), host_path.display())]
    MountSource {
        destination: PathBuf,
        host_path: PathBuf,
        reason: String,
    },
}

/// One bind mount of a spec, to be bound into the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    /// Its index in the spec's `mounts` (it is bound at `mounts/<index>` in the share).
    pub index: usize,
    pub destination: PathBuf,
    /// Absolute host source.
    pub source: PathBuf,
    pub is_dir: bool,
    /// `rbind`: submounts too.
    pub recursive: bool,
}

/// The share's directory of containers.
pub const SHARE_CONTAINERS: &str = "containers";

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ShareError + 'a {
    move |source| ShareError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The host directory of container `id` in the share `share`.
pub fn host_dir(share: &Path, id: &str) -> PathBuf {
    share.join(SHARE_CONTAINERS).join(id)
}

/// Makes container `id`'s directory in `share`: binds `rootfs` and the `binds`, writes
/// `guest_spec` as `config.json`. On failure, whatever was made is undone.
pub fn prepare(
    share: &Path,
    id: &str,
    rootfs: &Path,
    binds: &[BindMount],
    guest_spec: &Spec,
) -> Result<PathBuf, ShareError> {
    let dir = host_dir(share, id);
    if std::fs::symlink_metadata(&dir).is_ok() {
        tracing::warn!(
            "container {id}: removing a leftover share directory {}",
            dir.display()
        );
        remove(&dir)?;
    }
    let parent = share.join(SHARE_CONTAINERS);
    std::fs::create_dir_all(&parent).map_err(io(
        "cannot create the share's containers directory",
        &parent,
    ))?;
    std::fs::create_dir(&dir).map_err(io("cannot create the container's share directory", &dir))?;
    match fill(&dir, rootfs, binds, guest_spec) {
        Ok(()) => Ok(dir),
        Err(e) => {
            if let Err(c) = remove(&dir) {
                tracing::warn!("container {id}: undoing its share: {c}");
            }
            Err(e)
        }
    }
}

fn fill(
    dir: &Path,
    rootfs: &Path,
    binds: &[BindMount],
    guest_spec: &Spec,
) -> Result<(), ShareError> {
    let target = dir.join("rootfs");
    std::fs::create_dir(&target).map_err(io("cannot create the rootfs mount point", &target))?;
    bind(rootfs, &target, true)?;
    if !binds.is_empty() {
        let mounts = dir.join("mounts");
        std::fs::create_dir(&mounts).map_err(io("cannot create the mounts directory", &mounts))?;
        for b in binds {
            let target = mounts.join(b.index.to_string());
            if b.is_dir {
                std::fs::create_dir(&target)
            } else {
                std::fs::File::create(&target).map(drop)
            }
            .map_err(io("cannot create a mount point", &target))?;
            bind(&b.source, &target, b.recursive).map_err(|e| ShareError::MountSource {
                destination: b.destination.clone(),
                host_path: b.source.clone(),
                reason: e.to_string(),
            })?;
        }
    }
    let config = dir.join("config.json");
    let data = serde_json::to_vec_pretty(guest_spec).map_err(|e| {
        io("cannot encode the guest's config.json", &config)(std::io::Error::other(e))
    })?;
    std::fs::write(&config, data).map_err(io("cannot write the guest's config.json", &config))
}

fn bind(source: &Path, target: &Path, recursive: bool) -> Result<(), ShareError> {
    let mut flags = MsFlags::MS_BIND;
    if recursive {
        flags |= MsFlags::MS_REC;
    }
    nix::mount::mount(Some(source), target, None::<&str>, flags, None::<&str>).map_err(|e| {
        ShareError::Io {
            what: "cannot bind-mount",
            path: target.to_path_buf(),
            source: std::io::Error::other(format!(
                "mount --bind {} {}: {e}",
                source.display(),
                target.display()
            )),
        }
    })
}

/// Unmounts everything below container directory `dir` and removes it (see the module docs).
/// A directory that is not there is fine.
pub fn remove(dir: &Path) -> Result<(), ShareError> {
    if std::fs::symlink_metadata(dir).is_err() {
        return Ok(());
    }
    crate::mount::unmount_below(dir).map_err(io("cannot unmount the container's share", dir))?;
    let gone = |r: std::io::Result<()>| match r {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    };
    let rm = |p: &Path| -> std::io::Result<()> {
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => gone(std::fs::remove_dir(p)),
            Ok(_) => gone(std::fs::remove_file(p)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    };
    let what = "cannot remove the container's share (is something still mounted there?)";
    let mounts = dir.join("mounts");
    if let Ok(entries) = std::fs::read_dir(&mounts) {
        for e in entries.flatten() {
            rm(&e.path()).map_err(io(what, &e.path()))?;
        }
    }
    for p in [dir.join("config.json"), mounts, dir.join("rootfs")] {
        rm(&p).map_err(io(what, &p))?;
    }
    gone(std::fs::remove_dir(dir)).map_err(io(what, dir))
}

/// Removes every container's directory from `share` ([`remove`] for each), whatever state
/// they are in: what a sandbox's cleanup does before it removes its own directory.
pub fn remove_all(share: &Path) -> Result<(), ShareError> {
    if let Ok(entries) = std::fs::read_dir(share.join(SHARE_CONTAINERS)) {
        for e in entries.flatten() {
            remove(&e.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounted(p: &Path) -> bool {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let p = p.to_str().unwrap();
        info.lines().any(|l| l.split(' ').nth(4) == Some(p))
    }

    #[test]
    fn binds_a_dir_and_a_file_and_removes_them() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let rootfs = t.join("rootfs");
        std::fs::create_dir_all(rootfs.join("etc")).unwrap();
        std::fs::write(rootfs.join("etc/os-release"), b"hull").unwrap();
        let data = t.join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("f"), b"keep me").unwrap();
        let hosts = t.join("hosts");
        std::fs::write(&hosts, b"127.0.0.1 localhost\n").unwrap();
        let share = t.join("shared");
        std::fs::create_dir(&share).unwrap();
        let binds = vec![
            BindMount {
                index: 0,
                destination: "/data".into(),
                source: data.clone(),
                is_dir: true,
                recursive: true,
            },
            BindMount {
                index: 3,
                destination: "/etc/hosts".into(),
                source: hosts.clone(),
                is_dir: false,
                recursive: false,
            },
        ];
        let spec: Spec =
            serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2"})).unwrap();
        let dir = prepare(&share, "c1", &rootfs, &binds, &spec).unwrap();
        let result = std::panic::catch_unwind(|| {
            assert_eq!(dir, share.join("containers/c1"));
            assert!(mounted(&dir.join("rootfs")));
            assert_eq!(
                std::fs::read(dir.join("rootfs/etc/os-release")).unwrap(),
                b"hull"
            );
            assert_eq!(std::fs::read(dir.join("mounts/0/f")).unwrap(), b"keep me");
            assert_eq!(
                std::fs::read(dir.join("mounts/3")).unwrap(),
                b"127.0.0.1 localhost\n"
            );
            let cfg: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
            assert_eq!(cfg["ociVersion"], "1.0.2");
        });
        remove(&dir).unwrap();
        result.unwrap();
        assert!(!dir.exists());
        assert!(!mounted(&dir.join("rootfs")));
        // The sources are untouched.
        assert_eq!(std::fs::read(data.join("f")).unwrap(), b"keep me");
        assert_eq!(
            std::fs::read(rootfs.join("etc/os-release")).unwrap(),
            b"hull"
        );
        assert!(hosts.exists());
        remove(&dir).unwrap();
    }

    #[test]
    fn a_failed_bind_undoes_everything() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let rootfs = t.join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        let share = t.join("shared");
        std::fs::create_dir(&share).unwrap();
        // The source vanished between the check and the mount.
        let binds = vec![BindMount {
            index: 1,
            destination: "/data".into(),
            source: t.join("gone"),
            is_dir: true,
            recursive: false,
        }];
        let spec: Spec = serde_json::from_value(serde_json::json!({})).unwrap();
        let e = prepare(&share, "c1", &rootfs, &binds, &spec).unwrap_err();
        assert!(matches!(e, ShareError::MountSource { .. }), "{e}");
        assert!(e.to_string().contains("/data"), "{e}");
        assert!(!share.join("containers/c1").exists());
        assert!(!mounted(&share.join("containers/c1/rootfs")));
    }

    #[test]
    fn removal_refuses_to_delete_through_a_mount() {
        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let dir = t.join("c1");
        std::fs::create_dir_all(dir.join("rootfs")).unwrap();
        // Something that looks like a rootfs with content, but is not a mount: removal must
        // not delete it recursively.
        std::fs::write(dir.join("rootfs/precious"), b"x").unwrap();
        let e = remove(&dir).unwrap_err();
        assert!(e.to_string().contains("still mounted"), "{e}");
        assert!(dir.join("rootfs/precious").exists());
    }
}
