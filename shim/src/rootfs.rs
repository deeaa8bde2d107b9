//! The container's root file system from the mounts containerd passes in CreateTaskRequest
//! (an overlay snapshot, or a bind mount), mounted on `<bundle>/rootfs` before the runtime shares
//! it with the guest, and unmounted again on Delete.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("rootfs mount of type {fstype:?} is not supported (overlay and bind are)")]
    Unsupported { fstype: String },
    #[error("rootfs mount options are too long ({len} bytes, at most {max})")]
    OptionsTooLong { len: usize, max: usize },
    #[error("cannot mount {fstype} {device:?} on {}: {errno}", target.display())]
    Mount {
        fstype: String,
        device: String,
        target: PathBuf,
        errno: nix::Error,
    },
    #[error("cannot unmount {}: {errno}", target.display())]
    Unmount { target: PathBuf, errno: nix::Error },
    #[error("cannot create {}: {source}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One mount as containerd describes it (`containerd.types.Mount`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootMount {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// What the mount(2) call for a [`RootMount`] gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountCall {
    pub fstype: Option<String>,
    pub source: String,
    pub flags: MsFlags,
    /// Remount read-only after a bind mount (a bind ignores MS_RDONLY at first).
    pub remount_ro: bool,
    pub data: Option<String>,
}

/// Longest data string mount(2) takes (one page).
const MAX_DATA: usize = 4096;

/// Splits the options into mount flags and the data string, as containerd's mount package does.
pub fn mount_call(m: &RootMount) -> Result<MountCall, RootfsError> {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    let is_bind = m.fstype == "bind" || m.fstype == "rbind";
    if is_bind {
        flags |= MsFlags::MS_BIND;
        if m.fstype == "rbind" {
            flags |= MsFlags::MS_REC;
        }
    } else if m.fstype != "overlay" {
        return Err(RootfsError::Unsupported {
            fstype: m.fstype.clone(),
        });
    }
    for o in &m.options {
        let (set, clear) = match o.as_str() {
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            // Propagation is the bundle mount's own business here.
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "defaults" => {
                (MsFlags::empty(), MsFlags::empty())
            }
            _ => {
                data.push(o.as_str());
                continue;
            }
        };
        flags |= set;
        flags &= !clear;
    }
    let data = data.join(",");
    if data.len() >= MAX_DATA {
        return Err(RootfsError::OptionsTooLong {
            len: data.len(),
            max: MAX_DATA - 1,
        });
    }
    let bind = flags.contains(MsFlags::MS_BIND);
    Ok(MountCall {
        fstype: (!bind).then(|| m.fstype.clone()),
        source: m.source.clone(),
        remount_ro: bind && flags.contains(MsFlags::MS_RDONLY),
        flags,
        data: (!data.is_empty()).then_some(data),
    })
}

/// Mounts `mounts` in order on `target` (created if missing). On failure, what was mounted is
/// unmounted again.
pub fn mount_all(mounts: &[RootMount], target: &Path) -> Result<(), RootfsError> {
    if mounts.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(target).map_err(|source| RootfsError::Dir {
        path: target.to_path_buf(),
        source,
    })?;
    let calls = mounts
        .iter()
        .map(mount_call)
        .collect::<Result<Vec<_>, _>>()?;
    for (done, (c, m)) in calls.iter().zip(mounts).enumerate() {
        let err = |errno| RootfsError::Mount {
            fstype: m.fstype.clone(),
            device: m.source.clone(),
            target: target.to_path_buf(),
            errno,
        };
        let undo = |n: usize| {
            for _ in 0..n {
                let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
            }
        };
        if let Err(errno) = nix::mount::mount(
            Some(c.source.as_str()),
            target,
            c.fstype.as_deref(),
            c.flags,
            c.data.as_deref(),
        ) {
            undo(done);
            return Err(err(errno));
        }
        if c.remount_ro {
            if let Err(errno) = nix::mount::mount(
                None::<&str>,
                target,
                None::<&str>,
                c.flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            ) {
                undo(done + 1);
                return Err(err(errno));
            }
        }
    }
    Ok(())
}

/// Unmounts everything mounted on `target` (stacked mounts too). Nothing mounted is fine.
pub fn unmount_all(target: &Path) -> Result<(), RootfsError> {
    loop {
        match nix::mount::umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => return Ok(()),
            Err(errno) => {
                return Err(RootfsError::Unmount {
                    target: target.to_path_buf(),
                    errno,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(fstype: &str, source: &str, options: &[&str]) -> RootMount {
        RootMount {
            fstype: fstype.into(),
            source: source.into(),
            options: options.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn overlay_options_become_data() {
        let c = mount_call(&m(
            "overlay",
            "overlay",
            &["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"],
        ))
        .unwrap();
        assert_eq!(c.fstype.as_deref(), Some("overlay"));
        assert_eq!(c.flags, MsFlags::empty());
        assert_eq!(
            c.data.as_deref(),
            Some("index=off,workdir=/w,upperdir=/u,lowerdir=/l1:/l2")
        );
        assert!(!c.remount_ro);
        let c = mount_call(&m("overlay", "overlay", &["ro", "lowerdir=/a:/b"])).unwrap();
        assert_eq!(c.flags, MsFlags::MS_RDONLY);
        assert!(!c.remount_ro);
    }

    #[test]
    fn bind_mounts() {
        let c = mount_call(&m("bind", "/snap/1/fs", &["rbind", "ro"])).unwrap();
        assert_eq!(c.fstype, None);
        assert_eq!(
            c.flags,
            MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY
        );
        assert!(c.remount_ro);
        assert_eq!(c.data, None);
        let c = mount_call(&m("bind", "/s", &["rw", "nosuid"])).unwrap();
        assert_eq!(c.flags, MsFlags::MS_BIND | MsFlags::MS_NOSUID);
        assert!(!c.remount_ro);
        let c = mount_call(&m("ext4", "/dev/x", &[])).unwrap_err();
        assert!(c.to_string().contains("\"ext4\""), "{c}");
        let long = format!("lowerdir={}", "x".repeat(5000));
        let e = mount_call(&m("overlay", "overlay", &[&long])).unwrap_err();
        assert!(matches!(e, RootfsError::OptionsTooLong { .. }), "{e}");
    }

    fn mounted(p: &Path) -> bool {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(p.to_str().unwrap()))
    }

    /// A real bind mount (as root): mounted, read through, unmounted; unmounting twice is fine.
    #[test]
    fn bind_mount_and_unmount() {
        if !nix::unistd::Uid::effective().is_root() {
            panic!("this test mounts: run it as root");
        }
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), "x").unwrap();
        let target = dir.path().join("bundle/rootfs");
        mount_all(
            &[m("bind", src.to_str().unwrap(), &["rbind", "ro"])],
            &target,
        )
        .unwrap();
        assert!(mounted(&target));
        assert_eq!(std::fs::read_to_string(target.join("f")).unwrap(), "x");
        let e = std::fs::write(target.join("g"), "y").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EROFS));
        unmount_all(&target).unwrap();
        assert!(!mounted(&target));
        assert!(!target.join("f").exists());
        unmount_all(&target).unwrap();
        // A failed mount leaves nothing mounted.
        let e = mount_all(&[m("bind", "/no/such/dir", &["rbind"])], &target).unwrap_err();
        assert!(e.to_string().contains("/no/such/dir"), "{e}");
        assert!(!mounted(&target));
    }
}
