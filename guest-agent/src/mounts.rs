//! The `mount` and `unmount` calls.
//!
//! Requests are checked first ([`MountRequest::validate`]: type, absolute target without `..`,
//! no NUL, source and data per type); then missing target directories are created one by one
//! and, if the mount fails, removed again so a failed call leaves nothing behind.

use std::path::{Path, PathBuf};

use hull_agent_protocol::{check_path, AgentError, ErrorKind, FsType, MountOption, MountRequest};
use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

fn io(msg: String) -> AgentError {
    AgentError::new(ErrorKind::Io, msg)
}

fn invalid(msg: String) -> AgentError {
    AgentError::new(ErrorKind::InvalidArgument, msg)
}

/// Creates `target` and its missing parents; returns the directories it created, outermost first.
fn create_dirs(target: &Path) -> Result<Vec<PathBuf>, AgentError> {
    let mut created = Vec::new();
    let mut cur = PathBuf::from("/");
    for comp in target.components().skip(1) {
        cur.push(comp);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => continue,
            // A symlink to a directory is followed, like mount(2) does.
            Ok(m) if m.file_type().is_symlink() && cur.is_dir() => continue,
            Ok(_) => {
                remove_dirs(&created);
                return Err(invalid(format!(
                    "mount target {}: {} exists and is not a directory",
                    target.display(),
                    cur.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                remove_dirs(&created);
                return Err(io(format!("mount target {}: {e}", cur.display())));
            }
        }
        match std::fs::create_dir(&cur) {
            Ok(()) => created.push(cur.clone()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && cur.is_dir() => {}
            Err(e) => {
                remove_dirs(&created);
                return Err(io(format!("create mount target {}: {e}", cur.display())));
            }
        }
    }
    Ok(created)
}

fn remove_dirs(created: &[PathBuf]) {
    for d in created.iter().rev() {
        if let Err(e) = std::fs::remove_dir(d) {
            tracing::warn!("removing {} after a failed mount: {e}", d.display());
        }
    }
}

fn flags(req: &MountRequest) -> MsFlags {
    let mut f = MsFlags::empty();
    if req.read_only {
        f |= MsFlags::MS_RDONLY;
    }
    for o in &req.options {
        f |= match o {
            MountOption::Nosuid => MsFlags::MS_NOSUID,
            MountOption::Nodev => MsFlags::MS_NODEV,
            MountOption::Noexec => MsFlags::MS_NOEXEC,
            MountOption::Noatime => MsFlags::MS_NOATIME,
            // Propagation is a call of its own, after the mount (see `mount_fs`).
            MountOption::Shared => MsFlags::empty(),
        };
    }
    f
}

fn describe(req: &MountRequest, fstype: FsType) -> String {
    match fstype {
        FsType::Virtiofs => format!("mount virtiofs tag {:?} on {}", req.source, req.target),
        FsType::Bind => format!("bind mount {} on {}", req.source, req.target),
        FsType::Tmpfs | FsType::Proc => format!("mount {} on {}", fstype.name(), req.target),
    }
}

fn mount_error(req: &MountRequest, fstype: FsType, e: Errno) -> AgentError {
    let what = describe(req, fstype);
    let hint = match (fstype, e) {
        (FsType::Virtiofs, Errno::ENOENT | Errno::EINVAL) => {
            " (does the VM have a virtio-fs share with this tag? hull-vmm --fs TAG=DIR)"
        }
        (FsType::Bind, Errno::ENOENT) => " (the bind source does not exist)",
        (_, Errno::EPERM) => " (the agent lacks the privilege to mount)",
        _ => "",
    };
    let kind = match e {
        Errno::ENOENT | Errno::ENODEV | Errno::ENOTDIR => ErrorKind::InvalidArgument,
        Errno::EBUSY => ErrorKind::Busy,
        _ => ErrorKind::Io,
    };
    AgentError::new(kind, format!("{what}: {}{hint}", e.desc()))
}

/// The read-ahead of a virtio-fs mount, KiB: one FUSE request's most (hull-vmm's FUSE server
/// takes 256 pages a request). The guest kernel starts a FUSE mount at 128 KiB whatever the
/// server says (FUSE_INIT's `max_readahead` only lowers it), so a cached file read
/// sequentially went to the host 128 KiB per round trip; at 1 MiB a sequential read of the
/// rootfs share ran 3-4 times faster in the emulated host (docs/performance.md, "virtio-fs").
/// 2, 4 and 8 MiB measured no better. A share mounted without a cache (`never`) reads
/// directly, at the caller's size, and is not affected.
pub const VIRTIOFS_READ_AHEAD_KB: u32 = 1024;

/// Sets the read-ahead of the FUSE connection mounted at `target` (its backing device info in
/// sysfs is named after the mount's anonymous device, `0:N`). A failure is logged: the mount
/// works without it, only slower.
fn set_read_ahead(target: &Path) {
    use std::os::unix::fs::MetadataExt;
    let result = std::fs::metadata(target).and_then(|m| {
        let dev = m.dev();
        let bdi = format!(
            "/sys/class/bdi/{}:{}/read_ahead_kb",
            nix::sys::stat::major(dev),
            nix::sys::stat::minor(dev)
        );
        std::fs::write(&bdi, VIRTIOFS_READ_AHEAD_KB.to_string())
            .map_err(|e| std::io::Error::new(e.kind(), format!("{bdi}: {e}")))
    });
    if let Err(e) = result {
        tracing::warn!(
            "read-ahead of the virtio-fs mount on {}: {e}",
            target.display()
        );
    }
}

/// Serves a `mount` request.
pub fn mount_fs(req: &MountRequest) -> Result<(), AgentError> {
    let fstype = req.validate()?;
    let target = Path::new(&req.target);
    if fstype == FsType::Bind && !Path::new(&req.source).exists() {
        return Err(invalid(format!(
            "bind source {} does not exist",
            req.source
        )));
    }
    let created = create_dirs(target)?;
    let data = (!req.data.is_empty()).then(|| req.data.join(","));
    let flags = flags(req);
    let result = match fstype {
        FsType::Virtiofs => mount(
            Some(req.source.as_str()),
            target,
            Some("virtiofs"),
            flags,
            data.as_deref(),
        ),
        FsType::Tmpfs | FsType::Proc => {
            let label = if req.source.is_empty() {
                fstype.name()
            } else {
                req.source.as_str()
            };
            mount(
                Some(label),
                target,
                Some(fstype.name()),
                flags,
                data.as_deref(),
            )
        }
        FsType::Bind => mount(
            Some(req.source.as_str()),
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| {
            if flags.is_empty() {
                return Ok(());
            }
            // Flags of a bind mount only take effect on a remount of it.
            mount(
                None::<&str>,
                target,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
                None::<&str>,
            )
            .inspect_err(|_| {
                let _ = umount2(target, MntFlags::MNT_DETACH);
            })
        }),
    };
    let result = result.and_then(|()| {
        if !req.options.contains(&MountOption::Shared) {
            return Ok(());
        }
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_SHARED,
            None::<&str>,
        )
        .inspect_err(|_| {
            let _ = umount2(target, MntFlags::MNT_DETACH);
        })
    });
    match result {
        Ok(()) => {
            if fstype == FsType::Virtiofs {
                set_read_ahead(target);
            }
            tracing::info!(
                "{}{}",
                describe(req, fstype),
                if req.read_only { " (read-only)" } else { "" }
            );
            Ok(())
        }
        Err(e) => {
            remove_dirs(&created);
            let err = mount_error(req, fstype, e);
            tracing::warn!("{}", err.message);
            Err(err)
        }
    }
}

/// Serves an `unmount` request.
pub fn unmount_fs(target: &str, lazy: bool) -> Result<(), AgentError> {
    check_path("unmount target", target)?;
    let flags = if lazy {
        MntFlags::MNT_DETACH
    } else {
        MntFlags::empty()
    };
    match umount2(target, flags) {
        Ok(()) => {
            tracing::info!("unmounted {target}{}", if lazy { " (lazily)" } else { "" });
            Ok(())
        }
        Err(Errno::EINVAL) => Err(invalid(format!(
            "unmount {target}: nothing is mounted there"
        ))),
        Err(Errno::ENOENT) => Err(invalid(format!("unmount {target}: no such directory"))),
        Err(Errno::EBUSY) => Err(AgentError::new(
            ErrorKind::Busy,
            format!(
                "unmount {target}: the file system is busy (processes use it); unmount lazily \
                 to detach it now"
            ),
        )),
        Err(e) => Err(io(format!("unmount {target}: {}", e.desc()))),
    }
}
