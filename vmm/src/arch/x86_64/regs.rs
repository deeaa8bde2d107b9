//! Boot-time register state of the boot vCPU for the two boot protocols hull supports.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use kvm_ioctls::VcpuFd;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory};

use super::gdt::{gdt_entry, kvm_segment_from_gdt};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// How the boot vCPU enters the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = `hvm_start_info`.
    Pvh,
    /// 64-bit Linux boot protocol: long mode with identity-mapped first GiB, `%rsi` = zero page.
    Linux64,
}

/// Errors setting up boot registers.
#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT/IDT into guest memory")]
    WriteGdt,
    #[error("cannot write the boot page tables into guest memory")]
    WritePageTables,
    #[error("KVM_SET_REGS failed: {0}")]
    SetRegs(#[source] kvm_ioctls::Error),
    #[error("KVM_GET_SREGS failed: {0}")]
    GetSregs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_SREGS failed: {0}")]
    SetSregs(#[source] kvm_ioctls::Error),
    #[error("KVM_SET_FPU failed: {0}")]
    SetFpu(#[source] kvm_ioctls::Error),
}

/// Initial FPU state (what a reset CPU has).
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(RegsError::SetFpu)
}

/// General-purpose registers for entering the kernel at `entry`.
pub fn boot_regs(protocol: BootProtocol, entry: u64) -> kvm_regs {
    match protocol {
        BootProtocol::Pvh => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
        BootProtocol::Linux64 => kvm_regs {
            rflags: 0x2,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
    }
}

/// Sets the boot vCPU's registers, segment registers and FPU, writing the boot GDT (and, for
/// the Linux protocol, identity page tables) into guest memory.
pub fn setup_boot_vcpu<M: GuestMemory>(
    vcpu: &VcpuFd,
    mem: &M,
    protocol: BootProtocol,
    entry: u64,
) -> Result<(), RegsError> {
    setup_fpu(vcpu)?;
    vcpu.set_regs(&boot_regs(protocol, entry))
        .map_err(RegsError::SetRegs)?;
    let mut sregs = vcpu.get_sregs().map_err(RegsError::GetSregs)?;
    configure_sregs(mem, protocol, &mut sregs)?;
    vcpu.set_sregs(&sregs).map_err(RegsError::SetSregs)
}

/// Fills `sregs` for `protocol` and writes the tables it refers to into guest memory.
pub fn configure_sregs<M: GuestMemory>(
    mem: &M,
    protocol: BootProtocol,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let gdt: [u64; super::layout::BOOT_GDT_MAX] = match protocol {
        BootProtocol::Pvh => [
            gdt_entry(0, 0, 0),
            gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x008b, 0, 0x67),    // TSS
        ],
        BootProtocol::Linux64 => [
            gdt_entry(0, 0, 0),
            gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x808b, 0, 0xfffff), // TSS
        ],
    };
    for (i, entry) in gdt.iter().enumerate() {
        let addr = GuestAddress(BOOT_GDT_START)
            .checked_add(i as u64 * 8)
            .ok_or(RegsError::WriteGdt)?;
        mem.write_obj(*entry, addr)
            .map_err(|_| RegsError::WriteGdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|_| RegsError::WriteGdt)?;

    let code = kvm_segment_from_gdt(gdt[1], 1);
    let data = kvm_segment_from_gdt(gdt[2], 2);
    let tss = kvm_segment_from_gdt(gdt[3], 3);

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    match protocol {
        BootProtocol::Pvh => {
            sregs.cr0 = X86_CR0_PE;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootProtocol::Linux64 => {
            setup_page_tables(mem)?;
            sregs.cr0 = X86_CR0_PE | X86_CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    Ok(())
}

/// Identity-maps the first GiB with 2 MiB pages (what the 64-bit Linux boot protocol needs to
/// reach the kernel's own page tables).
fn setup_page_tables<M: GuestMemory>(mem: &M) -> Result<(), RegsError> {
    let err = |_| RegsError::WritePageTables;
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(err)?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(err)?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn pvh_sregs_are_flat_protected_mode() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        configure_sregs(&m, BootProtocol::Pvh, &mut sregs).unwrap();
        assert_eq!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!(sregs.cr0 & X86_CR0_PE, 1);
        assert_eq!(sregs.cs.selector, 8);
        assert_eq!(sregs.cs.db, 1);
        assert_eq!(sregs.ds.selector, 16);
        let code: u64 = m.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, gdt_entry(0xc09b, 0, 0xfffff));
        let regs = boot_regs(BootProtocol::Pvh, 0x100_0000);
        assert_eq!(regs.rbx, PVH_INFO_START);
        assert_eq!(regs.rip, 0x100_0000);
    }

    #[test]
    fn linux_sregs_enter_long_mode_with_identity_map() {
        let m = mem();
        let mut sregs = kvm_sregs::default();
        configure_sregs(&m, BootProtocol::Linux64, &mut sregs).unwrap();
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cs.l, 1);
        let pde: u64 = m.read_obj(GuestAddress(PDE_START + 8)).unwrap();
        assert_eq!(pde, (1 << 21) | 0x83);
        let pml4: u64 = m.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4, PDPTE_START | 3);
    }
}
