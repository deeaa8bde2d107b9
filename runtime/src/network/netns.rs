//! Entering a network namespace: a dedicated thread per call, never reused.

use std::fs::File;
use std::future::Future;
use std::io;
use std::path::Path;

use nix::sched::{setns, CloneFlags};
use rtnetlink::Handle;

use super::NetworkError;

/// An open network namespace file (checked to be one).
pub(super) struct Netns(File);

/// Marks a namespace-is-not-there error from [`open`] (`is_gone` recognises it).
const NOT_A_NETNS: &str = "not a network namespace (nsfs) file";

/// Opens the namespace at `path` and checks that it is one (a file left in `/var/run/netns`
/// after its namespace was unmounted is not).
pub(super) fn open(path: &Path) -> Result<Netns, NetworkError> {
    let err = |source| NetworkError::Namespace {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(err)?;
    let fs = nix::sys::statfs::fstatfs(&file).map_err(|e| err(e.into()))?;
    // The type's width differs between libcs; the magic fits either.
    #[allow(clippy::unnecessary_cast)]
    if fs.filesystem_type().0 as i64 != libc::NSFS_MAGIC as i64 {
        return Err(err(io::Error::new(io::ErrorKind::NotFound, NOT_A_NETNS)));
    }
    Ok(Netns(file))
}

/// Whether an [`open`] error means the namespace is gone (no such file or process, or an
/// nsfs mount point whose namespace was unmounted).
pub(super) fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Runs `f` with an rtnetlink handle on a fresh thread that has joined `ns`, and returns its
/// result. The thread runs a current-thread tokio runtime for the connection and then exits.
pub(super) fn run_in<T, F, Fut>(ns: Netns, path: &Path, f: F) -> Result<T, NetworkError>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
{
    let path = path.to_owned();
    let thread = std::thread::Builder::new()
        .name("hull-netns".into())
        .spawn(move || {
            let ns_err = |source| NetworkError::Namespace {
                path: path.clone(),
                source,
            };
            setns(&ns.0, CloneFlags::CLONE_NEWNET).map_err(|e| ns_err(e.into()))?;
            drop(ns);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| NetworkError::Thread(format!("tokio runtime: {e}")))?;
            rt.block_on(async move {
                let (conn, handle, _) = rtnetlink::new_connection()
                    .map_err(|e| NetworkError::Thread(format!("netlink socket: {e}")))?;
                let conn = tokio::spawn(conn);
                let r = f(handle).await;
                conn.abort();
                r
            })
        })
        .map_err(|e| NetworkError::Thread(format!("spawn: {e}")))?;
    thread
        .join()
        .map_err(|_| NetworkError::Thread("panicked".into()))?
}

/// Makes a new network namespace and bind-mounts it at `path` (a new file there; an existing
/// one is an error). The namespace has only `lo` (down); it lives as long as the mount or a
/// process in it.
pub(super) fn create(path: &Path) -> Result<(), NetworkError> {
    let err = |source: io::Error| NetworkError::Namespace {
        path: path.to_owned(),
        source,
    };
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(err)?;
    let target = path.to_owned();
    let made = std::thread::Builder::new()
        .name("hull-netns-new".into())
        .spawn(move || -> io::Result<()> {
            // This thread only: it exits right after, and the namespace stays through the
            // mount.
            nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })
        .map_err(|e| NetworkError::Thread(format!("spawn: {e}")))?
        .join()
        .map_err(|_| NetworkError::Thread("panicked".into()))?;
    if let Err(e) = made {
        let _ = std::fs::remove_file(path);
        return Err(err(e));
    }
    Ok(())
}

/// Unmounts the namespace [`create`] made at `path` and removes the file; the namespace goes
/// when the last process in it (hull-vmm) has gone too. Nothing there is not an error.
pub(super) fn remove(path: &Path) -> Result<(), NetworkError> {
    let err = |source: io::Error| NetworkError::Namespace {
        path: path.to_owned(),
        source,
    };
    match nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(err(e.into())),
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e)),
    }
}
