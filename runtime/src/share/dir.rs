//! A directory the host works in by file descriptor: every name is one component resolved
//! beneath it with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, nothing is created over
//! an existing entry (`O_EXCL`, `mkdirat`), removal is `unlinkat` (which never follows a
//! link), and mounts are made on and removed from `/proc/self/fd/<n>` of an `O_PATH` handle
//! of the mount point, so no path is ever resolved again after it was checked.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

/// How many mounts stacked on one mount point an unmount takes off before it gives up.
const MAX_STACKED_MOUNTS: usize = 16;

fn resolve() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS
}

/// One path component, or an error naming it: no `/`, not `.` or `..`, not empty.
fn component(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b == b"." || b == b".." || b.contains(&b'/') || b.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a single path component"),
        ));
    }
    Ok(name)
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// An open directory (an `O_PATH` handle) and, for messages, the path it was opened at.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Opens the directory at `path`, which must not be a symlink itself. Only for the roots the
    /// host made (the sandbox's share directories); everything below goes through [`Dir::dir`].
    pub fn open(path: &Path) -> io::Result<Dir> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
        Ok(Dir {
            // SAFETY: open returned a new descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            path: path.to_path_buf(),
        })
    }

    /// The path this directory was opened at (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `name` resolved beneath this directory, never through a link.
    fn open_how(&self, name: &OsStr, flags: OFlag, mode: Mode) -> io::Result<OwnedFd> {
        let name = component(name)?;
        let how = OpenHow::new()
            .flags(flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .mode(mode)
            .resolve(resolve());
        let fd = nix::fcntl::openat2(self.fd.as_raw_fd(), name, how).map_err(errno)?;
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The subdirectory `name` (not a link: a link or any other file there is `ENOTDIR` or
    /// `ELOOP`).
    pub fn dir(&self, name: impl AsRef<OsStr>) -> io::Result<Dir> {
        let name = name.as_ref();
        let fd = self.open_how(name, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty())?;
        Ok(Dir {
            fd,
            path: self.path.join(name),
        })
    }

    /// An `O_PATH` handle of entry `name` (a file or a directory, not a link): a mount point.
    pub fn entry(&self, name: impl AsRef<OsStr>) -> io::Result<Entry> {
        let name = name.as_ref();
        let fd = self.open_how(name, OFlag::O_PATH, Mode::empty())?;
        // O_PATH | O_NOFOLLOW opens a trailing link itself: never hand one out.
        let st = nix::sys::stat::fstat(fd.as_raw_fd()).map_err(errno)?;
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            return Err(errno(Errno::ELOOP));
        }
        Ok(Entry {
            fd,
            path: self.path.join(name),
        })
    }

    /// The subdirectory `name`; `None` if there is nothing there, and if something that is not a
    /// directory is there (a link, a file: nothing the host made), it is removed as it is (a
    /// link itself, never what it points at) and `None` too.
    pub fn dir_or_drop(&self, name: impl AsRef<OsStr>) -> io::Result<Option<Dir>> {
        let name = name.as_ref();
        match self.dir(name) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR) | Some(libc::ELOOP)) => {
                tracing::warn!(
                    "{}: not a directory, removed as it is",
                    self.path.join(name).display()
                );
                self.remove(name)?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Makes directory `name` (an error if anything is there already).
    pub fn mkdir(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<()> {
        let name = component(name.as_ref())?;
        nix::sys::stat::mkdirat(
            Some(self.fd.as_raw_fd()),
            name,
            Mode::from_bits_truncate(mode),
        )
        .map_err(errno)
    }

    /// Makes directory `name` if there is none, and opens it.
    pub fn mkdir_open(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<Dir> {
        let name = name.as_ref();
        match self.mkdir(name, mode) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        self.dir(name)
    }

    /// Creates file `name` for writing (an error if anything is there already).
    pub fn create_file(&self, name: impl AsRef<OsStr>, mode: u32) -> io::Result<File> {
        let fd = self.open_how(
            name.as_ref(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY,
            Mode::from_bits_truncate(mode),
        )?;
        Ok(File::from(fd))
    }

    /// Whether entry `name` exists (a link counts).
    pub fn exists(&self, name: impl AsRef<OsStr>) -> io::Result<bool> {
        let name = component(name.as_ref())?;
        match nix::sys::stat::fstatat(
            Some(self.fd.as_raw_fd()),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(_) => Ok(true),
            Err(Errno::ENOENT) => Ok(false),
            Err(e) => Err(errno(e)),
        }
    }

    /// The names in this directory.
    pub fn entries(&self) -> io::Result<Vec<OsString>> {
        // A readable descriptor of the same directory (an O_PATH one cannot be listed).
        let how = OpenHow::new()
            .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW)
            .resolve(resolve());
        let fd = nix::fcntl::openat2(self.fd.as_raw_fd(), ".", how).map_err(errno)?;
        // SAFETY: openat2 returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // Listed through its own magic link: exactly this directory, whatever its path is now.
        let mut names = Vec::new();
        for e in std::fs::read_dir(format!("/proc/self/fd/{}", fd.as_raw_fd()))? {
            names.push(e?.file_name());
        }
        drop(fd);
        Ok(names)
    }

    /// Removes entry `name`: an empty directory, or anything else (a link itself, never what it
    /// points at). Nothing there is fine. A directory that is not empty is an error.
    pub fn remove(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = component(name.as_ref())?;
        let st = match nix::sys::stat::fstatat(
            Some(self.fd.as_raw_fd()),
            name,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(errno(e)),
        };
        let how = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        match nix::unistd::unlinkat(Some(self.fd.as_raw_fd()), name, how) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(errno(e)),
        }
    }

    /// Takes every mount off entry `name` (lazily, as many as are stacked there, up to a bound).
    /// Nothing mounted, or nothing there, is fine.
    pub fn unmount(&self, name: impl AsRef<OsStr>) -> io::Result<()> {
        let name = name.as_ref();
        for _ in 0..MAX_STACKED_MOUNTS {
            let entry = match self.entry(name) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            };
            if !entry.unmount()? {
                return Ok(());
            }
        }
        Err(io::Error::other(format!(
            "{}: more than {MAX_STACKED_MOUNTS} mounts stacked",
            self.path.join(name).display()
        )))
    }
}

/// An `O_PATH` handle of one entry (a mount point).
#[derive(Debug)]
pub struct Entry {
    fd: OwnedFd,
    path: PathBuf,
}

impl Entry {
    /// The magic link that names exactly this entry, for mount(2) and umount(2).
    fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()))
    }

    /// Binds `source` (a host path the front end gave, never one in the share) here.
    pub fn bind(&self, source: &Path, recursive: bool) -> io::Result<()> {
        let mut flags = MsFlags::MS_BIND;
        if recursive {
            flags |= MsFlags::MS_REC;
        }
        nix::mount::mount(
            Some(source),
            &self.proc_path(),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|e| {
            io::Error::other(format!(
                "mount --bind {} {}: {e}",
                source.display(),
                self.path.display()
            ))
        })
    }

    /// Makes the mount at this entry (opened after it was mounted) read-only, and `nosuid`,
    /// `nodev`.
    pub fn remount_readonly(&self) -> io::Result<()> {
        nix::mount::mount(
            None::<&str>,
            &self.proc_path(),
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV,
            None::<&str>,
        )
        .map_err(|e| io::Error::other(format!("remount {} read-only: {e}", self.path.display())))
    }

    /// Takes the top mount off this entry (lazily); false if nothing was mounted here.
    ///
    /// The mount and everything under it are made private first. A bind of a shared host mount
    /// is a peer of its source, and so is every mount the host made under the source since: a
    /// lazy unmount of that tree would propagate to those peers and take the host's own
    /// mounts off with it.
    pub fn unmount(&self) -> io::Result<bool> {
        match nix::mount::mount(
            None::<&str>,
            &self.proc_path(),
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        ) {
            Ok(()) => {}
            // Nothing mounted at this entry: it is a directory of the mount above it, which
            // must not be touched. EINVAL here is the kernel saying it is not a mount point.
            Err(Errno::EINVAL) => return Ok(false),
            Err(e) => {
                return Err(io::Error::other(format!(
                    "make {} private before unmounting it: {e}",
                    self.path.display()
                )))
            }
        }
        match nix::mount::umount2(&self.proc_path(), MntFlags::MNT_DETACH) {
            Ok(()) => Ok(true),
            Err(Errno::EINVAL) => Ok(false),
            Err(e) => Err(io::Error::other(format!(
                "umount {}: {e}",
                self.path.display()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_follows_a_link_nor_leaves_the_directory() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"x").unwrap();
        let root = t.path().join("root");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        std::os::unix::fs::symlink("../outside", root.join("rel")).unwrap();
        let d = Dir::open(&root).unwrap();
        for name in ["link", "rel"] {
            assert!(d.dir(name).is_err(), "{name} was followed");
            assert!(d.entry(name).is_err(), "{name} was followed");
            assert!(d.create_file(name, 0o644).is_err());
            assert!(d.mkdir(name, 0o755).is_err());
        }
        for bad in ["..", ".", "a/b", ""] {
            let e = d.dir(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        // Removal takes the link itself, never what it points at.
        d.remove("link").unwrap();
        d.remove("rel").unwrap();
        assert!(outside.join("precious").exists());
        assert!(d.entries().unwrap().is_empty());
        assert!(Dir::open(&root.join("nothing")).is_err());
        std::os::unix::fs::symlink(&outside, t.path().join("rootlink")).unwrap();
        assert!(
            Dir::open(&t.path().join("rootlink")).is_err(),
            "a root link is refused"
        );
    }

    #[test]
    fn makes_files_and_directories_once() {
        let t = tempfile::tempdir().unwrap();
        let d = Dir::open(t.path()).unwrap();
        d.mkdir("a", 0o755).unwrap();
        assert_eq!(
            d.mkdir("a", 0o755).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        let a = d.mkdir_open("a", 0o755).unwrap();
        use std::io::Write;
        a.create_file("f", 0o600).unwrap().write_all(b"hi").unwrap();
        assert_eq!(
            a.create_file("f", 0o600).unwrap_err().kind(),
            io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(t.path().join("a/f")).unwrap(), b"hi");
        assert!(a.exists("f").unwrap());
        assert_eq!(a.entries().unwrap(), vec![OsString::from("f")]);
        assert!(d.remove("a").is_err(), "a directory with content stays");
        a.remove("f").unwrap();
        d.remove("a").unwrap();
        d.remove("a").unwrap();
        assert!(!t.path().join("a").exists());
    }

    #[test]
    fn binds_and_unmounts_through_the_handle() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("f"), b"data").unwrap();
        let d = Dir::open(t.path()).unwrap();
        d.mkdir("m", 0o755).unwrap();
        d.entry("m").unwrap().bind(&src, false).unwrap();
        let r = std::panic::catch_unwind(|| {
            assert_eq!(std::fs::read(t.path().join("m/f")).unwrap(), b"data");
            d.entry("m").unwrap().remount_readonly().unwrap();
            assert!(
                std::fs::write(t.path().join("m/g"), b"x").is_err(),
                "read-only"
            );
        });
        d.unmount("m").unwrap();
        r.unwrap();
        assert!(!t.path().join("m/f").exists(), "unmounted");
        d.unmount("m").unwrap();
        d.unmount("missing").unwrap();
        d.remove("m").unwrap();
        assert!(src.join("f").exists());
    }

    /// A volume bound from a shared host mount: a mount the host makes under the source later
    /// propagates into the bind, and taking the bind off must leave the host's mount alone.
    #[test]
    fn unmounting_a_bind_of_a_shared_mount_keeps_the_host_s_submounts() {
        use std::os::unix::fs::MetadataExt;
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        let mnt = |s: Option<&Path>, t: &Path, fstype: Option<&str>, f: MsFlags| {
            nix::mount::mount(s, t, fstype, f, None::<&str>).unwrap()
        };
        mnt(Some(&src), &src, None, MsFlags::MS_BIND);
        mnt(None, &src, None, MsFlags::MS_SHARED);
        let d = Dir::open(t.path()).unwrap();
        d.mkdir("m", 0o755).unwrap();
        d.entry("m").unwrap().bind(&src, true).unwrap();
        mnt(
            Some(Path::new("hostmount")),
            &src.join("sub"),
            Some("tmpfs"),
            MsFlags::empty(),
        );
        let dev = |p: &Path| std::fs::metadata(p).unwrap().dev();
        let propagated = dev(&t.path().join("m/sub")) != dev(&t.path().join("m"));
        d.unmount("m").unwrap();
        let kept = dev(&src.join("sub")) != dev(&src);
        let _ = nix::mount::umount2(&src.join("sub"), MntFlags::MNT_DETACH);
        let _ = nix::mount::umount2(&src, MntFlags::MNT_DETACH);
        assert!(propagated, "the host's new mount reached the bind");
        assert!(kept, "unmounting the bind took the host's mount off");
        assert!(!t.path().join("m/sub").exists(), "the bind is gone");
    }
}
