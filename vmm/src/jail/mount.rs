//! The jail's file system: new namespaces, and the root pivoted into an empty read-only tmpfs
//! that holds each socket directory at its own path (the directory alone, private) and a
//! `/proc` of process directories only. The shares are not in it (see `JailPaths`).
//!
//! The tmpfs is mounted on `/tmp` of the new mount namespace (the host's `/tmp` is untouched);
//! what goes into it is bound from `O_PATH` descriptors opened before, so a source under
//! `/tmp` is still found. `/` is made a recursive slave first, so that nothing the jail mounts
//! propagates back to the host; the host's root is detached after the pivot, so the jail ends
//! with no mount that the host's mounts propagate to.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::Mode;

use super::{JailError, JailPaths};

/// Where the jail's tmpfs is mounted in the new mount namespace before the pivot.
const STAGING: &str = "/tmp";

pub(super) fn pivot(paths: &JailPaths) -> Result<(), JailError> {
    // Not a network namespace: hull-vmm stays in the sandbox's (where its tap is), which is how
    // OCI hooks such as docker's `libnetwork-setkey` find the sandbox's network (through the
    // pid they are given, hull-vmm's). It cannot use that network: the event loop may only make
    // AF_UNIX sockets, the other threads none.
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| JailError::sys("unshare(mount, IPC, UTS namespaces)", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(|e| JailError::sys("making / a recursive slave", e))?;

    // Every source, opened before the staging tmpfs may hide it.
    let mut binds: Vec<(OwnedFd, PathBuf)> = Vec::new();
    // Parents before children: a directory bound later never hides one bound inside it.
    let mut all: Vec<&PathBuf> = paths.socket_dirs.iter().collect();
    all.sort_by(|a, b| (a.components().count(), a).cmp(&(b.components().count(), b)));
    all.dedup();
    for p in all {
        let fd = open(
            p.as_path(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| JailError::sys(format!("opening {}", p.display()), e))?;
        // SAFETY: `fd` was just returned by open(2) and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        binds.push((fd, p.clone()));
    }

    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        STAGING,
        Some("tmpfs"),
        nosuid,
        Some("size=64k,nr_inodes=256,mode=0755"),
    )
    .map_err(|e| JailError::sys(format!("mounting the jail's tmpfs on {STAGING}"), e))?;
    let staging = Path::new(STAGING);
    for (fd, path) in &binds {
        let target = inside(staging, path)?;
        make_dirs(staging, &target)?;
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        // The directory alone (not what is mounted below it: a sandbox's share may be), and
        // private: nothing the host mounts later propagates into the jail.
        mount(
            Some(source.as_str()),
            &target,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|e| JailError::sys(format!("binding {} into the jail", path.display()), e))?;
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| JailError::sys(format!("making {} private", path.display()), e))?;
    }
    drop(binds);
    let proc_dir = staging.join("proc");
    make_dirs(staging, &proc_dir)?;
    // Only the process directories (`subset=pid`, Linux 5.8): the FUSE server needs
    // `/proc/self/fd` and `/proc/self/mountinfo`, nothing of `/proc/sys` or `/proc/kcore`.
    mount(
        Some("proc"),
        &proc_dir,
        Some("proc"),
        nosuid,
        Some("subset=pid"),
    )
    .or_else(|_| mount(Some("proc"), &proc_dir, Some("proc"), nosuid, None::<&str>))
    .map_err(|e| JailError::sys("mounting /proc in the jail", e))?;

    // pivot_root(".", "."): the old root ends up on top of the new one and is detached at once.
    nix::unistd::chdir(staging).map_err(|e| JailError::sys("chdir to the jail", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| JailError::sys("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH)
        .map_err(|e| JailError::sys("detaching the host's root", e))?;
    nix::unistd::chdir("/").map_err(|e| JailError::sys("chdir /", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | nosuid,
        None::<&str>,
    )
    .map_err(|e| JailError::sys("making the jail's root read-only", e))?;
    Ok(())
}

/// `path` (absolute, without `..`) under `root`.
fn inside(root: &Path, path: &Path) -> Result<PathBuf, JailError> {
    let mut out = root.to_path_buf();
    for c in path.components() {
        match c {
            Component::RootDir => {}
            Component::Normal(n) => out.push(n),
            _ => {
                return Err(JailError::sys(
                    format!("{}: not a plain absolute path", path.display()),
                    std::io::Error::from_raw_os_error(libc::EINVAL),
                ))
            }
        }
    }
    Ok(out)
}

/// Creates `dir` and its parents below `root` (all on the jail's fresh tmpfs).
fn make_dirs(root: &Path, dir: &Path) -> Result<(), JailError> {
    let rel = dir.strip_prefix(root).unwrap_or(dir);
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        let name = CString::new(cur.as_os_str().as_bytes())
            .map_err(|e| JailError::sys(format!("{}", cur.display()), std::io::Error::other(e)))?;
        // SAFETY: mkdir(2) of a NUL-terminated path that lives for the call.
        if unsafe { libc::mkdir(name.as_ptr(), 0o755) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(JailError::sys(format!("creating {}", cur.display()), e));
            }
        }
    }
    Ok(())
}
