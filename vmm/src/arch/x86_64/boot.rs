//! Loading the kernel, initramfs and command line, and writing the boot information the kernel
//! reads: PVH `hvm_start_info` + memory map (preferred), or the Linux zero page with an e820 map.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::thread::JoinHandle;

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, Error as ElfError, PvhBootCapability};
use linux_loader::loader::{load_cmdline, Cmdline, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use super::layout::{
    self, CMDLINE_START, HIMEM_START, MAX_E820_ENTRIES, MEMMAP_START, MODLIST_START,
    PVH_INFO_START, ZERO_PAGE_START,
};
use super::regs::BootProtocol;
use crate::devices::virtio::GuestMemory;

const XEN_HVM_START_MAGIC_VALUE: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT_BYTES: u32 = 0x100_0000;
/// The 64-bit entry of a bzImage is 0x200 bytes past its protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 4096;

/// Errors loading the guest's boot payload.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot load the kernel as ELF: {0}")]
    Elf(#[source] linux_loader::loader::Error),
    #[error("cannot load the kernel as bzImage: {0}")]
    BzImage(#[source] linux_loader::loader::Error),
    #[error("cannot load the kernel from a thread of its own: {0}")]
    KernelThread(#[source] std::io::Error),
    #[error("cannot read the initramfs: {0}")]
    InitrdRead(#[source] std::io::Error),
    #[error(
        "the initramfs ({size} bytes) does not fit in guest RAM between the kernel (ends at \
         {kernel_end:#x}) and {limit:#x}: give the VM more memory"
    )]
    InitrdTooBig {
        size: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("cannot copy the initramfs into guest memory")]
    InitrdLoad,
    #[error("cannot write the kernel command line: {0}")]
    Cmdline(#[source] linux_loader::loader::Error),
    #[error("cannot write boot parameters: {0}")]
    BootParams(#[source] linux_loader::configurator::Error),
    #[error("the guest memory map has too many entries")]
    TooManyMemMapEntries,
}

/// Where and how the boot vCPU enters the loaded kernel.
#[derive(Clone, Copy, Debug)]
pub struct KernelEntry {
    pub protocol: BootProtocol,
    pub entry: u64,
    /// First guest-physical address past the kernel image.
    pub kernel_end: u64,
    setup_header: Option<setup_header>,
}

/// Loads `kernel` (ELF vmlinux or bzImage) into guest memory. An ELF with a PVH note boots via
/// PVH (unless `allow_pvh` is false); an ELF without one and a bzImage boot via the 64-bit Linux
/// boot protocol.
pub fn load_kernel(
    mem: &GuestMemory,
    kernel: &mut File,
    allow_pvh: bool,
) -> Result<KernelEntry, BootError> {
    match Elf::load(mem, None, kernel, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => {
            let (protocol, entry) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) if allow_pvh => {
                    (BootProtocol::Pvh, addr.0)
                }
                _ => (BootProtocol::Linux64, r.kernel_load.0),
            };
            Ok(KernelEntry {
                protocol,
                entry,
                kernel_end: r.kernel_end,
                setup_header: None,
            })
        }
        Err(linux_loader::loader::Error::Elf(ElfError::InvalidElfMagicNumber)) => {
            let r = BzImage::load(mem, None, kernel, Some(GuestAddress(HIMEM_START)))
                .map_err(BootError::BzImage)?;
            Ok(KernelEntry {
                protocol: BootProtocol::Linux64,
                entry: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
                kernel_end: r.kernel_end,
                setup_header: r.setup_header,
            })
        }
        Err(e) => Err(BootError::Elf(e)),
    }
}

/// A loaded initramfs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitrdInfo {
    pub addr: u64,
    pub size: u64,
}

/// Where an initramfs of `size` bytes goes: page-aligned at the top of low RAM (and below
/// `addr_max` when the kernel's header sets one), above the kernel.
pub fn initrd_placement(
    mem_size: u64,
    kernel_end: u64,
    size: u64,
    addr_max: Option<u64>,
) -> Option<u64> {
    let mut limit = layout::low_ram_end(mem_size);
    if let Some(max) = addr_max {
        limit = limit.min(max.saturating_add(1));
    }
    let addr = limit.checked_sub(size)? & !(PAGE_SIZE - 1);
    (addr >= kernel_end).then_some(addr)
}

/// A kernel being loaded into guest memory by a thread of its own while the devices and vCPUs
/// are set up. Its segments lie at or above [`HIMEM_START`] (the loaders refuse others), apart
/// from everything the main thread writes meanwhile (boot information, command line, MP table).
pub struct KernelLoad {
    copy: JoinHandle<Result<KernelEntry, BootError>>,
}

impl KernelLoad {
    pub fn start(
        mem: &GuestMemory,
        kernel: File,
        allow_pvh: bool,
    ) -> Result<KernelLoad, BootError> {
        let mem = mem.clone();
        let mut kernel = kernel;
        let copy = std::thread::Builder::new()
            .name("kernel-load".into())
            .spawn(move || load_kernel(&mem, &mut kernel, allow_pvh))
            .map_err(BootError::KernelThread)?;
        Ok(KernelLoad { copy })
    }

    /// Waits for the load; the kernel's entry point and protocol.
    pub fn wait(self) -> Result<KernelEntry, BootError> {
        self.copy.join().map_err(|_| {
            BootError::KernelThread(std::io::Error::other("the loading thread panicked"))
        })?
    }
}

/// An initramfs being copied into guest memory by a thread of its own, while the kernel is
/// loaded and the devices and vCPUs are set up (the copy is most of what hull-vmm does before
/// the first guest entry: every page it writes is freshly faulted in).
pub struct InitrdLoad {
    info: InitrdInfo,
    copy: Option<JoinHandle<(File, Result<(), BootError>)>>,
}

impl InitrdLoad {
    /// Starts copying `initrd` to where it goes with an ELF (PVH) kernel: the top of low RAM.
    /// Gives the file back when it does not fit there even with no kernel below it (the caller
    /// then loads it after the kernel with [`load_initrd`], which names the error).
    pub fn start(
        mem: &GuestMemory,
        mem_size: u64,
        initrd: File,
    ) -> Result<Result<InitrdLoad, File>, BootError> {
        let size = initrd.metadata().map_err(BootError::InitrdRead)?.len();
        let (Some(addr), Ok(len)) = (
            initrd_placement(mem_size, 0, size, None),
            usize::try_from(size),
        ) else {
            return Ok(Err(initrd));
        };
        let mem = mem.clone();
        let mut file = initrd;
        let copy = std::thread::Builder::new()
            .name("initrd-load".into())
            .spawn(move || {
                let copied = mem
                    .read_exact_volatile_from(GuestAddress(addr), &mut file, len)
                    .map_err(|_| BootError::InitrdLoad);
                (file, copied)
            })
            .map_err(BootError::InitrdRead)?;
        Ok(Ok(InitrdLoad {
            info: InitrdInfo { addr, size },
            copy: Some(copy),
        }))
    }

    /// Checks the placement against the kernel that was loaded meanwhile. If that kernel needs
    /// the initramfs elsewhere (a bzImage with a lower `initrd_addr_max`), waits for the copy
    /// and copies it again there.
    pub fn place(
        mut self,
        mem: &GuestMemory,
        mem_size: u64,
        entry: &KernelEntry,
    ) -> Result<InitrdLoad, BootError> {
        let addr_max = entry.setup_header.map(|h| u64::from(h.initrd_addr_max));
        let addr = initrd_placement(mem_size, entry.kernel_end, self.info.size, addr_max).ok_or(
            BootError::InitrdTooBig {
                size: self.info.size,
                kernel_end: entry.kernel_end,
                limit: layout::low_ram_end(mem_size),
            },
        );
        if addr.as_ref().is_ok_and(|a| *a == self.info.addr) {
            return Ok(self);
        }
        // Not where it was being copied: wait for that copy (it writes guest memory) first.
        let mut file = self.join()?.ok_or(BootError::InitrdLoad)?;
        let addr = addr?;
        let len = usize::try_from(self.info.size).map_err(|_| BootError::InitrdLoad)?;
        file.seek(SeekFrom::Start(0))
            .map_err(BootError::InitrdRead)?;
        mem.read_exact_volatile_from(GuestAddress(addr), &mut file, len)
            .map_err(|_| BootError::InitrdLoad)?;
        self.info.addr = addr;
        Ok(self)
    }

    /// Where the initramfs is (once [`InitrdLoad::place`] has checked it).
    pub fn info(&self) -> InitrdInfo {
        self.info
    }

    /// Waits for the copy to finish.
    pub fn wait(mut self) -> Result<(), BootError> {
        self.join().map(|_| ())
    }

    /// Waits for the copy thread, if it still runs; gives the file back.
    fn join(&mut self) -> Result<Option<File>, BootError> {
        match self.copy.take() {
            Some(h) => {
                let (file, copied) = h.join().map_err(|_| BootError::InitrdLoad)?;
                copied.map(|()| Some(file))
            }
            None => Ok(None),
        }
    }
}

/// Copies the initramfs into guest memory.
pub fn load_initrd(
    mem: &GuestMemory,
    mem_size: u64,
    entry: &KernelEntry,
    initrd: &mut File,
) -> Result<InitrdInfo, BootError> {
    let size = initrd.metadata().map_err(BootError::InitrdRead)?.len();
    let addr_max = entry.setup_header.map(|h| u64::from(h.initrd_addr_max));
    let limit = layout::low_ram_end(mem_size);
    let addr = initrd_placement(mem_size, entry.kernel_end, size, addr_max).ok_or(
        BootError::InitrdTooBig {
            size,
            kernel_end: entry.kernel_end,
            limit,
        },
    )?;
    let size_usize = usize::try_from(size).map_err(|_| BootError::InitrdLoad)?;
    mem.read_exact_volatile_from(GuestAddress(addr), initrd, size_usize)
        .map_err(|_| BootError::InitrdLoad)?;
    Ok(InitrdInfo { addr, size })
}

/// Writes the command line at CMDLINE_START.
pub fn write_cmdline(mem: &GuestMemory, cmdline: &Cmdline) -> Result<(), BootError> {
    load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(BootError::Cmdline)
}

/// Writes the boot information for `entry.protocol`.
pub fn write_boot_info(
    mem: &GuestMemory,
    mem_size: u64,
    entry: &KernelEntry,
    cmdline_len: usize,
    initrd: Option<InitrdInfo>,
) -> Result<(), BootError> {
    let map = layout::memory_map(mem_size);
    if map.len() > MAX_E820_ENTRIES {
        return Err(BootError::TooManyMemMapEntries);
    }
    match entry.protocol {
        BootProtocol::Pvh => write_pvh(mem, &map, initrd),
        BootProtocol::Linux64 => write_zero_page(mem, &map, entry, cmdline_len, initrd),
    }
}

fn write_pvh(
    mem: &GuestMemory,
    map: &[layout::MemMapEntry],
    initrd: Option<InitrdInfo>,
) -> Result<(), BootError> {
    let memmap: Vec<hvm_memmap_table_entry> = map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC_VALUE,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .iter()
        .map(|i| hvm_modlist_entry {
            paddr: i.addr,
            size: i.size,
            ..Default::default()
        })
        .collect();
    if !modules.is_empty() {
        start_info.nr_modules = modules.len() as u32;
        start_info.modlist_paddr = MODLIST_START;
    }
    let mut params = BootParams::new::<hvm_start_info>(&start_info, GuestAddress(PVH_INFO_START));
    params.set_sections::<hvm_memmap_table_entry>(&memmap, GuestAddress(MEMMAP_START));
    if !modules.is_empty() {
        params.set_modules::<hvm_modlist_entry>(&modules, GuestAddress(MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem)
        .map_err(BootError::BootParams)
}

fn write_zero_page(
    mem: &GuestMemory,
    map: &[layout::MemMapEntry],
    entry: &KernelEntry,
    cmdline_len: usize,
    initrd: Option<InitrdInfo>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = entry.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT_BYTES;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    for (i, e) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
        };
    }
    params.e820_entries = map.len() as u8;
    let bp = BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(&bp, mem).map_err(BootError::BootParams)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn initrd_goes_to_the_top_of_low_ram() {
        let mem = 256u64 << 20;
        let a = initrd_placement(mem, 0x200_0000, 10_000, None).unwrap();
        assert_eq!(a % PAGE_SIZE, 0);
        assert!(a + 10_000 <= mem);
        assert!(a >= mem - 10_000 - PAGE_SIZE);
        // Too big to fit above the kernel.
        assert_eq!(initrd_placement(mem, 0x200_0000, mem, None), None);
        // Honour initrd_addr_max.
        let a = initrd_placement(8 << 30, 0x200_0000, 4096, Some(0x37ff_ffff)).unwrap();
        assert_eq!(a, 0x3800_0000 - 4096);
    }

    /// A file of `len` bytes that differ from one offset to the next.
    fn initrd_file(len: usize) -> (File, Vec<u8>) {
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + i / 4096) as u8).collect();
        let mut f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        std::io::Write::write_all(&mut f, &bytes).unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        (f, bytes)
    }

    fn read_back(mem: &GuestMemory, info: InitrdInfo) -> Vec<u8> {
        let mut got = vec![0u8; info.size as usize];
        mem.read_slice(&mut got, GuestAddress(info.addr)).unwrap();
        got
    }

    fn entry_with(kernel_end: u64, initrd_addr_max: Option<u32>) -> KernelEntry {
        KernelEntry {
            protocol: BootProtocol::Linux64,
            entry: 0x100_0000,
            kernel_end,
            setup_header: initrd_addr_max.map(|m| setup_header {
                initrd_addr_max: m,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn initrd_loaded_from_its_thread_is_where_the_boot_info_says() {
        let size = 64u64 << 20;
        let mem: GuestMemory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let (f, bytes) = initrd_file(3 * 4096 + 123);
        let load = InitrdLoad::start(&mem, size, f).unwrap().ok().unwrap();
        let load = load
            .place(&mem, size, &entry_with(0x200_0000, None))
            .unwrap();
        let info = load.info();
        assert_eq!(
            Some(info.addr),
            initrd_placement(size, 0x200_0000, bytes.len() as u64, None)
        );
        load.wait().unwrap();
        assert_eq!(read_back(&mem, info), bytes);
    }

    #[test]
    fn initrd_is_copied_again_where_a_bzimage_needs_it() {
        let size = 64u64 << 20;
        let mem: GuestMemory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let (f, bytes) = initrd_file(2 * 4096 + 5);
        let load = InitrdLoad::start(&mem, size, f).unwrap().ok().unwrap();
        let first = load.info().addr;
        // initrd_addr_max 32 MiB: below where the thread put it.
        let load = load
            .place(&mem, size, &entry_with(0x100_0000, Some(0x1ff_ffff)))
            .unwrap();
        let info = load.info();
        assert!(info.addr < first && info.addr + info.size <= 0x200_0000);
        load.wait().unwrap();
        assert_eq!(read_back(&mem, info), bytes);
    }

    #[test]
    fn initrd_over_the_kernel_is_refused_after_its_copy_ended() {
        let size = 64u64 << 20;
        let mem: GuestMemory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let (f, _) = initrd_file(1 << 20);
        let load = InitrdLoad::start(&mem, size, f).unwrap().ok().unwrap();
        // A kernel that ends inside the initramfs' place.
        let err = load
            .place(&mem, size, &entry_with(size - 4096, None))
            .err()
            .unwrap();
        assert!(matches!(err, BootError::InitrdTooBig { .. }), "{err}");
        // Bigger than the guest's RAM: the file comes back for load_initrd to name the error.
        let (f, _) = initrd_file(4096);
        assert!(InitrdLoad::start(&mem, 2048, f).unwrap().is_err());
    }

    #[test]
    fn a_kernel_loaded_from_its_thread_reports_what_is_wrong_with_it() {
        let mem: GuestMemory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        // Neither ELF nor bzImage.
        let (f, _) = initrd_file(8192);
        let err = KernelLoad::start(&mem, f, true)
            .unwrap()
            .wait()
            .err()
            .unwrap();
        assert!(matches!(err, BootError::BzImage(_)), "{err}");
    }

    #[test]
    fn pvh_start_info_is_written() {
        let mem: GuestMemory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let entry = KernelEntry {
            protocol: BootProtocol::Pvh,
            entry: 0x100_0000,
            kernel_end: 0x200_0000,
            setup_header: None,
        };
        let initrd = InitrdInfo {
            addr: 0x300_0000,
            size: 1234,
        };
        write_boot_info(&mem, 64 << 20, &entry, 10, Some(initrd)).unwrap();
        let si: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(si.magic, XEN_HVM_START_MAGIC_VALUE);
        assert_eq!(si.memmap_entries, 3);
        assert_eq!(si.nr_modules, 1);
        let m: hvm_modlist_entry = mem.read_obj(GuestAddress(MODLIST_START)).unwrap();
        assert_eq!((m.paddr, m.size), (0x300_0000, 1234));
        let last: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(MEMMAP_START + 2 * 24)).unwrap();
        assert_eq!(last.addr + last.size, 64 << 20);
    }

    #[test]
    fn zero_page_is_written() {
        let mem: GuestMemory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let entry = KernelEntry {
            protocol: BootProtocol::Linux64,
            entry: 0x100_0000,
            kernel_end: 0x200_0000,
            setup_header: None,
        };
        write_boot_info(&mem, 64 << 20, &entry, 10, None).unwrap();
        let bp: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let (flag, hdr, n) = (bp.hdr.boot_flag, bp.hdr.header, bp.e820_entries);
        assert_eq!(flag, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!(hdr, KERNEL_HDR_MAGIC);
        assert_eq!(n, 3);
    }

    #[test]
    fn not_a_kernel_is_rejected() {
        let mem: GuestMemory =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap();
        let dir = std::env::temp_dir().join(format!("hull-vmm-boot-test-{}", std::process::id()));
        std::fs::write(&dir, vec![0x42u8; 8192]).unwrap();
        let mut f = File::open(&dir).unwrap();
        let r = load_kernel(&mem, &mut f, true);
        std::fs::remove_file(&dir).unwrap();
        assert!(matches!(r, Err(BootError::BzImage(_))), "{r:?}");
    }
}
