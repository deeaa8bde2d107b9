//! The host side of a sandbox's share, built so that the guest cannot redirect the host (Kata's
//! layout: the host works in a directory only it can write, the guest sees a read-only view).
//!
//! ```text
//! <sandbox>/share-rw/          the host's side, 0700, a shared bind mount of itself: the host
//!   containers/<id>/           makes, binds and removes everything here, and nothing else
//!     mounts/<n>               does (the guest never sees this path)
//!     config.json
//!   rootfs/<id>@<nonce>/       container <id>'s root file system
//! <sandbox>/shared/            a read-only, nosuid, nodev slave bind of share-rw: what
//!                              virtio-fs exports (tag hull-shared, /run/hull/shared in the guest,
//!                              nothing cached: the host changes volumes while the guest runs)
//! <sandbox>/shared/rootfs/     what a second virtio-fs device exports (tag hull-rootfs,
//!                              /run/hull/rootfs in the guest), cached in the guest
//! ```
//!
//! The root file systems have a share of their own because the guest may cache it: a
//! container's root file system is written by the guest alone (the host writes into it only
//! when asked to copy files in, and then sees its change in the guest within the cache's
//! timeout), while a volume is the host's as much as the container's, so the guest caches
//! nothing of `shared` (see `docs/performance.md`, "The shares' caches"). A cached name stays
//! valid for the cache's timeout even after the host removed it, so a root file system's name
//! is never used twice in one sandbox: it carries a random nonce, and a container made again
//! with the same id is never sent to its predecessor's directory.
//!
//! Mounts the host makes below `share-rw` (a container's rootfs, its bind sources) propagate
//! into the view as they are: they are the only places the guest can write, and they are on the
//! disk the front end put them on (as with runc), never in the host's `/run`. A bind whose spec
//! says `ro` is made read-only on both sides, so even the guest's root cannot write to it. The
//! structure itself (`containers/`, `containers/<id>/`, the mount points, `config.json`) is
//! read-only to the guest: it cannot plant a link, rename a directory away or fill the host's
//! RAM through the share.
//!
//! Every host operation below `share-rw` is fd-relative and never follows a link ([`dir::Dir`]:
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, `O_EXCL`, `unlinkat`, mount and unmount
//! through the handle of the mount point): defence in depth, should the view ever be writable.
//! Removal never deletes recursively: it takes off the mounts it made, then removes the mount
//! points one by one, so a mount that could not be undone fails the removal instead of
//! deleting the host's files through it.

pub mod dir;

use std::io::Write;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use oci_spec::runtime::Spec;

use dir::Dir;

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
    /// `ro`: read-only on the host's side and in the guest's view alike.
    pub readonly: bool,
}

/// The share's directory of containers.
pub const SHARE_CONTAINERS: &str = "containers";
/// The share's directory of root file systems (exported by a device of its own).
pub const SHARE_ROOTFS: &str = "rootfs";

/// The name of a new root file system of container `id` in [`SHARE_ROOTFS`]: `<id>@<nonce>`,
/// never used before in this sandbox (see the module docs). `@` is not in a container id.
pub fn rootfs_name(id: &str) -> String {
    let mut nonce = [0u8; 8];
    if getrandom(&mut nonce).is_err() {
        // A clock's nanoseconds are unique enough here: the names only must not repeat within
        // one sandbox's life.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        nonce = (t.as_nanos() as u64).to_le_bytes();
    }
    format!("{id}@{:016x}", u64::from_le_bytes(nonce))
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// The container id of `name` in [`SHARE_ROOTFS`], if it is a [`rootfs_name`]: a valid id,
/// `@`, 16 lowercase hex digits.
fn rootfs_owner(name: &std::ffi::OsStr) -> Option<&str> {
    let (id, nonce) = name.to_str()?.split_once('@')?;
    let hex = nonce.len() == 16
        && nonce
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    (hex && hull_agent_protocol::check_container_id(id).is_ok()).then_some(id)
}

/// Whether `name` in [`SHARE_ROOTFS`] is one of container `id`'s.
fn is_rootfs_of(name: &std::ffi::OsStr, id: &str) -> bool {
    rootfs_owner(name) == Some(id)
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ShareError + 'a {
    move |source| ShareError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// A sandbox's share: the host's side and the guest's read-only view of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    rw: PathBuf,
    view: PathBuf,
}

impl Share {
    /// The share whose host side is `rw` and whose guest view is `view` (see the module docs).
    pub fn new(rw: PathBuf, view: PathBuf) -> Share {
        Share { rw, view }
    }

    /// Where the host writes.
    pub fn host_dir(&self) -> &Path {
        &self.rw
    }

    /// What virtio-fs exports to the guest: read-only but for the mounts the host makes.
    pub fn view(&self) -> &Path {
        &self.view
    }

    /// What the root file systems' device exports: [`SHARE_ROOTFS`] in the view.
    pub fn rootfs_view(&self) -> PathBuf {
        self.view.join(SHARE_ROOTFS)
    }

    /// The host directory of container `id`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.rw.join(SHARE_CONTAINERS).join(id)
    }

    /// Makes both directories and the mounts that tie them (see the module docs). On failure
    /// whatever was made is undone.
    pub fn create(&self) -> Result<(), ShareError> {
        use std::os::unix::fs::DirBuilderExt;
        for p in [&self.rw, &self.view] {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(p)
                .map_err(io("cannot create the share", p))?;
        }
        // Before the view is tied: the root file systems' device exports it from the start.
        let rootfs = self.rw.join(SHARE_ROOTFS);
        let r = std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&rootfs)
            .map_err(io("cannot create the share's rootfs directory", &rootfs))
            .and_then(|()| self.tie());
        if r.is_err() {
            if let Err(e) = self.destroy() {
                tracing::warn!("undoing the share: {e}");
            }
        }
        r
    }

    fn tie(&self) -> Result<(), ShareError> {
        let mount = |src: Option<&Path>, target: &Path, flags: MsFlags, what: &'static str| {
            nix::mount::mount(src, target, None::<&str>, flags, None::<&str>)
                .map_err(|e| io(what, target)(std::io::Error::from_raw_os_error(e as i32)))
        };
        // share-rw: a mount of its own whose new submounts propagate to its peers and slaves.
        mount(
            Some(&self.rw),
            &self.rw,
            MsFlags::MS_BIND,
            "cannot bind the share",
        )?;
        mount(
            None,
            &self.rw,
            MsFlags::MS_PRIVATE,
            "cannot make the share private",
        )?;
        mount(
            None,
            &self.rw,
            MsFlags::MS_SHARED,
            "cannot make the share shared",
        )?;
        // shared: the guest's view, a slave of share-rw (it receives mounts, sends none back),
        // read-only.
        mount(
            Some(&self.rw),
            &self.view,
            MsFlags::MS_BIND,
            "cannot bind the share's view",
        )?;
        mount(
            None,
            &self.view,
            MsFlags::MS_SLAVE,
            "cannot make the view a slave",
        )?;
        mount(
            None,
            &self.view,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            "cannot make the view read-only",
        )
    }

    /// Removes every container's part ([`Share::remove`]), then the view, the host's side and
    /// their mounts. Nothing there is fine.
    pub fn destroy(&self) -> Result<(), ShareError> {
        if self.rw.exists() {
            self.remove_all()?;
            if let Ok(root) = Dir::open(&self.rw) {
                root.remove(SHARE_CONTAINERS).map_err(io(
                    "cannot remove the share's containers directory",
                    &self.rw,
                ))?;
                // Anything left there is not the runtime's (see `remove_rootfs`): the
                // directory stays with it, as the host's side does below.
                match root.remove(SHARE_ROOTFS) {
                    Ok(()) => {}
                    Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {}
                    Err(e) => {
                        return Err(io("cannot remove the share's rootfs directory", &self.rw)(
                            e,
                        ))
                    }
                }
            }
        }
        for p in [&self.view, &self.rw] {
            // The mounts this share made on its own two directories, and only those. Each is
            // made private with all under it first: a volume still bound there may be a peer of
            // a host mount, and a lazy unmount would propagate to the host's submounts.
            for _ in 0..16 {
                match nix::mount::mount(
                    None::<&str>,
                    p.as_path(),
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                ) {
                    Ok(()) => {}
                    Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
                    Err(e) => {
                        return Err(io("cannot make the share private", p)(
                            std::io::Error::from_raw_os_error(e as i32),
                        ))
                    }
                }
                match nix::mount::umount2(
                    p.as_path(),
                    MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
                ) {
                    Ok(()) => continue,
                    Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
                    Err(e) => {
                        return Err(io("cannot unmount the share", p)(
                            std::io::Error::from_raw_os_error(e as i32),
                        ))
                    }
                }
            }
            // Empty now, unless something the runtime did not make is left on the host's side
            // (the sandbox's removal takes it, once it found nothing mounted any more).
            match std::fs::remove_dir(p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {}
                Err(e) => return Err(io("cannot remove the share", p)(e)),
            }
        }
        Ok(())
    }

    /// Makes container `id`'s directory: binds `rootfs` at `rootfs/<rootfs_name>` (a
    /// [`rootfs_name`] of `id`) and the `binds`, writes `guest_spec` as `config.json`. On
    /// failure, whatever was made is undone.
    pub fn prepare(
        &self,
        id: &str,
        rootfs_name: &str,
        rootfs: &Path,
        binds: &[BindMount],
        guest_spec: &Spec,
    ) -> Result<PathBuf, ShareError> {
        if !is_rootfs_of(std::ffi::OsStr::new(rootfs_name), id) {
            return Err(
                io("not a root file system name of the container", &self.rw)(
                    std::io::Error::from_raw_os_error(libc::EINVAL),
                ),
            );
        }
        let dir = self.container_dir(id);
        let root = Dir::open(&self.rw).map_err(io("cannot open the share", &self.rw))?;
        let containers = root
            .mkdir_open(SHARE_CONTAINERS, 0o755)
            .map_err(io("cannot create the share's containers directory", &dir))?;
        if containers
            .exists(id)
            .map_err(io("cannot look at the share", &dir))?
        {
            tracing::warn!(
                "container {id}: removing a leftover share directory {}",
                dir.display()
            );
            self.remove(id)?;
        }
        containers
            .mkdir(id, 0o755)
            .map_err(io("cannot create the container's share directory", &dir))?;
        match self.fill(
            &root,
            &containers,
            id,
            rootfs_name,
            rootfs,
            binds,
            guest_spec,
        ) {
            Ok(()) => Ok(dir),
            Err(e) => {
                if let Err(c) = self.remove(id) {
                    tracing::warn!("container {id}: undoing its share: {c}");
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn fill(
        &self,
        root: &Dir,
        containers: &Dir,
        id: &str,
        rootfs_name: &str,
        rootfs: &Path,
        binds: &[BindMount],
        guest_spec: &Spec,
    ) -> Result<(), ShareError> {
        let dir = containers.dir(id).map_err(io(
            "cannot open the container's share directory",
            containers.path(),
        ))?;
        let roots = root
            .mkdir_open(SHARE_ROOTFS, 0o755)
            .map_err(io("cannot open the share's rootfs directory", &self.rw))?;
        let target = roots.path().join(rootfs_name);
        roots
            .mkdir(rootfs_name, 0o755)
            .map_err(io("cannot create the rootfs mount point", &target))?;
        roots
            .entry(rootfs_name)
            .and_then(|e| e.bind(rootfs, true))
            .map_err(io("cannot bind the root file system", &target))?;
        if !binds.is_empty() {
            let path = dir.path().join("mounts");
            let mounts = dir
                .mkdir_open("mounts", 0o755)
                .map_err(io("cannot create the mounts directory", &path))?;
            for b in binds {
                let name = b.index.to_string();
                let target = path.join(&name);
                if b.is_dir {
                    mounts.mkdir(&name, 0o755)
                } else {
                    mounts.create_file(&name, 0o644).map(drop)
                }
                .map_err(io("cannot create a mount point", &target))?;
                let source_err = |e: std::io::Error| ShareError::MountSource {
                    destination: b.destination.clone(),
                    host_path: b.source.clone(),
                    reason: e.to_string(),
                };
                mounts
                    .entry(&name)
                    .and_then(|e| e.bind(&b.source, b.recursive))
                    .map_err(source_err)?;
                if b.readonly {
                    self.readonly(&mounts, id, &name)?;
                }
            }
        }
        let config = dir.path().join("config.json");
        let data = serde_json::to_vec_pretty(guest_spec).map_err(|e| {
            io("cannot encode the guest's config.json", &config)(std::io::Error::other(e))
        })?;
        dir.create_file("config.json", 0o644)
            .and_then(|mut f| f.write_all(&data))
            .map_err(io("cannot write the guest's config.json", &config))
    }

    /// Makes bind `name` of container `id` read-only on the host's side and in the view (a
    /// remount does not propagate, so each copy is remounted).
    fn readonly(&self, mounts: &Dir, id: &str, name: &str) -> Result<(), ShareError> {
        let target = mounts.path().join(name);
        mounts
            .entry(name)
            .and_then(|e| e.remount_readonly())
            .map_err(io("cannot make a read-only bind read-only", &target))?;
        let view = Dir::open(&self.view)
            .and_then(|v| v.dir(SHARE_CONTAINERS))
            .and_then(|c| c.dir(id))
            .and_then(|c| c.dir("mounts"))
            .and_then(|m| m.entry(name))
            .and_then(|e| e.remount_readonly());
        view.map_err(io(
            "cannot make a read-only bind read-only in the guest's view",
            &target,
        ))
    }

    /// Container `id`'s directory in the guest's view (the host opens it without following a
    /// link; the guest cannot change the view's structure), if it is there.
    fn view_container_dir(&self, id: &str) -> std::io::Result<Option<Dir>> {
        let root = match Dir::open(&self.view) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let c = match root.dir(SHARE_CONTAINERS) {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match c.dir(id) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Takes off the mounts of container `id`'s directory and removes it (see the module
    /// docs). A directory that is not there is fine.
    pub fn remove(&self, id: &str) -> Result<(), ShareError> {
        let path = self.container_dir(id);
        let what = "cannot remove the container's share (is something still mounted there?)";
        let root = match Dir::open(&self.rw) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io(what, &self.rw)(e)),
        };
        self.remove_rootfs(&root, Some(id))?;
        let Some(containers) = root
            .dir_or_drop(SHARE_CONTAINERS)
            .map_err(io(what, &path))?
        else {
            return Ok(());
        };
        let Some(dir) = containers.dir_or_drop(id).map_err(io(what, &path))? else {
            return Ok(());
        };
        // The view's copy of each mount goes first. Each copy is taken off private (see
        // `Entry::unmount`), so a host mount that propagated into a volume stays on the host;
        // the view's copy of such a volume holds that mount too and would not go with the
        // host side's.
        let view = self.view_container_dir(id).map_err(io(what, &self.view))?;
        if let Some(mounts) = dir
            .dir_or_drop("mounts")
            .map_err(io(what, &path.join("mounts")))?
        {
            let view_mounts = match view.as_ref().map(|v| v.dir("mounts")) {
                Some(Ok(m)) => Some(m),
                Some(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => None,
                Some(Err(e)) => return Err(io(what, &self.view)(e)),
                None => None,
            };
            let names = mounts.entries().map_err(io(what, mounts.path()))?;
            for n in names {
                let p = mounts.path().join(&n);
                if let Some(v) = &view_mounts {
                    v.unmount(&n).map_err(io(what, &v.path().join(&n)))?;
                }
                mounts.unmount(&n).map_err(io(what, &p))?;
                mounts.remove(&n).map_err(io(what, &p))?;
            }
        }
        if let Some(v) = &view {
            v.unmount("rootfs")
                .map_err(io(what, &v.path().join("rootfs")))?;
        }
        dir.unmount("rootfs")
            .map_err(io(what, &path.join("rootfs")))?;
        for name in ["config.json", "mounts", "rootfs"] {
            dir.remove(name).map_err(io(what, &path.join(name)))?;
        }
        containers.remove(id).map_err(io(what, &path))
    }

    /// Takes off and removes the root file systems of container `id` (every one, if `None`),
    /// the view's copy of each mount first (see [`Share::remove`]).
    fn remove_rootfs(&self, root: &Dir, id: Option<&str>) -> Result<(), ShareError> {
        let what =
            "cannot remove a root file system from the share (is something still mounted there?)";
        let path = self.rw.join(SHARE_ROOTFS);
        let Some(roots) = root.dir_or_drop(SHARE_ROOTFS).map_err(io(what, &path))? else {
            return Ok(());
        };
        let view = match Dir::open(&self.view).and_then(|v| v.dir(SHARE_ROOTFS)) {
            Ok(v) => Some(v),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(what, &self.view)(e)),
        };
        for n in roots.entries().map_err(io(what, &path))? {
            match (rootfs_owner(&n), id) {
                (Some(owner), Some(id)) if owner != id => continue,
                (Some(_), _) => {}
                // Not a name the runtime makes: not its to remove (the sandbox's removal
                // leaves the directory, as it leaves anything else it did not make).
                (None, _) => {
                    tracing::warn!(
                        "share: leaving {}: not a root file system",
                        path.join(&n).display()
                    );
                    continue;
                }
            }
            let p = path.join(&n);
            // A link or a file under a root file system's name (nothing the host made) goes as
            // it is, never followed.
            if roots.dir_or_drop(&n).map_err(io(what, &p))?.is_none() {
                continue;
            }
            if let Some(v) = &view {
                v.unmount(&n).map_err(io(what, &v.path().join(&n)))?;
            }
            roots.unmount(&n).map_err(io(what, &p))?;
            roots.remove(&n).map_err(io(what, &p))?;
        }
        Ok(())
    }

    /// Removes every container's directory ([`Share::remove`] for each), whatever state they
    /// are in: what a sandbox's cleanup does before it removes its own directory.
    pub fn remove_all(&self) -> Result<(), ShareError> {
        let root = match Dir::open(&self.rw) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("cannot open the share", &self.rw)(e)),
        };
        // Every root file system, whether its container's directory is there or not.
        self.remove_rootfs(&root, None)?;
        let Some(containers) = root
            .dir_or_drop(SHARE_CONTAINERS)
            .map_err(io("cannot open the share", &self.rw))?
        else {
            return Ok(());
        };
        let names = containers
            .entries()
            .map_err(io("cannot list the share", containers.path()))?;
        for n in names {
            match n.to_str() {
                Some(id) => self.remove(id)?,
                // The host names containers by their ids, which are UTF-8: not the host's.
                None => containers
                    .remove(&n)
                    .map_err(io("cannot remove from the share", containers.path()))?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
