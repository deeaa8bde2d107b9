//! The policy layer between the FUSE server and the passthrough file system.
//!
//! - Read-only shares: every operation that would change data or metadata (setattr, setxattr,
//!   removexattr, mknod, mkdir, symlink, link, unlink, rmdir, rename, create, write, fallocate,
//!   a writable or truncating open, a writable DAX mapping) gets EROFS before it reaches the
//!   host; `access(W_OK)` says EROFS too. fuse-backend-rs has no read-only mode of its own for
//!   passthrough (only its overlay layers refuse writes to lower layers), hence this wrapper.
//! - No device nodes: mknod of a character or block device gets EPERM. The passthrough file
//!   system never opens one (it only opens regular files and directories), but a device node
//!   left in the shared directory would be a door for host processes that do.
//! - Bounded buffers: getxattr/listxattr allocate what the guest asks for; the size is capped
//!   at the kernel's own limit (64 KiB) first.
//! - No ioctl, no POSIX locks on the host (the trait defaults reply ENOSYS; the guest kernel
//!   then keeps locks locally).
//! - READ and WRITE carry the file's current flags, which the passthrough file system applies
//!   with fcntl(F_SETFL) when they differ from the open flags; if that fails (O_DIRECT on a
//!   directory handle, for one), fuse-backend-rs 0.14 returns early while a `File` it built over the handle's fd
//!   is still live, which closes the handle's fd: the fd number is then reused by whatever the
//!   VMM opens next, and later requests on the handle reach that file instead (found by the
//!   `virtio_fs` fuzz target). So READ and WRITE get the flags the handle was opened with, the
//!   fcntl never happens, and handles this layer did not open (directory handles) get EBADF.

use crate::sync::LockExt;
use std::collections::HashMap;
use std::ffi::CStr;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::passthrough::PassthroughFs;

/// The kernel's limit on an xattr value and on an xattr name list (XATTR_SIZE_MAX,
/// XATTR_LIST_MAX).
const XATTR_MAX: u32 = 65536;

fn erofs<T>() -> io::Result<T> {
    Err(io::Error::from_raw_os_error(libc::EROFS))
}

/// Whether open(2) flags ask for anything but reading.
fn open_writes(flags: u32) -> bool {
    let flags = flags as i32;
    flags & libc::O_ACCMODE != libc::O_RDONLY || flags & (libc::O_TRUNC | libc::O_CREAT) != 0
}

/// The passthrough file system behind the share's policy.
pub(super) struct GuardedFs {
    inner: PassthroughFs<()>,
    read_only: bool,
    /// Open flags of every file handle from OPEN or CREATE, until RELEASE.
    handles: Mutex<HashMap<u64, u32>>,
}

impl GuardedFs {
    pub(super) fn new(inner: PassthroughFs<()>, read_only: bool) -> GuardedFs {
        GuardedFs {
            inner,
            read_only,
            handles: Mutex::new(HashMap::new()),
        }
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u32>> {
        self.handles.locked()
    }

    /// The flags `handle` was opened with (EBADF for handles not from OPEN/CREATE).
    fn open_flags(&self, handle: u64) -> io::Result<u32> {
        self.handles()
            .get(&handle)
            .copied()
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    fn writable(&self) -> io::Result<()> {
        if self.read_only {
            erofs()
        } else {
            Ok(())
        }
    }
}

impl FileSystem for GuardedFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut capable = capable;
        if self.read_only {
            capable.remove(FsOptions::WRITEBACK_CACHE);
        }
        // The passthrough file system asks for little beyond READDIRPLUS; without MAX_PAGES
        // (or BIG_WRITES) the server's max_write is 4 KiB and the guest's requests 128 KiB at
        // most. The server accepts requests up to 1 MiB (+ a header page) and serves
        // concurrent requests of one file or directory safely.
        let extra = FsOptions::ASYNC_READ
            | FsOptions::BIG_WRITES
            | FsOptions::MAX_PAGES
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::AUTO_INVAL_DATA
            | FsOptions::ASYNC_DIO;
        let want = self.inner.init(capable)? | extra;
        Ok(want & capable)
    }

    fn destroy(&self) {
        self.handles().clear();
        self.inner.destroy()
    }

    fn lookup(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        self.inner.lookup(ctx, parent, name)
    }

    fn forget(&self, ctx: &Context, inode: u64, count: u64) {
        self.inner.forget(ctx, inode, count)
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(u64, u64)>) {
        self.inner.batch_forget(ctx, requests)
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: u64,
        handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: u64,
        attr: stat64,
        handle: Option<u64>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable()?;
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: u64,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        let kind = mode & libc::S_IFMT;
        if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
        self.inner.mknod(ctx, inode, name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable()?;
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: u64,
        oldname: &CStr,
        newdir: u64,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(&self, ctx: &Context, inode: u64, newparent: u64, newname: &CStr) -> io::Result<Entry> {
        self.writable()?;
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        if open_writes(flags) {
            self.writable()?;
        }
        let res = self.inner.open(ctx, inode, flags, fuse_flags)?;
        if let (Some(h), _, _) = res {
            self.handles().insert(h, flags);
        }
        Ok(res)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: u64,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<u64>, OpenOptions, Option<u32>)> {
        self.writable()?;
        let res = self.inner.create(ctx, parent, name, args)?;
        if let (_, Some(h), _, _) = res {
            self.handles().insert(h, args.flags);
        }
        Ok(res)
    }

    fn read(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let flags = self.open_flags(handle)?;
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        _flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable()?;
        let flags = self.open_flags(handle)?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(&self, ctx: &Context, inode: u64, handle: u64, lock_owner: u64) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
        handle: u64,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let res = self
            .inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner);
        if res.is_ok() {
            self.handles().remove(&handle);
        }
        res
    }

    fn statfs(&self, ctx: &Context, inode: u64) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable()?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner.getxattr(ctx, inode, name, size.min(XATTR_MAX))
    }

    fn listxattr(&self, ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: u64, name: &CStr) -> io::Result<()> {
        self.writable()?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: u64,
        flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(&self, ctx: &Context, inode: u64, datasync: bool, handle: u64) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(&self, ctx: &Context, inode: u64, flags: u32, handle: u64) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        if mask as i32 & libc::W_OK != 0 {
            self.writable()?;
        }
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: u64,
        handle: u64,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    // setupmapping/removemapping (DAX), ioctl, getlk/setlk/setlkw, bmap and poll keep the
    // trait's defaults (ENOSYS): this device has no DAX window, and host-side ioctls and locks
    // are not served.
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags_that_write() {
        assert!(!open_writes(libc::O_RDONLY as u32));
        assert!(!open_writes((libc::O_RDONLY | libc::O_DIRECTORY) as u32));
        assert!(!open_writes((libc::O_RDONLY | libc::O_NOFOLLOW) as u32));
        assert!(open_writes(libc::O_WRONLY as u32));
        assert!(open_writes(libc::O_RDWR as u32));
        assert!(open_writes((libc::O_RDONLY | libc::O_TRUNC) as u32));
        assert!(open_writes((libc::O_RDONLY | libc::O_CREAT) as u32));
        // O_ACCMODE 3 is not a read-only open either.
        assert!(open_writes(libc::O_ACCMODE as u32));
    }
}
