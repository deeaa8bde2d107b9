//! The KVM VM: guest memory, the in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, CpuId, KVM_MAX_CPUID_ENTRIES,
    KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use vm_memory::mmap::MmapRegion;
use vm_memory::{FileOffset, GuestAddress, GuestMemory as _, GuestMemoryRegion, GuestRegionMmap};

use crate::arch::x86_64::cpuid::HostFeatures;
use crate::arch::x86_64::layout;
use crate::config::MemoryBacking;
use crate::devices::virtio::GuestMemory;

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not supported (need 12)")]
    ApiVersion(i32),
    #[error("KVM lacks a capability hull-vmm needs: {0:?}")]
    MissingCap(Cap),
    #[error("cannot create the VM: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("{what} failed: {source}")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM supports at most {max} vCPUs, the VM asks for {asked}")]
    TooManyVcpus { max: usize, asked: u32 },
    #[error("cannot allocate {size_mib} MiB of guest memory: {reason}")]
    Memory { size_mib: u64, reason: String },
}

/// Allocates guest RAM (see `layout::ram_ranges`), as a private anonymous mapping or on a
/// memfd (shared, so that the memfd can be handed to another process).
///
/// The anonymous mapping is private, not shared: a shared anonymous mapping is shmem, which
/// faults in 4 KiB pages (transparent huge pages are off for shmem by default), so every first
/// guest touch of a page costs a host page fault. Private anonymous memory is advised
/// MADV_HUGEPAGE (as QEMU and Cloud Hypervisor do), so most of guest RAM is faulted in 2 MiB at
/// a time; where the host has THP disabled the advice is ignored.
pub fn create_guest_memory(mem_size: u64, backing: MemoryBacking) -> Result<GuestMemory, VmError> {
    let err = |reason: String| VmError::Memory {
        size_mib: mem_size >> 20,
        reason,
    };
    let ranges = layout::ram_ranges(mem_size);
    let memfd = match backing {
        MemoryBacking::Anonymous => None,
        MemoryBacking::Memfd => {
            let name = CString::new("hull-guest-ram").map_err(|e| err(e.to_string()))?;
            // SAFETY: `name` is a valid NUL-terminated string; the return value is checked.
            let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(err(format!(
                    "memfd_create: {}",
                    std::io::Error::last_os_error()
                )));
            }
            // SAFETY: `fd` was just returned by memfd_create and nothing else owns it.
            let file = unsafe { File::from_raw_fd(fd) };
            file.set_len(mem_size)
                .map_err(|e| err(format!("sizing the memfd: {e}")))?;
            Some(file)
        }
    };
    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    for (start, size) in ranges {
        let size_usize = usize::try_from(size).map_err(|e| err(e.to_string()))?;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let mapping = match &memfd {
            Some(f) => {
                let fo =
                    FileOffset::new(f.try_clone().map_err(|e| err(e.to_string()))?, file_offset);
                MmapRegion::<()>::build(
                    Some(fo),
                    size_usize,
                    prot,
                    libc::MAP_SHARED | libc::MAP_NORESERVE,
                )
            }
            None => MmapRegion::<()>::build(
                None,
                size_usize,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            ),
        }
        .map_err(|e| err(e.to_string()))?;
        advise_hugepages(&mapping);
        file_offset += size;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| err("region wraps the address space".into()))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(|e| err(e.to_string()))
}

/// Asks for transparent huge pages on `mapping` (a hint: failure only costs speed).
fn advise_hugepages(mapping: &MmapRegion<()>) {
    // SAFETY: the range is exactly the live mapping owned by `mapping`; MADV_HUGEPAGE changes
    // no contents and no protection.
    let r = unsafe {
        libc::madvise(
            mapping.as_ptr().cast::<libc::c_void>(),
            mapping.size(),
            libc::MADV_HUGEPAGE,
        )
    };
    if r != 0 {
        tracing::debug!(
            "MADV_HUGEPAGE on guest RAM: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The VM and the KVM handle it came from.
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
}

impl Vm {
    /// Creates a VM with an in-kernel irqchip and PIT.
    pub fn new(vcpus: u32) -> Result<Vm, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let v = kvm.get_api_version();
        if v != 12 {
            return Err(VmError::ApiVersion(v));
        }
        for cap in [
            Cap::Irqchip,
            Cap::UserMemory,
            Cap::Ioeventfd,
            Cap::Irqfd,
            Cap::Pit2,
            Cap::SetTssAddr,
            Cap::ImmediateExit,
        ] {
            if !kvm.check_extension(cap) {
                return Err(VmError::MissingCap(cap));
            }
        }
        let max = kvm.get_max_vcpus();
        if vcpus as usize > max {
            return Err(VmError::TooManyVcpus { max, asked: vcpus });
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let k = |what: &'static str| move |source| VmError::Kvm { what, source };
        fd.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
            .map_err(k("KVM_SET_TSS_ADDR"))?;
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP_ADDRESS)
            .map_err(k("KVM_SET_IDENTITY_MAP_ADDR"))?;
        fd.create_irq_chip().map_err(k("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(k("KVM_CREATE_PIT2"))?;
        Ok(Vm { kvm, fd })
    }

    /// Makes `mem` the guest's physical memory.
    pub fn register_memory(&self, mem: &GuestMemory) -> Result<(), VmError> {
        for (slot, region) in mem.iter().enumerate() {
            let r = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
            };
            // SAFETY: the region is a live mapping of `memory_size` bytes owned by `mem`, which
            // outlives the VM (the VMM keeps it until the VM fd is closed), and the slots do not
            // overlap (ram_ranges gives disjoint ranges).
            unsafe { self.fd.set_user_memory_region(r) }.map_err(|source| VmError::Kvm {
                what: "KVM_SET_USER_MEMORY_REGION",
                source,
            })?;
        }
        Ok(())
    }

    /// The CPUID leaves KVM can give a guest.
    pub fn supported_cpuid(&self) -> Result<CpuId, VmError> {
        self.kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|source| VmError::Kvm {
                what: "KVM_GET_SUPPORTED_CPUID",
                source,
            })
    }

    /// What KVM offers that KVM_GET_SUPPORTED_CPUID does not show.
    pub fn host_features(&self) -> HostFeatures {
        HostFeatures {
            tsc_deadline: self.kvm.check_extension(Cap::TscDeadlineTimer),
        }
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn memory_backings() {
        for backing in [MemoryBacking::Anonymous, MemoryBacking::Memfd] {
            let mem = create_guest_memory(64 << 20, backing).unwrap();
            assert_eq!(mem.num_regions(), 1);
            mem.write_obj(0x1234u32, GuestAddress(0x1000)).unwrap();
            assert_eq!(mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(), 0x1234);
            assert!(mem.write_obj(1u8, GuestAddress(64 << 20)).is_err());
        }
    }
}
