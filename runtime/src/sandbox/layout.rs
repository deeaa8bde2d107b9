//! Where everything of a sandbox is on the host: the one place that knows the names in a
//! sandbox's directory and where its sockets go.
//!
//! ```text
//! <root>/<id>/            the sandbox's directory
//!   state.json lock       SandboxState, and the flock of the command acting on it
//!   vm.json console.log vmm.log   hull-vmm's config, guest console and log (crate::vmm)
//!   api.sock vsock.sock   hull-vmm's API socket and hybrid vsock socket; in
//!                         [`SOCKET_ROOT`]`/<hash of the directory>/` instead when the
//!                         directory's path is too long for a Unix socket (docker's and
//!                         containerd's roots are)
//!   share-rw/             the share's host side: only the host writes here (crate::share)
//!   shared/               the guest's read-only view of it (virtio-fs tag `hull-shared`)
//!   containers/<cid>.json the containers' records (written by the container module)
//!   netns                 the path of the network namespace the VM's taps are in
//!   host-cgroup           the cgroup hull-vmm is started in, recorded before it starts
//!   net.ns                the sandbox's own network namespace, bind-mounted
//! ```

use std::path::{Path, PathBuf};

use super::SandboxError;

/// The state file's name in the sandbox's directory.
pub const STATE_FILE: &str = "state.json";
/// The lock file's name in the sandbox's directory.
pub const LOCK_FILE: &str = "lock";
/// The guest's read-only view of the share inside the sandbox's directory (what virtio-fs
/// exports).
pub const SHARE_DIR: &str = "shared";
/// The host's side of the share, which the guest never sees.
pub const SHARE_RW_DIR: &str = "share-rw";
/// hull-vmm's hybrid vsock socket (the agent is guest port 1024 behind it).
const VSOCK_SOCKET: &str = "vsock.sock";
/// hull-vmm's API socket.
const API_SOCKET: &str = "api.sock";
/// The longest socket path hull-vmm makes: the vsock socket with a port suffix (host-side
/// listeners of guest-initiated connections).
const LONGEST_SOCKET: &str = "vsock.sock_4294967295";
/// The record of the network namespace the sandbox plumbed (its path), for the cleanup.
const NETNS_FILE: &str = "netns";
/// Where a sandbox's own network namespace is bind-mounted.
const OWN_NETNS: &str = "net.ns";
/// The record of the cgroup hull-vmm is started in (its path), written before the start.
const CGROUP_FILE: &str = "host-cgroup";
/// Most bytes of a Unix socket path.
pub const MAX_SOCKET_PATH: usize = 107;
/// Where a sandbox's sockets go when its directory is too deep for them.
pub const SOCKET_ROOT: &str = "/run/hull-sockets";

/// FNV-1a, 64 bits: stable across builds and releases (std's hasher is not), so every process
/// computes the same short name.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The paths of one sandbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    dir: PathBuf,
    sockets: PathBuf,
}

impl Layout {
    /// Sandbox `id` under `root`.
    pub fn new(root: &Path, id: &str) -> Layout {
        Layout::of_dir(&root.join(id))
    }

    /// The sandbox whose directory is `dir`. Its sockets are in `dir` when the longest socket
    /// path fits in a Unix socket address, else in a short directory under [`SOCKET_ROOT`]
    /// named by a hash of `dir` (the same in every process, so a later command finds it).
    pub fn of_dir(dir: &Path) -> Layout {
        let sockets = if dir.join(LONGEST_SOCKET).as_os_str().len() <= MAX_SOCKET_PATH {
            dir.to_path_buf()
        } else {
            let h = fnv1a(dir.as_os_str().as_encoded_bytes());
            Path::new(SOCKET_ROOT).join(format!("{h:016x}"))
        };
        Layout {
            dir: dir.to_path_buf(),
            sockets,
        }
    }

    /// The sandbox's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The name of the cgroup hull-vmm gets when the spec names none (under
    /// `host_cgroup::DEFAULT_PARENT`): the sandbox's id and a hash of its directory, so that
    /// sandboxes of the same id under two state roots never share one.
    pub fn default_cgroup_name(&self) -> String {
        let id = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let h = fnv1a(self.dir.as_os_str().as_encoded_bytes()) as u32;
        format!("{id}-{h:08x}")
    }

    /// Where its sockets are: its directory, or a short directory of their own.
    pub fn socket_dir(&self) -> &Path {
        &self.sockets
    }

    /// Whether the sockets have a directory of their own (made and removed with the sandbox).
    pub fn separate_sockets(&self) -> bool {
        self.sockets != self.dir
    }

    /// An error if even the socket directory is too deep for a Unix socket.
    pub fn check_sockets(&self) -> Result<(), SandboxError> {
        let len = self.sockets.join(LONGEST_SOCKET).as_os_str().len();
        if len > MAX_SOCKET_PATH {
            return Err(SandboxError::PathTooLong {
                path: self.dir.clone(),
                len,
            });
        }
        Ok(())
    }

    pub fn vsock_socket(&self) -> PathBuf {
        self.sockets.join(VSOCK_SOCKET)
    }

    pub fn api_socket(&self) -> PathBuf {
        self.sockets.join(API_SOCKET)
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The share: the host's side and the guest's read-only view.
    pub fn share(&self) -> crate::share::Share {
        crate::share::Share::new(self.dir.join(SHARE_RW_DIR), self.dir.join(SHARE_DIR))
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.join(crate::vmm::CONSOLE_FILE)
    }

    pub fn vmm_log(&self) -> PathBuf {
        self.dir.join(crate::vmm::LOG_FILE)
    }

    /// The record of the network namespace whose taps the cleanup removes.
    pub fn netns_record(&self) -> PathBuf {
        self.dir.join(NETNS_FILE)
    }

    /// The record of the cgroup hull-vmm is started in: how the cleanup finds a VM whose
    /// creator was killed after its start and before its pid was on record.
    pub fn cgroup_record(&self) -> PathBuf {
        self.dir.join(CGROUP_FILE)
    }

    /// Where the sandbox's own network namespace is bind-mounted.
    pub fn own_netns(&self) -> PathBuf {
        self.dir.join(OWN_NETNS)
    }
}

/// A sandbox id under `root` for `name` (a pod's id, which may be long or not a valid sandbox
/// id): `name` itself when it is a valid id whose sockets fit in the sandbox directory, else
/// `h` and a hash of it (CRI's 64-character ids under a deep root do not fit).
pub fn sandbox_name(root: &Path, name: &str) -> String {
    let fits = super::validate_id(name).is_ok() && !Layout::new(root, name).separate_sockets();
    if fits {
        name.to_string()
    } else {
        format!("h{:016x}", fnv1a(name.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cgroups_are_per_sandbox_dir() {
        let a = Layout::new(Path::new("/run/hull"), "web");
        let b = Layout::new(Path::new("/tmp/other-root"), "web");
        let name = a.default_cgroup_name();
        assert!(
            name.starts_with("web-") && name.len() == "web-".len() + 8,
            "{name}"
        );
        assert_eq!(
            name,
            Layout::new(Path::new("/run/hull"), "web").default_cgroup_name()
        );
        assert_ne!(
            name,
            b.default_cgroup_name(),
            "two roots, one id: two cgroups"
        );
    }

    #[test]
    fn socket_dirs_are_short_and_stable() {
        let shallow = Layout::of_dir(Path::new("/run/hull/abc"));
        assert_eq!(shallow.socket_dir(), Path::new("/run/hull/abc"));
        assert!(!shallow.separate_sockets());
        assert_eq!(
            shallow.vsock_socket(),
            Path::new("/run/hull/abc/vsock.sock")
        );
        assert_eq!(shallow.api_socket(), Path::new("/run/hull/abc/api.sock"));
        let deep = PathBuf::from(format!(
            "/var/run/docker/runtime-hull/moby/{}",
            "f".repeat(64)
        ));
        let s = Layout::of_dir(&deep);
        assert!(s.separate_sockets());
        assert!(s.socket_dir().starts_with(SOCKET_ROOT));
        assert_eq!(s, Layout::of_dir(&deep), "the same in every process");
        assert_ne!(
            s.socket_dir(),
            Layout::of_dir(&deep.with_file_name("other")).socket_dir()
        );
        s.check_sockets().unwrap();
        assert!(s.vsock_socket().starts_with(s.socket_dir()));
        assert_eq!(s.state_file(), deep.join("state.json"));
        assert_eq!(s.share().view(), deep.join("shared"));
        assert_eq!(s.share().host_dir(), deep.join("share-rw"));
    }

    #[test]
    fn sandbox_names_fit_socket_paths() {
        let root = Path::new("/run/hull/shim/k8s.io");
        assert_eq!(sandbox_name(root, "pod1"), "pod1");
        let long = "a".repeat(64);
        let deep = PathBuf::from(format!("/run/containerd/{}", "d".repeat(40)));
        let n = sandbox_name(&deep, &long);
        assert!(n.starts_with('h') && n.len() == 17, "{n}");
        assert_eq!(n, sandbox_name(&deep, &long), "stable");
        assert!(!Layout::new(&deep, &n).separate_sockets());
        // Not a valid sandbox id: hashed too.
        let n = sandbox_name(root, "a/b");
        assert!(n.starts_with('h'), "{n}");
    }
}
