//! Guest physical memory layout (all addresses are guest-physical).
//!
//! ```text
//! 0x0000_0000  real-mode IVT / BDA (left alone)
//! 0x0000_0500  GDT                      (BOOT_GDT_START)
//! 0x0000_0520  IDT (empty)              (BOOT_IDT_START)
//! 0x0000_6000  PVH hvm_start_info       (PVH_INFO_START)
//! 0x0000_6040  PVH module list (initrd) (MODLIST_START)
//! 0x0000_7000  PVH memory map / Linux zero page (MEMMAP_START / ZERO_PAGE_START)
//! 0x0000_9000  PML4, PDPTE, PDE (64-bit Linux boot only)
//! 0x0002_0000  kernel command line      (CMDLINE_START, CMDLINE_MAX_SIZE)
//! 0x0009_fc00  MP table (EBDA / last KiB of base memory, where Linux looks for it)
//! 0x0010_0000  high memory: the kernel (ELF p_paddr, usually 16 MiB), then free RAM;
//!              the initramfs goes at the top of RAM below MMIO_GAP_START
//! 0xc000_0000  MMIO gap (1 GiB): virtio-mmio devices from 0xd000_0000, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 4 GiB when the guest has more than 3 GiB
//! ```

/// GDT used while booting.
pub const BOOT_GDT_START: u64 = 0x500;
/// Number of GDT entries (null, code, data, TSS).
pub const BOOT_GDT_MAX: usize = 4;
/// IDT (empty) used while booting.
pub const BOOT_IDT_START: u64 = 0x520;

/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (one entry: the initramfs).
pub const MODLIST_START: u64 = 0x6040;
/// PVH memory map table.
pub const MEMMAP_START: u64 = 0x7000;
/// Maximum number of memory map entries we write (PVH and e820 alike).
pub const MAX_E820_ENTRIES: usize = 128;

/// Linux boot protocol "zero page" (`struct boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Identity page tables for the 64-bit Linux boot protocol.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;

/// Kernel command line and its maximum size including the NUL (x86 COMMAND_LINE_SIZE).
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 2048;

/// Initial stack pointer for the 64-bit Linux boot protocol.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;

/// Start of the Extended BIOS Data Area: the MP table lives here and RAM below it is usable.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;

/// The MMIO gap below 4 GiB: no RAM there.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio devices, one 4 KiB window each.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// Most virtio-mmio devices a VM can have (IRQs 5..=23 on the IOAPIC).
pub const VIRTIO_MMIO_MAX_DEVICES: usize = 19;
/// First IOAPIC pin given to virtio-mmio devices (1 = keyboard, 4 = COM1 are taken).
pub const VIRTIO_IRQ_BASE: u32 = 5;

/// IOAPIC and local APIC MMIO addresses (fixed by KVM's in-kernel irqchip).
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// Number of IOAPIC pins.
pub const IOAPIC_PINS: u32 = 24;

/// TSS and identity-map pages KVM needs on Intel (placed inside the MMIO gap, below the IOAPIC).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
pub const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

/// Legacy I/O ports.
pub const COM1_PORT: u16 = 0x3f8;
pub const COM1_IRQ: u32 = 4;
pub const I8042_DATA_PORT: u16 = 0x60;
pub const I8042_COMMAND_PORT: u16 = 0x64;
pub const I8042_IRQ: u32 = 1;
/// pvpanic's I/O port (QEMU's default, and what `CMDLINE_PREFIX` names).
pub const PVPANIC_PORT: u16 = 0x505;

/// Guest RAM ranges for a guest with `mem_size` bytes: one range below the MMIO gap and, when
/// the guest has more memory than fits there, one above 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<(u64, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(0, mem_size)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_size - MMIO_GAP_START),
        ]
    }
}

/// One entry of the guest's memory map (e820 / PVH memmap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// The guest's memory map: low RAM below the EBDA, the EBDA/BIOS area reserved (the MP table is
/// there), high RAM, and RAM above 4 GiB if any.
pub fn memory_map(mem_size: u64) -> Vec<MemMapEntry> {
    let mut map = vec![
        MemMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemMapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    for (start, size) in ram_ranges(mem_size) {
        let (start, size) = if start == 0 {
            (HIMEM_START, size - HIMEM_START)
        } else {
            (start, size)
        };
        map.push(MemMapEntry {
            addr: start,
            size,
            kind: E820_RAM,
        });
    }
    map
}

/// Highest guest-physical address (exclusive) of RAM below the MMIO gap.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guest_has_one_range() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        let map = memory_map(256 << 20);
        assert_eq!(map.len(), 3);
        assert_eq!(map[2].addr, HIMEM_START);
        assert_eq!(map[2].addr + map[2].size, 256 << 20);
    }

    #[test]
    fn large_guest_skips_the_mmio_gap() {
        let mem = 5u64 << 30;
        let r = ram_ranges(mem);
        assert_eq!(r, vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 2 << 30)]);
        assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), mem);
        let map = memory_map(mem);
        assert_eq!(map.last().unwrap().addr, MMIO_GAP_END);
        assert_eq!(low_ram_end(mem), MMIO_GAP_START);
    }

    #[test]
    fn devices_sit_inside_the_gap() {
        let last = VIRTIO_MMIO_START + VIRTIO_MMIO_SIZE * VIRTIO_MMIO_MAX_DEVICES as u64;
        assert!(VIRTIO_MMIO_START >= MMIO_GAP_START && last <= IOAPIC_START);
        assert!(VIRTIO_IRQ_BASE + VIRTIO_MMIO_MAX_DEVICES as u32 <= IOAPIC_PINS);
    }
}
