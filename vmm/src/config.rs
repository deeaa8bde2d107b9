//! Checking a VM configuration against the host before any VM exists. The configuration
//! itself is plain data in the `hull-vmm-api` crate (re-exported here), so that the runtime can
//! build one without linking the VMM; [`Validate::validate`] is hull-vmm's side: files exist, are
//! readable and are what they claim to be, numbers are within limits, socket paths are free,
//! and everything fits the device layout.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

pub use hull_vmm_api::config::*;

use crate::arch::x86_64::layout::{CMDLINE_MAX_SIZE, VIRTIO_MMIO_MAX_DEVICES};
use crate::devices::virtio::fs::FsError;

/// Most bytes of a Unix socket path (sun_path holds 108 including the NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Worst-case length of one `virtio_mmio.device=4K@0xd0000000:23` parameter plus a space.
const VIRTIO_PARAM_MAX_LEN: usize = 36;

/// What is wrong with a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    File(#[from] ConfigFileError),
    #[error("{what} {path}: {source}")]
    Open {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} is not a regular file")]
    NotAFile { what: &'static str, path: PathBuf },
    #[error("kernel {0} is not a kernel image (neither an x86-64 ELF vmlinux nor a bzImage)")]
    NotAKernel(PathBuf),
    #[error("initrd {0} is empty")]
    EmptyInitrd(PathBuf),
    #[error(
        "initrd {path} is {size_mib} MiB, too big for {memory_mib} MiB of guest memory (at most \
         half of it)"
    )]
    InitrdTooBig {
        path: PathBuf,
        size_mib: u64,
        memory_mib: u64,
    },
    #[error("vcpus must be between 1 and {MAX_VCPUS}, got {0}")]
    Vcpus(u32),
    #[error("memory_mib must be between {MIN_MEMORY_MIB} and {MAX_MEMORY_MIB}, got {0}")]
    Memory(u64),
    #[error("{0}")]
    Snapshot(String),
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    #[error(
        "the kernel command line is too long: {len} bytes with the VMM's parameters, at most {}",
        CMDLINE_MAX_SIZE - 1
    )]
    CmdlineTooLong { len: usize },
    #[error("vsock guest_cid must be between 3 and 4294967294, got {0}")]
    Cid(u64),
    #[error("{what} path {path}: {reason}")]
    SocketPath {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("serial output file {path}: {reason}")]
    SerialFile { path: PathBuf, reason: String },
    #[error("virtio-fs: {0}")]
    Fs(#[from] FsError),
    #[error("virtio-fs: tag `{0}` is used by two shares")]
    DuplicateFsTag(String),
    #[error("virtio-net: {0}")]
    Net(#[from] hull_vmm_api::NetSpecError),
    #[error("virtio-net: tap `{0}` is used by two devices")]
    DuplicateTap(String),
    #[error("too many virtio devices: {0} (at most {VIRTIO_MMIO_MAX_DEVICES})")]
    TooManyDevices(usize),
}

fn open_regular(what: &'static str, path: &Path) -> Result<(File, u64), ConfigError> {
    let f = File::open(path).map_err(|source| ConfigError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let md = f.metadata().map_err(|source| ConfigError::Open {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    if !md.is_file() {
        return Err(ConfigError::NotAFile {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok((f, md.len()))
}

/// True when `head` starts an x86-64 ELF or holds a bzImage header.
fn looks_like_kernel(head: &[u8]) -> bool {
    let elf64_x86_64 = head.len() >= 20
        && &head[0..4] == b"\x7fELF"
        && head[4] == 2 // ELFCLASS64
        && head[5] == 1 // little-endian
        && u16::from_le_bytes([head[18], head[19]]) == 62; // EM_X86_64
    let bzimage = head.len() >= 0x206 && &head[0x202..0x206] == b"HdrS";
    elf64_x86_64 || bzimage
}

fn check_socket_path(what: &'static str, path: &Path) -> Result<(), ConfigError> {
    let err = |reason: String| ConfigError::SocketPath {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let len = path.as_os_str().len();
    if len == 0 {
        return Err(err("empty".into()));
    }
    if len > MAX_SOCKET_PATH {
        return Err(err(format!(
            "too long for a Unix socket ({len} bytes, at most {MAX_SOCKET_PATH})"
        )));
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(err(format!(
            "directory {} does not exist",
            parent.display()
        )));
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) => {
            if md.file_type().is_socket() && UnixStream::connect(path).is_ok() {
                Err(err(
                    "already in use: another process is listening on it".into()
                ))
            } else {
                Err(err(
                    "already exists (a stale socket or another file): remove it first".into(),
                ))
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err(e.to_string())),
    }
}

/// hull-vmm's checks of a [`VmConfig`] against the host.
pub trait Validate {
    /// Checks everything that can be checked before creating a VM: files exist, are readable
    /// and are what they claim to be; numbers are within limits; socket paths are free.
    fn validate(&self) -> Result<(), ConfigError>;
}

impl Validate for VmConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if self.snapshot_to.is_some() && self.restore_from.is_some() {
            return Err(ConfigError::Snapshot(
                "snapshot_to and restore_from exclude each other (a template is booted)".into(),
            ));
        }
        if self.snapshot_to.is_some()
            && self
                .net
                .iter()
                .any(|n| n.backend == hull_vmm_api::NetBackend::Vhost)
        {
            return Err(ConfigError::Snapshot(
                "snapshot_to with a NIC on backend vhost: its queue positions are in the host \
                 kernel, out of a snapshot's reach (use backend auto or userspace)"
                    .into(),
            ));
        }
        for (what, dir) in [
            ("snapshot_to", &self.snapshot_to),
            ("restore_from", &self.restore_from),
        ] {
            if let Some(dir) = dir {
                if !std::fs::metadata(dir).is_ok_and(|m| m.is_dir()) {
                    return Err(ConfigError::Snapshot(format!(
                        "{what} {} is not a directory",
                        dir.display()
                    )));
                }
            }
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }

        let (mut kernel, _) = open_regular("kernel", &self.kernel)?;
        let mut head = Vec::with_capacity(0x210);
        (&mut kernel)
            .take(0x210)
            .read_to_end(&mut head)
            .map_err(|source| ConfigError::Open {
                what: "kernel",
                path: self.kernel.clone(),
                source,
            })?;
        if !looks_like_kernel(&head) {
            return Err(ConfigError::NotAKernel(self.kernel.clone()));
        }

        if let Some(initrd) = &self.initrd {
            let (_, size) = open_regular("initrd", initrd)?;
            if size == 0 {
                return Err(ConfigError::EmptyInitrd(initrd.clone()));
            }
            if size > self.memory_bytes() / 2 {
                return Err(ConfigError::InitrdTooBig {
                    path: initrd.clone(),
                    size_mib: size >> 20,
                    memory_mib: self.memory_mib,
                });
            }
        }

        if self.cmdline.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        let len = self.cmdline_prefix().len()
            + 1
            + self.virtio_device_count() * VIRTIO_PARAM_MAX_LEN
            + self.cmdline.len();
        if len >= CMDLINE_MAX_SIZE {
            return Err(ConfigError::CmdlineTooLong { len });
        }
        if self.virtio_device_count() > VIRTIO_MMIO_MAX_DEVICES {
            return Err(ConfigError::TooManyDevices(self.virtio_device_count()));
        }
        for (i, share) in self.fs.iter().enumerate() {
            share.validate().map_err(FsError::from)?;
            if self.fs[..i].iter().any(|s| s.tag == share.tag) {
                return Err(ConfigError::DuplicateFsTag(share.tag.clone()));
            }
            match std::fs::metadata(&share.shared_dir) {
                Ok(md) if md.is_dir() => {}
                Ok(_) => return Err(FsError::NotADirectory(share.shared_dir.clone()).into()),
                Err(source) => {
                    return Err(FsError::SharedDir {
                        path: share.shared_dir.clone(),
                        source,
                    }
                    .into())
                }
            }
        }

        for (i, net) in self.net.iter().enumerate() {
            net.validate()?;
            if self.net[..i].iter().any(|n| n.tap == net.tap) {
                return Err(ConfigError::DuplicateTap(net.tap.clone()));
            }
        }

        if let Some(v) = &self.vsock {
            if !(3..=0xffff_fffe).contains(&v.guest_cid) {
                return Err(ConfigError::Cid(v.guest_cid));
            }
            check_socket_path("vsock uds", &v.uds_path)?;
        }
        if let Some(api) = &self.api_socket {
            check_socket_path("api socket", api)?;
            if self.vsock.as_ref().is_some_and(|v| &v.uds_path == api) {
                return Err(ConfigError::SocketPath {
                    what: "api socket",
                    path: api.clone(),
                    reason: "is also the vsock uds path".into(),
                });
            }
        }
        if let SerialConfig::File(path) = &self.serial {
            let err = |reason: String| ConfigError::SerialFile {
                path: path.clone(),
                reason,
            };
            match std::fs::metadata(path) {
                Ok(md) if md.is_dir() => return Err(err("is a directory".into())),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let parent = match path.parent() {
                        Some(p) if !p.as_os_str().is_empty() => p,
                        _ => Path::new("."),
                    };
                    if !parent.is_dir() {
                        return Err(err(format!(
                            "directory {} does not exist",
                            parent.display()
                        )));
                    }
                }
                Err(e) => return Err(err(e.to_string())),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    struct Tmp(PathBuf);
    impl Tmp {
        fn new(name: &str) -> Tmp {
            let p =
                std::env::temp_dir().join(format!("hull-vmm-config-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Tmp(p)
        }
        fn file(&self, name: &str, contents: &[u8]) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, contents).unwrap();
            p
        }
    }
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fake_elf() -> Vec<u8> {
        let mut v = vec![0u8; 64];
        v[0..4].copy_from_slice(b"\x7fELF");
        v[4] = 2;
        v[5] = 1;
        v[18] = 62;
        v
    }

    fn good(t: &Tmp) -> VmConfig {
        VmConfig::new(t.file("vmlinux", &fake_elf()))
    }

    #[test]
    fn defaults_validate() {
        let t = Tmp::new("defaults");
        let c = good(&t);
        c.validate().unwrap();
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.memory_mib, 256);
        assert_eq!(c.serial, SerialConfig::Stdout);
    }

    #[test]
    fn fs_shares_are_checked() {
        let t = Tmp::new("fs");
        let share = t.0.join("share");
        std::fs::create_dir(&share).unwrap();
        let c = VmConfig::from_json(
            &format!(
                r#"{{"kernel":"{}","fs":[{{"tag":"a","shared_dir":"{}","read_only":true,
                    "cache":"never"}},{{"tag":"b","shared_dir":"{}"}}]}}"#,
                t.file("vmlinux", &fake_elf()).display(),
                share.display(),
                share.display()
            ),
            Path::new("vm.json"),
        )
        .unwrap();
        assert_eq!(c.fs.len(), 2);
        assert!(c.fs[0].read_only && c.fs[0].cache == CachePolicy::Never);
        assert_eq!(c.virtio_device_count(), 2);
        c.validate().unwrap();

        let mut d = c.clone();
        d.fs[1].tag = "a".into();
        assert!(d.validate().unwrap_err().to_string().contains("tag `a`"));
        let mut d = c.clone();
        d.fs[1].shared_dir = t.0.join("missing");
        assert!(d.validate().unwrap_err().to_string().contains("missing"));
        let mut d = c.clone();
        d.fs[1].shared_dir = t.file("plain", b"x");
        assert!(d
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
        let mut d = c.clone();
        d.fs[0].tag = "x".repeat(37);
        assert!(d.validate().unwrap_err().to_string().contains("36 bytes"));
        let mut d = c;
        d.fs = (0..VIRTIO_MMIO_MAX_DEVICES + 1)
            .map(|i| FsConfig::new(format!("t{i}"), &share))
            .collect();
        assert!(d.validate().unwrap_err().to_string().contains("too many"));
    }

    #[test]
    fn net_devices_are_checked() {
        let t = Tmp::new("net");
        let mut c = good(&t);
        c.net = vec![NetConfig::new("tap0"), NetConfig::new("tap1")];
        assert_eq!(c.virtio_device_count(), 2);
        c.validate().unwrap();
        c.net[1].tap = "tap0".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("tap `tap0` is used by two devices"), "{e}");
        c.net[1] = NetConfig {
            mtu: Some(10),
            ..NetConfig::new("tap1")
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("MTU 10"), "{e}");
        c.net[1] = NetConfig::new("");
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("tap name"), "{e}");
        // A template run cannot have a NIC on vhost-net (auto is hull-vmm's own device there).
        c.net = vec![NetConfig::new("tap0")];
        c.snapshot_to = Some(t.0.clone());
        c.validate().unwrap();
        c.net[0].backend = hull_vmm_api::NetBackend::Vhost;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("snapshot_to with a NIC on backend vhost"), "{e}");
    }

    #[test]
    fn kernel_problems_are_named() {
        let t = Tmp::new("kernel");
        let mut c = good(&t);
        c.kernel = t.0.join("missing");
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("missing") && e.contains("No such file"), "{e}");
        c.kernel = t.0.clone();
        assert!(matches!(c.validate(), Err(ConfigError::NotAFile { .. })));
        c.kernel = t.file("notes.txt", b"hello, I am not a kernel");
        assert!(matches!(c.validate(), Err(ConfigError::NotAKernel(_))));
        let mut bz = vec![0u8; 0x300];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        c.kernel = t.file("bzImage", &bz);
        c.validate().unwrap();
    }

    #[test]
    fn limits() {
        let t = Tmp::new("limits");
        let mut c = good(&t);
        for v in [0, MAX_VCPUS + 1, u32::MAX] {
            c.vcpus = v;
            assert!(matches!(c.validate(), Err(ConfigError::Vcpus(_))), "{v}");
        }
        c.vcpus = MAX_VCPUS;
        c.validate().unwrap();
        for m in [0, MIN_MEMORY_MIB - 1, MAX_MEMORY_MIB + 1, u64::MAX] {
            c.memory_mib = m;
            assert!(matches!(c.validate(), Err(ConfigError::Memory(_))), "{m}");
        }
        c.memory_mib = MIN_MEMORY_MIB;
        c.validate().unwrap();
    }

    #[test]
    fn initrd_checks() {
        let t = Tmp::new("initrd");
        let mut c = good(&t);
        c.initrd = Some(t.0.join("nope.img"));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Open { what: "initrd", .. })
        ));
        c.initrd = Some(t.file("empty.img", b""));
        assert!(matches!(c.validate(), Err(ConfigError::EmptyInitrd(_))));
        c.initrd = Some(t.file("ok.img", b"070701"));
        c.validate().unwrap();
        let big = t.0.join("big.img");
        File::create(&big).unwrap().set_len(200 << 20).unwrap();
        c.initrd = Some(big);
        c.memory_mib = 256;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::InitrdTooBig { .. })
        ));
    }

    #[test]
    fn cmdline_checks() {
        let t = Tmp::new("cmdline");
        let mut c = good(&t);
        c.cmdline = "a\0b".into();
        assert!(matches!(c.validate(), Err(ConfigError::CmdlineNul)));
        c.cmdline = "x".repeat(CMDLINE_MAX_SIZE);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::CmdlineTooLong { .. })
        ));
    }

    #[test]
    fn socket_paths() {
        let t = Tmp::new("sockets");
        let mut c = good(&t);
        c.api_socket = Some(t.0.join("no-such-dir/api.sock"));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("does not exist"), "{e}");
        c.api_socket = Some(t.0.join("x".repeat(120)));
        assert!(c.validate().unwrap_err().to_string().contains("too long"));
        let live = t.0.join("live.sock");
        let _l = UnixListener::bind(&live).unwrap();
        c.api_socket = Some(live.clone());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("already in use"), "{e}");
        c.api_socket = Some(t.file("stale.sock", b""));
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        c.api_socket = Some(t.0.join("api.sock"));
        c.validate().unwrap();
        c.vsock = Some(VsockConfig {
            uds_path: t.0.join("api.sock"),
            guest_cid: 3,
        });
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("also the vsock"));
        c.vsock = Some(VsockConfig {
            uds_path: live,
            guest_cid: 3,
        });
        assert!(c.validate().unwrap_err().to_string().contains("vsock uds"));
        for cid in [0, 1, 2, 0xffff_ffff, u64::MAX] {
            c.vsock = Some(VsockConfig {
                uds_path: t.0.join("v.sock"),
                guest_cid: cid,
            });
            assert!(matches!(c.validate(), Err(ConfigError::Cid(_))), "{cid}");
        }
    }

    #[test]
    fn serial_file_checks() {
        let t = Tmp::new("serial");
        let mut c = good(&t);
        c.serial = SerialConfig::File(t.0.clone());
        assert!(c.validate().unwrap_err().to_string().contains("directory"));
        c.serial = SerialConfig::File(t.0.join("nodir/console.log"));
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("does not exist"));
        c.serial = SerialConfig::File(t.0.join("console.log"));
        c.validate().unwrap();
    }
}
