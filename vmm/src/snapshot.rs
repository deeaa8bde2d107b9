//! Snapshots: a template run writes its VM's state and memory (`VmConfig::snapshot_to`, the
//! API's `snapshot`); any number of VMs then start from it (`VmConfig::restore_from`) instead of
//! booting.
//!
//! Two files in one directory:
//! - `vmstate` ([`SNAPSHOT_STATE_FILE`]): every vCPU's KVM state, the VM's (PICs, IOAPIC, PIT,
//!   kvmclock), the legacy devices' and every virtio transport's and device's, as JSON inside a
//!   frame: magic `HULLSNAP`, the format version ([`FORMAT_VERSION`], little-endian u32), the
//!   payload's length (u64), the payload, and a CRC-32 of everything before it. JSON because the
//!   state is small (about 100 KiB, most of it the XSAVE areas), parsing it costs well under a
//!   millisecond, `jq` reads it, and serde_json is already hull-vmm's; the explicit version and
//!   the checksum are what make a stale or damaged file an error instead of a broken guest.
//! - `memory` ([`SNAPSHOT_MEMORY_FILE`]): guest RAM, every range in guest-physical order, zero
//!   pages as holes. A restore maps it `MAP_PRIVATE`: the VMs restored from one template share
//!   every page none of them wrote (see `vstate::vm::map_snapshot_memory`). Its size is checked;
//!   its contents are the template's own output, kept where only root writes (the runtime's
//!   template directory).
//!
//! What a restored VM does not keep: connections (vsock resets its transport, telling the guest
//! so), a tap frame in flight, and the console's file (the new VM writes its own). A virtio-fs
//! share is snapshotted only before the guest's first request (see `Fs::queue_states`).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use hull_vmm_api::config::{SNAPSHOT_MEMORY_FILE, SNAPSHOT_STATE_FILE};

use crate::devices::legacy::i8042::I8042Snapshot;
use crate::devices::legacy::serial::SerialSnapshot;
use crate::devices::virtio::mmio::TransportState;
use crate::vstate::vcpu::VcpuState;
use crate::vstate::vm::VmState;

/// The state file's format version: bumped whenever what it holds changes meaning.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"HULLSNAP";
const HEADER: usize = 8 + 4 + 8;
const TRAILER: usize = 4;
/// The largest state file read (a VM of 32 vCPUs needs under 1 MiB).
pub const MAX_STATE_BYTES: u64 = 16 << 20;

/// Why a snapshot cannot be written or used.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Invalid { path: PathBuf, what: String },
    #[error(
        "{path}: format version {found}, this hull-vmm reads version {FORMAT_VERSION} (a \
         snapshot from another hull-vmm)"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: checksum mismatch (the file is damaged)")]
    Checksum { path: PathBuf },
    #[error("the snapshot does not fit this VM: {0}")]
    Mismatch(String),
}

/// What the host a snapshot was taken on looked like to KVM: a restore on another CPU model
/// (whose supported CPUID differs) is refused, as the guest kernel chose its code paths for the
/// template's CPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostIdentity {
    /// CPUID leaf 0's vendor string.
    pub cpu_vendor: String,
    /// CPUID leaf 1's EAX (family, model, stepping).
    pub cpu_signature: u32,
    /// CRC-32 of the feature words of KVM_GET_SUPPORTED_CPUID ([`FEATURE_WORDS`]): what
    /// the CPU and KVM offer, without what differs from one host CPU to the next (APIC ids).
    pub cpu_features_crc: u32,
}

/// The CPUID words that say what a guest may use: (leaf, subleaf, registers as a mask of
/// EAX=1, EBX=2, ECX=4, EDX=8). Leaf 1's EBX (the APIC id of the CPU that asked) and the
/// topology leaves differ between the host's CPUs and are left out.
pub const FEATURE_WORDS: &[(u32, u32, u8)] = &[
    (0x1, 0, 4 | 8),
    (0x7, 0, 2 | 4 | 8),
    (0x7, 1, 1),
    (0xd, 0, 1 | 8),
    (0xd, 1, 1),
    (0x8000_0001, 0, 4 | 8),
    (0x8000_0008, 0, 1),
];

impl HostIdentity {
    pub fn from_supported_cpuid(entries: &[kvm_bindings::kvm_cpuid_entry2]) -> HostIdentity {
        let leaf = |f: u32| entries.iter().find(|e| e.function == f && e.index == 0);
        let cpu_vendor = leaf(0)
            .map(|e| {
                let bytes: Vec<u8> = [e.ebx, e.edx, e.ecx]
                    .iter()
                    .flat_map(|r| r.to_le_bytes())
                    .collect();
                String::from_utf8_lossy(&bytes).into_owned()
            })
            .unwrap_or_default();
        let mut crc = crc32fast::Hasher::new();
        for &(function, index, regs) in FEATURE_WORDS {
            let e = entries
                .iter()
                .find(|e| e.function == function && e.index == index);
            let words = e.map_or([0; 4], |e| [e.eax, e.ebx, e.ecx, e.edx]);
            crc.update(&function.to_le_bytes());
            crc.update(&index.to_le_bytes());
            for (i, w) in words.iter().enumerate() {
                if regs & (1 << i) != 0 {
                    crc.update(&w.to_le_bytes());
                }
            }
        }
        HostIdentity {
            cpu_vendor,
            cpu_signature: leaf(1).map_or(0, |e| e.eax),
            cpu_features_crc: crc.finalize(),
        }
    }
}

/// Everything a snapshot's state file holds.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmSnapshot {
    /// The hull-vmm that wrote it (`CARGO_PKG_VERSION`).
    pub vmm_version: String,
    pub host: HostIdentity,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub vm: VmState,
    pub vcpu_states: Vec<VcpuState>,
    pub serial: SerialSnapshot,
    pub i8042: I8042Snapshot,
    /// The virtio-mmio transports in slot order (vsock, then the shares, then the NICs).
    pub devices: Vec<TransportState>,
}

/// Frames `payload` (see the module documentation).
pub fn encode(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len() + TRAILER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// The payload of a framed state file, or why it is not one.
pub fn decode<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a [u8], SnapshotError> {
    let invalid = |what: String| SnapshotError::Invalid {
        path: path.to_path_buf(),
        what,
    };
    if bytes.len() < HEADER + TRAILER || &bytes[..8] != MAGIC {
        return Err(invalid(
            "not a hull-vmm snapshot (no HULLSNAP header)".into(),
        ));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if version != FORMAT_VERSION {
        return Err(SnapshotError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().unwrap_or_default());
    let expected = (HEADER + TRAILER) as u64 + len.min(u64::MAX - 64);
    if bytes.len() as u64 != expected {
        return Err(invalid(format!(
            "{} bytes, its header says {expected} (truncated or extended)",
            bytes.len()
        )));
    }
    let body = bytes.len() - TRAILER;
    let stored = u32::from_le_bytes(bytes[body..].try_into().unwrap_or_default());
    if crc32fast::hash(&bytes[..body]) != stored {
        return Err(SnapshotError::Checksum {
            path: path.to_path_buf(),
        });
    }
    Ok(&bytes[HEADER..body])
}

/// The files a template run writes, created (empty, mode 0600, never replacing a file) before
/// hull-vmm confines itself: the jailed event loop writes through these descriptors and opens
/// nothing.
pub struct SnapshotTarget {
    pub dir: PathBuf,
    pub state: File,
    pub memory: File,
}

impl SnapshotTarget {
    pub fn create(dir: &Path) -> Result<SnapshotTarget, SnapshotError> {
        let create = |name: &str| {
            let path = dir.join(name);
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(&path)
                .map_err(|source| SnapshotError::Io { path, source })
        };
        Ok(SnapshotTarget {
            dir: dir.to_path_buf(),
            state: create(SNAPSHOT_STATE_FILE)?,
            memory: create(SNAPSHOT_MEMORY_FILE)?,
        })
    }

    /// Writes the state file (the memory file is written by `vm::save_memory`).
    pub fn write_state(&self, snapshot: &VmSnapshot) -> Result<u64, SnapshotError> {
        let path = self.dir.join(SNAPSHOT_STATE_FILE);
        let io = |source| SnapshotError::Io {
            path: path.clone(),
            source,
        };
        let payload = serde_json::to_vec(snapshot).map_err(|e| SnapshotError::Invalid {
            path: path.clone(),
            what: e.to_string(),
        })?;
        let framed = encode(&payload);
        self.state.set_len(0).map_err(io)?;
        self.state.write_all_at(&framed, 0).map_err(io)?;
        self.state.sync_all().map_err(io)?;
        Ok(framed.len() as u64)
    }
}

/// A snapshot read for a restore: its state, and its memory file open for mapping.
pub struct LoadedSnapshot {
    pub state: VmSnapshot,
    pub memory: File,
}

/// Reads and checks `dir`'s snapshot: framing, version, checksum, and that it was written by
/// this hull-vmm for `vcpus` vCPUs and `memory_mib` MiB. (The host's CPU and the device set are
/// checked where they are known: the builder and each transport.)
pub fn load(dir: &Path, vcpus: u32, memory_mib: u64) -> Result<LoadedSnapshot, SnapshotError> {
    let open = |name: &str| {
        let path = dir.join(name);
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|source| SnapshotError::Io { path, source })
    };
    let state_path = dir.join(SNAPSHOT_STATE_FILE);
    let state_file = open(SNAPSHOT_STATE_FILE)?;
    let io = |source| SnapshotError::Io {
        path: state_path.clone(),
        source,
    };
    let len = state_file.metadata().map_err(io)?.len();
    if len > MAX_STATE_BYTES {
        return Err(SnapshotError::Invalid {
            path: state_path,
            what: format!("{len} bytes, more than a state file holds ({MAX_STATE_BYTES})"),
        });
    }
    let mut bytes = vec![0u8; len as usize];
    state_file.read_exact_at(&mut bytes, 0).map_err(io)?;
    let payload = decode(&state_path, &bytes)?;
    let state: VmSnapshot =
        serde_json::from_slice(payload).map_err(|e| SnapshotError::Invalid {
            path: state_path.clone(),
            what: e.to_string(),
        })?;
    let me = env!("CARGO_PKG_VERSION");
    if state.vmm_version != me {
        return Err(SnapshotError::Mismatch(format!(
            "written by hull-vmm {}, this is {me}",
            state.vmm_version
        )));
    }
    if state.vcpus != vcpus || state.vcpu_states.len() != vcpus as usize {
        return Err(SnapshotError::Mismatch(format!(
            "{} vCPUs in the snapshot, {vcpus} configured",
            state.vcpus
        )));
    }
    if state.memory_mib != memory_mib {
        return Err(SnapshotError::Mismatch(format!(
            "{} MiB of memory in the snapshot, {memory_mib} configured",
            state.memory_mib
        )));
    }
    Ok(LoadedSnapshot {
        state,
        memory: open(SNAPSHOT_MEMORY_FILE)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_round_trips_and_any_damage_is_named() {
        let p = Path::new("vmstate");
        let framed = encode(b"{\"x\":1}");
        assert_eq!(decode(p, &framed).unwrap(), b"{\"x\":1}");

        // Every single-bit flip anywhere is caught, by the header checks or the checksum.
        for i in 0..framed.len() {
            for bit in 0..8 {
                let mut f = framed.clone();
                f[i] ^= 1 << bit;
                assert!(
                    decode(p, &f).is_err(),
                    "flip at byte {i} bit {bit} went unnoticed"
                );
            }
        }
        let mut flipped = framed.clone();
        flipped[HEADER + 2] ^= 4;
        assert!(matches!(
            decode(p, &flipped),
            Err(SnapshotError::Checksum { .. })
        ));
        let e = decode(p, &framed[..framed.len() - 1]).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let mut longer = framed.clone();
        longer.push(0);
        assert!(decode(p, &longer).is_err());
        let e = decode(p, b"not a snapshot at all, really").unwrap_err();
        assert!(e.to_string().contains("HULLSNAP"), "{e}");
        let mut v2 = framed.clone();
        v2[8] = 2;
        let e = decode(p, &v2).unwrap_err();
        assert!(e.to_string().contains("format version 2"), "{e}");
        // A length field that would overflow is an error, not a panic.
        let mut huge = framed;
        huge[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(p, &huge).is_err());
    }

    #[test]
    fn the_host_identity_names_the_cpu() {
        let e = |function, eax, ebx, ecx, edx| kvm_bindings::kvm_cpuid_entry2 {
            function,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        // "AuthenticAMD" as CPUID returns it: EBX "Auth", EDX "enti", ECX "cAMD".
        let a = [
            e(0, 0x10, 0x6874_7541, 0x444d_4163, 0x6974_6e65),
            e(1, 0x00a2_0f12, 0, 0, 0),
        ];
        let id = HostIdentity::from_supported_cpuid(&a);
        assert_eq!(id.cpu_vendor, "AuthenticAMD");
        assert_eq!(id.cpu_signature, 0x00a2_0f12);
        let mut b = a;
        b[1].ecx = 1;
        assert_ne!(
            HostIdentity::from_supported_cpuid(&b),
            id,
            "a feature bit counts"
        );
        let mut c = a;
        c[1].ebx = 0x0100_0800;
        assert_eq!(
            HostIdentity::from_supported_cpuid(&c),
            id,
            "the asking CPU's APIC id does not"
        );
    }

    #[test]
    fn a_template_run_never_replaces_a_file() {
        let dir = std::env::temp_dir().join(format!("hull-snap-target-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = SnapshotTarget::create(&dir).unwrap();
        drop(t);
        let e = SnapshotTarget::create(&dir).err().unwrap();
        assert!(e.to_string().contains(SNAPSHOT_STATE_FILE), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
        let e = load(&dir, 1, 256).err().unwrap();
        assert!(e.to_string().contains("vmstate"), "{e}");
    }
}
