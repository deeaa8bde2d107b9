//! VM configuration as plain data: what `hull-vmm --config vm.json` reads and what its command
//! line flags fill. hull-vmm checks a configuration against the host (files, sockets, limits of
//! its device layout) before it creates a VM; nothing here touches the host but
//! [`VmConfig::from_file`], which reads the file it is given.
//!
//! ```json
//! {
//!   "kernel": "/path/vmlinux",
//!   "initrd": "/path/initrd.img",
//!   "cmdline": "console=ttyS0 quiet",
//!   "vcpus": 2,
//!   "memory_mib": 256,
//!   "memory_backing": "anonymous",
//!   "serial": "stdout",
//!   "vsock": { "uds_path": "/run/hull/x/vsock.sock", "guest_cid": 3 },
//!   "fs": [ { "tag": "rootfs", "shared_dir": "/run/hull/x/rootfs", "read_only": false,
//!             "cache": "auto", "xattr": false, "writeback": false } ],
//!   "net": [ { "tap": "hull0", "mac": "02:00:00:00:00:01", "mtu": 1500 } ],
//!   "api_socket": "/run/hull/x/api.sock"
//! }
//! ```
//! Only `kernel` is required. `serial` is `"stdout"`, `"off"`, or a file path.
//!
//! `serial_max_bytes` caps a `serial` file (default [`DEFAULT_SERIAL_MAX_BYTES`], 4 MiB): when
//! the guest's output would take the file past the cap, hull-vmm cuts it to its newest half
//! (the last `serial_max_bytes / 2` bytes, counting the bytes being written) and goes on
//! appending, so the file never exceeds the cap and always ends with the newest output. A guest
//! that prints forever cannot fill the host's disk.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use crate::fs::{CachePolicy, FsConfig};
pub use crate::net::{MacAddr, NetConfig};

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u32 = 32;
/// Least guest memory (MiB): the kernel alone needs tens of MiB.
pub const MIN_MEMORY_MIB: u64 = 64;
/// Most guest memory (MiB).
pub const MAX_MEMORY_MIB: u64 = 64 * 1024;
/// Kernel parameters the VMM always puts first: `reboot=k` makes a guest reboot reach the
/// i8042 reset (how the VMM sees it); `pvpanic_mmio.ioport=0x505` tells the guest kernel where
/// the pvpanic device is (hull's guest kernel patch: there is no ACPI to say so), and the kernel
/// reports a panic there, which is how the VMM tells a panic from a reboot; `panic=-1` makes the
/// panic's end an immediate reset rather than a hang. The user's command line comes after these,
/// so it can override them (at the cost of those exit semantics).
pub const CMDLINE_PREFIX: &str = "reboot=k panic=-1 pvpanic_mmio.ioport=0x505";
/// What the i8042 emulation supports (no mouse port, no multiplexer, no keyboard commands).
pub const CMDLINE_I8042: &str = "i8042.noaux i8042.nomux i8042.dumbkbd i8042.nopnp";

/// The default guest command line: the console on COM1, and `quiet` because every console byte
/// is a VM exit (booting with the full kernel log costs seconds under nested virtualisation);
/// errors and panics still reach the console. Drop `quiet` to see the whole kernel log.
fn default_cmdline() -> String {
    "console=ttyS0 quiet".to_string()
}
fn default_vcpus() -> u32 {
    1
}
fn default_memory_mib() -> u64 {
    256
}
/// Default cap of a serial output file: 4 MiB.
pub const DEFAULT_SERIAL_MAX_BYTES: u64 = 4 << 20;
fn default_serial_max_bytes() -> u64 {
    DEFAULT_SERIAL_MAX_BYTES
}
fn default_cid() -> u64 {
    3
}

/// How guest RAM is backed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryBacking {
    /// A private anonymous mapping, advised to use transparent huge pages.
    #[default]
    Anonymous,
    /// A memfd (so it can later be shared with virtio-fs daemons or saved for snapshots).
    Memfd,
}

impl FromStr for MemoryBacking {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "anonymous" => Ok(MemoryBacking::Anonymous),
            "memfd" => Ok(MemoryBacking::Memfd),
            _ => Err(format!(
                "memory backing must be anonymous or memfd, not '{s}'"
            )),
        }
    }
}

/// How the kernel is entered.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BootProtocolConfig {
    /// PVH when the kernel is an ELF with a PVH note, else the 64-bit Linux boot protocol.
    #[default]
    Auto,
    /// Always the 64-bit Linux boot protocol (an ELF's PVH note is ignored).
    Linux,
}

impl FromStr for BootProtocolConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(BootProtocolConfig::Auto),
            "linux" => Ok(BootProtocolConfig::Linux),
            _ => Err(format!("boot protocol must be auto or linux, not '{s}'")),
        }
    }
}

/// Where the guest console (COM1) goes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum SerialConfig {
    #[default]
    Stdout,
    Off,
    File(PathBuf),
}

impl FromStr for SerialConfig {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stdout" => Ok(SerialConfig::Stdout),
            "off" => Ok(SerialConfig::Off),
            "" => Err("serial must be stdout, off or a file path, not empty".into()),
            path => Ok(SerialConfig::File(PathBuf::from(path))),
        }
    }
}

impl TryFrom<String> for SerialConfig {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<SerialConfig> for String {
    fn from(s: SerialConfig) -> String {
        match s {
            SerialConfig::Stdout => "stdout".into(),
            SerialConfig::Off => "off".into(),
            SerialConfig::File(p) => p.to_string_lossy().into_owned(),
        }
    }
}

/// The virtio-vsock device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The host-side Unix socket (Firecracker-style hybrid vsock).
    pub uds_path: PathBuf,
    /// The guest's context id (3..=0xffff_fffe).
    #[serde(default = "default_cid")]
    pub guest_cid: u64,
}

/// Everything that describes one VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Guest kernel: ELF vmlinux (PVH note preferred) or bzImage.
    pub kernel: PathBuf,
    /// Initramfs (newc cpio, optionally compressed).
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (the VMM adds its own parameters before it, see [`CMDLINE_PREFIX`]).
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    #[serde(default)]
    pub boot_protocol: BootProtocolConfig,
    #[serde(default = "default_vcpus")]
    pub vcpus: u32,
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    #[serde(default)]
    pub memory_backing: MemoryBacking,
    #[serde(default)]
    pub serial: SerialConfig,
    /// Most bytes a `serial` file holds (see the module documentation for what is kept).
    #[serde(default = "default_serial_max_bytes")]
    pub serial_max_bytes: u64,
    #[serde(default)]
    pub vsock: Option<VsockConfig>,
    /// virtio-fs shares, one device each (the guest mounts them with `mount -t virtiofs TAG`).
    #[serde(default)]
    pub fs: Vec<FsConfig>,
    /// virtio-net devices, one each, backed by existing host tap interfaces.
    #[serde(default)]
    pub net: Vec<NetConfig>,
    /// The control API's Unix socket.
    #[serde(default)]
    pub api_socket: Option<PathBuf>,
    /// How hull-vmm confines itself before the guest runs (see [`JailConfig`]).
    #[serde(default)]
    pub jail: JailConfig,
    /// Test hooks on the API socket (`seccomp_probe`): for hull's own tests, never set by the
    /// runtime.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub test_hooks: bool,
    /// A template run: the VM boots as usual, and the API's `snapshot` request writes its
    /// state into this directory (files [`SNAPSHOT_STATE_FILE`] and [`SNAPSHOT_MEMORY_FILE`],
    /// which must not exist yet; hull-vmm creates them before it confines itself) and stops it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_to: Option<PathBuf>,
    /// Start from the snapshot in this directory instead of booting `kernel`: guest memory is
    /// mapped copy-on-write from its memory file, the vCPUs, the interrupt controllers, the
    /// clock and every device resume where the template stopped, with this configuration's
    /// per-VM parts (vsock socket, shares, taps, console, API socket). The snapshot must come
    /// from the same hull-vmm, CPU, vCPU count, memory size and device set; otherwise hull-vmm
    /// refuses it with the reason (and the caller boots instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<PathBuf>,
}

/// The snapshot's state file: vCPUs, VM and devices, checksummed (hull-vmm's `snapshot`).
pub const SNAPSHOT_STATE_FILE: &str = "vmstate";
/// The snapshot's guest memory: every RAM range in guest-physical order, pages that were zero
/// left as holes.
pub const SNAPSHOT_MEMORY_FILE: &str = "memory";

/// Default `max_open_files`: the kernel's default `fs.nr_open`. The passthrough file system
/// keeps one fd per inode the guest knows (as virtiofsd does, whose default is the same).
pub const DEFAULT_MAX_OPEN_FILES: u64 = 1 << 20;

/// How hull-vmm confines itself once the VM is built and before any guest instruction runs.
/// Every part is on by default; turning one off is for debugging (the runtime's
/// `[vmm] jail = false` turns all off).
///
/// - `namespaces`: new mount, IPC and UTS namespaces; the root is pivoted into an empty
///   read-only tmpfs that holds only the socket directories (each at its own path) and a
///   `/proc` (each share is reached through the descriptor its device opened before).
/// - `capabilities`: every capability is dropped (bounding set too) except the ones the FUSE
///   passthrough needs, which only the virtio-fs worker threads keep effective; vCPU threads
///   and the event loop keep none. `no_new_privs` is set.
/// - `seccomp`: an allowlist per thread kind (event loop, vCPU, virtio-fs worker); a system
///   call outside it ends hull-vmm with exit status 5 and the call named in its log.
/// - `max_open_files`: RLIMIT_NOFILE (soft and hard). RLIMIT_CORE is always 0: guest memory
///   never lands in a core file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    #[serde(default = "yes")]
    pub namespaces: bool,
    #[serde(default = "yes")]
    pub capabilities: bool,
    #[serde(default = "yes")]
    pub seccomp: bool,
    #[serde(default = "default_max_open_files")]
    pub max_open_files: u64,
}

fn yes() -> bool {
    true
}

fn default_max_open_files() -> u64 {
    DEFAULT_MAX_OPEN_FILES
}

impl Default for JailConfig {
    fn default() -> JailConfig {
        JailConfig {
            namespaces: true,
            capabilities: true,
            seccomp: true,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
        }
    }
}

impl JailConfig {
    /// Nothing confined (for debugging a VMM problem: `[vmm] jail = false`).
    pub fn off() -> JailConfig {
        JailConfig {
            namespaces: false,
            capabilities: false,
            seccomp: false,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
        }
    }

    /// Whether any part is on.
    pub fn any(&self) -> bool {
        self.namespaces || self.capabilities || self.seccomp
    }
}

/// A configuration file that cannot be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn new(kernel: PathBuf) -> VmConfig {
        VmConfig {
            kernel,
            initrd: None,
            cmdline: default_cmdline(),
            boot_protocol: BootProtocolConfig::default(),
            vcpus: default_vcpus(),
            memory_mib: default_memory_mib(),
            memory_backing: MemoryBacking::default(),
            serial: SerialConfig::default(),
            serial_max_bytes: DEFAULT_SERIAL_MAX_BYTES,
            vsock: None,
            fs: Vec::new(),
            net: Vec::new(),
            api_socket: None,
            jail: JailConfig::default(),
            test_hooks: false,
            snapshot_to: None,
            restore_from: None,
        }
    }

    /// Parses a JSON configuration (unknown fields are errors).
    pub fn from_json(text: &str, path: &Path) -> Result<VmConfig, ConfigFileError> {
        serde_json::from_str(text).map_err(|source| ConfigFileError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads and parses a JSON configuration file.
    pub fn from_file(path: &Path) -> Result<VmConfig, ConfigFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        VmConfig::from_json(&text, path)
    }

    /// Guest memory in bytes.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_mib << 20
    }

    /// Number of virtio-mmio devices this configuration creates.
    pub fn virtio_device_count(&self) -> usize {
        usize::from(self.vsock.is_some()) + self.fs.len() + self.net.len()
    }

    /// The kernel command line without the virtio-mmio device parameters (which the VMM adds
    /// when it places the devices, right after this prefix).
    pub fn cmdline_prefix(&self) -> String {
        format!("{CMDLINE_PREFIX} {CMDLINE_I8042}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_unknown_fields() {
        let p = Path::new("vm.json");
        let c = VmConfig::from_json(
            r#"{"kernel":"/k","vcpus":2,"memory_mib":128,"serial":"/tmp/x.log",
                "vsock":{"uds_path":"/tmp/v.sock"},"memory_backing":"memfd",
                "net":[{"tap":"tap0","mac":"02:00:00:00:00:01"},{"tap":"tap1","mtu":9000}]}"#,
            p,
        )
        .unwrap();
        assert_eq!(c.serial, SerialConfig::File("/tmp/x.log".into()));
        assert_eq!(c.vsock.as_ref().unwrap().guest_cid, 3);
        assert_eq!(c.memory_backing, MemoryBacking::Memfd);
        assert_eq!(c.net.len(), 2);
        assert_eq!(c.net[0].mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert_eq!(c.net[1].mtu, Some(9000));
        assert_eq!(c.virtio_device_count(), 3);
        let back: VmConfig = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let e = VmConfig::from_json(r#"{"kernel":"/k","vcpu":2}"#, p).unwrap_err();
        assert!(e.to_string().contains("unknown field `vcpu`"), "{e}");
        let e = VmConfig::from_json(r#"{"vcpus":2}"#, p).unwrap_err();
        assert!(e.to_string().contains("missing field `kernel`"), "{e}");
        let e = VmConfig::from_json(r#"{"kernel":"/k","serial":""}"#, p).unwrap_err();
        assert!(e.to_string().contains("serial must be"), "{e}");
    }

    #[test]
    fn defaults() {
        let c = VmConfig::new("/k".into());
        assert_eq!((c.vcpus, c.memory_mib), (1, 256));
        assert_eq!(c.serial, SerialConfig::Stdout);
        assert_eq!(c.serial_max_bytes, 4 << 20);
        let p = Path::new("vm.json");
        let capped = VmConfig::from_json(r#"{"kernel":"/k","serial_max_bytes":1000}"#, p);
        assert_eq!(capped.unwrap().serial_max_bytes, 1000);
        assert_eq!(c.memory_bytes(), 256 << 20);
        assert_eq!(c.virtio_device_count(), 0);
        let e = VmConfig::from_file(Path::new("/nonexistent/vm.json")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vm.json"), "{e}");
    }
}
