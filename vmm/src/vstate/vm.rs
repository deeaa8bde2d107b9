//! The KVM VM: guest memory, the in-kernel irqchip (PIC + IOAPIC + LAPICs) and PIT.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_config, kvm_pit_state2, kvm_userspace_memory_region,
    CpuId, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
    KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Cap, Kvm, VmFd};
use serde::{Deserialize, Serialize};
use vm_memory::mmap::{MmapRegion, MmapRegionBuilder};
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemory as _, GuestMemoryRegion, GuestRegionMmap,
};

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
    #[error("snapshot memory file: {0}")]
    SnapshotMemory(String),
}

/// What KVM holds of the VM beside its vCPUs: the two PICs, the IOAPIC, the PIT and the
/// kvmclock (Firecracker's `VmState`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

/// Writes guest RAM to `file` (empty, opened for writing): every range in guest-physical
/// order, each 4 KiB page that is all zero left as a hole, so the file takes on disk what the
/// guest has written and a restore maps the holes as zero pages. Returns the bytes written.
pub fn save_memory(mem: &GuestMemory, file: &File) -> Result<u64, VmError> {
    use std::os::unix::fs::FileExt;
    use vm_memory::Bytes;
    let err = |e: String| VmError::SnapshotMemory(format!("writing: {e}"));
    const PAGE: usize = 4096;
    const CHUNK: usize = 2 << 20;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total).map_err(|e| err(e.to_string()))?;
    let mut buf = vec![0u8; CHUNK];
    let mut file_offset = 0u64;
    let mut written = 0u64;
    for region in mem.iter() {
        let mut done = 0u64;
        while done < region.len() {
            let n = usize::try_from((region.len() - done).min(CHUNK as u64))
                .map_err(|e| err(e.to_string()))?;
            // Copied out through vm-memory (volatile accesses): guest memory is shared with
            // the guest and the devices, never borrowed as a plain slice.
            mem.read_slice(&mut buf[..n], region.start_addr().unchecked_add(done))
                .map_err(|e| err(e.to_string()))?;
            let is_zero = |p: usize| buf[p..(p + PAGE).min(n)].iter().all(|&b| b == 0);
            let mut page = 0;
            while page < n {
                if is_zero(page) {
                    page += PAGE;
                    continue;
                }
                let start = page;
                while page < n && !is_zero(page) {
                    page += PAGE;
                }
                let end = page.min(n);
                file.write_all_at(&buf[start..end], file_offset + done + start as u64)
                    .map_err(|e| err(e.to_string()))?;
                written += (end - start) as u64;
            }
            done += n as u64;
        }
        file_offset += region.len();
    }
    file.sync_all().map_err(|e| err(e.to_string()))?;
    Ok(written)
}

/// Maps guest RAM (`mem_size` bytes, laid out as `layout::ram_ranges`) copy-on-write from a
/// snapshot's memory file: every VM restored from one file shares the pages none of them has
/// written (the host's page cache), and a write makes a private copy for that VM alone.
pub fn map_snapshot_memory(mem_size: u64, file: &File) -> Result<GuestMemory, VmError> {
    let err = |reason: String| VmError::SnapshotMemory(reason);
    let ranges = layout::ram_ranges(mem_size);
    let total: u64 = ranges.iter().map(|&(_, size)| size).sum();
    let len = file
        .metadata()
        .map_err(|e| err(format!("stat: {e}")))?
        .len();
    if len != total {
        return Err(err(format!(
            "{len} bytes, the snapshot's guest RAM is {total} (a truncated or foreign file)"
        )));
    }
    let mut regions = Vec::new();
    let mut file_offset = 0u64;
    for (start, size) in ranges {
        let size_usize = usize::try_from(size).map_err(|e| err(e.to_string()))?;
        let fo = FileOffset::new(
            file.try_clone().map_err(|e| err(e.to_string()))?,
            file_offset,
        );
        let mapping = map_aligned(
            size_usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            Some(fo),
        )
        .map_err(err)?;
        file_offset += size;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| err("region wraps the address space".into()))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(|e| err(e.to_string()))
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
        let (flags, fo) = match &memfd {
            Some(f) => (
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                Some(FileOffset::new(
                    f.try_clone().map_err(|e| err(e.to_string()))?,
                    file_offset,
                )),
            ),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                None,
            ),
        };
        let mapping = map_aligned(size_usize, prot, flags, fo).map_err(err)?;
        advise_hugepages(&mapping);
        file_offset += size;
        let region = GuestRegionMmap::new(mapping, GuestAddress(start))
            .ok_or_else(|| err("region wraps the address space".into()))?;
        regions.push(region);
    }
    GuestMemory::from_regions(regions).map_err(|e| err(e.to_string()))
}

/// Alignment of guest RAM's host mappings.
const HUGE_PAGE: usize = 2 << 20;

/// Maps `size` bytes of guest RAM at a host address on a 2 MiB boundary, as guest-physical RAM
/// starts on one: KVM maps guest memory to the guest in 2 MiB pages only where the host and
/// guest addresses agree modulo 2 MiB (and the host page is a huge page). A host kernel before
/// 6.7 places a large anonymous mapping on any 4 KiB boundary (measured in the emulated KVM host,
/// Linux 6.1: guest RAM at ...0c1000), which left every guest page mapped 4 KiB at a time, one
/// nested page fault each; QEMU aligns its RAM for the same reason.
///
/// The mapping is made inside a reservation 2 MiB larger, whose unused head and tail are
/// returned. vm-memory does not unmap a mapping it did not make, so guest RAM stays mapped until
/// the process exits: hull-vmm runs one VM per process, for the life of the process.
fn map_aligned(
    size: usize,
    prot: i32,
    flags: i32,
    file: Option<FileOffset>,
) -> Result<MmapRegion<()>, String> {
    let reserve = size
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| format!("{size} bytes is too large"))?;
    // SAFETY: a new PROT_NONE reservation at an address of the kernel's choosing: it replaces
    // nothing; the result is checked.
    let r = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if r == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    let start = r as usize;
    let aligned = (start + HUGE_PAGE - 1) & !(HUGE_PAGE - 1);
    let (fd, offset) = match &file {
        Some(f) => (
            f.file().as_raw_fd(),
            libc::off_t::try_from(f.start()).map_err(|e| e.to_string())?,
        ),
        None => (-1, 0),
    };
    // SAFETY: [aligned, aligned + size) lies inside the reservation just made (aligned - start
    // < HUGE_PAGE), which nothing else uses, so MAP_FIXED replaces only reserved pages; the
    // result is checked.
    let p = unsafe {
        libc::mmap(
            aligned as *mut libc::c_void,
            size,
            prot,
            flags | libc::MAP_FIXED,
            fd,
            offset,
        )
    };
    let failed = (p == libc::MAP_FAILED).then(std::io::Error::last_os_error);
    // The reservation's head and tail (all of it if the mapping failed).
    let unused = match failed {
        Some(_) => vec![(start, reserve)],
        None => vec![
            (start, aligned - start),
            (aligned + size, start + reserve - (aligned + size)),
        ],
    };
    for (at, len) in unused.into_iter().filter(|&(_, len)| len > 0) {
        // SAFETY: [at, at + len) is part of the reservation made above and holds no guest RAM
        // (or, after a failure, nothing at all).
        unsafe { libc::munmap(at as *mut libc::c_void, len) };
    }
    if let Some(e) = failed {
        return Err(format!("mmap: {e}"));
    }
    let mut b = MmapRegionBuilder::new(size)
        .with_mmap_prot(prot)
        .with_mmap_flags(flags);
    if let Some(f) = file {
        b = b.with_file_offset(f);
    }
    // SAFETY: [aligned, aligned + size) is the live mapping made above, never unmapped (see
    // the function's docs).
    unsafe { b.with_raw_mmap_pointer(aligned as *mut u8) }
        .build()
        .map_err(|e| e.to_string())
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

    /// The MSRs KVM can save and restore for a vCPU of this host.
    pub fn msr_index_list(&self) -> Result<Vec<u32>, VmError> {
        self.kvm
            .get_msr_index_list()
            .map(|l| l.as_slice().to_vec())
            .map_err(|source| VmError::Kvm {
                what: "KVM_GET_MSR_INDEX_LIST",
                source,
            })
    }

    /// Reads the VM's interrupt controllers, PIT and clock (the vCPUs paused).
    pub fn save_state(&self) -> Result<VmState, VmError> {
        let k = |what: &'static str| move |source| VmError::Kvm { what, source };
        let chip = |id| -> Result<kvm_irqchip, VmError> {
            let mut c = kvm_irqchip {
                chip_id: id,
                ..Default::default()
            };
            self.fd.get_irqchip(&mut c).map_err(k("KVM_GET_IRQCHIP"))?;
            Ok(c)
        };
        let mut clock = self.fd.get_clock().map_err(k("KVM_GET_CLOCK"))?;
        // Only the clock's value is kept: TSC_STABLE is KVM's to say, and REALTIME/HOST_TSC
        // describe this host at this moment (set back, they would make KVM move the clock by
        // the time the template waited).
        clock.flags = 0;
        clock.realtime = 0;
        clock.host_tsc = 0;
        Ok(VmState {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: self.fd.get_pit2().map_err(k("KVM_GET_PIT2"))?,
            clock,
        })
    }

    /// Gives a new VM (irqchip and PIT created, no vCPU yet) the state `s`.
    pub fn restore_state(&self, s: &VmState) -> Result<(), VmError> {
        let k = |what: &'static str| move |source| VmError::Kvm { what, source };
        self.fd.set_pit2(&s.pit).map_err(k("KVM_SET_PIT2"))?;
        self.fd.set_clock(&s.clock).map_err(k("KVM_SET_CLOCK"))?;
        for chip in [&s.pic_master, &s.pic_slave, &s.ioapic] {
            self.fd.set_irqchip(chip).map_err(k("KVM_SET_IRQCHIP"))?;
        }
        Ok(())
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
            // Guest RAM's host address is 2 MiB-aligned, like its guest address (0).
            let host = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
            assert_eq!(host % HUGE_PAGE, 0, "{backing:?} at {host:#x}");
        }
    }

    #[test]
    fn snapshot_memory_is_sparse_and_maps_back_copy_on_write() {
        use std::os::unix::fs::MetadataExt;
        let size = 64u64 << 20;
        let mem = create_guest_memory(size, MemoryBacking::Anonymous).unwrap();
        mem.write_obj(0x1122_3344u32, GuestAddress(0x1000)).unwrap();
        mem.write_obj(0x55u8, GuestAddress(size - 1)).unwrap();
        let dir = std::env::temp_dir().join(format!("hull-vm-mem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("memory");
        let f = File::create(&path).unwrap();
        assert_eq!(
            save_memory(&mem, &f).unwrap(),
            2 * 4096,
            "two non-zero pages"
        );
        let md = std::fs::metadata(&path).unwrap();
        assert_eq!(md.len(), size);
        assert!(
            md.blocks() * 512 < 1 << 20,
            "zero pages are holes: {} blocks",
            md.blocks()
        );

        let f = File::open(&path).unwrap();
        let a = map_snapshot_memory(size, &f).unwrap();
        let b = map_snapshot_memory(size, &f).unwrap();
        assert_eq!(
            a.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1122_3344
        );
        assert_eq!(a.read_obj::<u8>(GuestAddress(size - 1)).unwrap(), 0x55);
        assert_eq!(a.read_obj::<u64>(GuestAddress(0x20_0000)).unwrap(), 0);
        // A write is the writer's alone: not the other VM's, not the file's.
        a.write_obj(7u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            b.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1122_3344
        );
        let host = a.get_host_address(GuestAddress(0)).unwrap() as usize;
        assert_eq!(host % HUGE_PAGE, 0);
        drop(f);
        let again = map_snapshot_memory(size, &File::open(&path).unwrap()).unwrap();
        assert_eq!(
            again.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0x1122_3344
        );

        // A file of another size is refused with the reason.
        let short = dir.join("short");
        std::fs::write(&short, [0u8; 4096]).unwrap();
        let e = map_snapshot_memory(size, &File::open(&short).unwrap()).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
