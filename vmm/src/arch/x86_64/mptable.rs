//! The Intel MultiProcessor Specification 1.4 table: how an ACPI-less guest (X86_MPPARSE) learns
//! its CPUs, the IOAPIC and the ISA interrupt routing.
//!
//! The floating pointer goes at the start of the EBDA (0x9fc00, the last KiB of base memory,
//! which Linux scans) and the configuration table right after it. The structures are serialised
//! by hand (little-endian, packed) rather than through bindgen'd C structs.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use super::layout::{APIC_START, EBDA_START, HIMEM_START, IOAPIC_PINS, IOAPIC_START};

/// Most CPUs the table can describe (APIC ids are one byte and the IOAPIC takes the next id).
pub const MAX_CPUS: u8 = 254;

const MPC_SPEC: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 0x200;
const CPU_FEATURE_FPU: u32 = 0x001;
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
const BUS_ID_ISA: u8 = 0;

const MPF_SIZE: usize = 16;
const MPC_HEADER_SIZE: usize = 44;

/// Errors building or writing the MP table.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum MpTableError {
    #[error("the MP table cannot describe {0} vCPUs (1..={MAX_CPUS})")]
    TooManyCpus(u8),
    #[error("the MP table does not fit between the EBDA and 1 MiB")]
    TooBig,
    #[error("cannot write the MP table into guest memory")]
    Write,
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the floating pointer and table for `num_cpus` CPUs, to be placed at `base`.
pub fn build(num_cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if num_cpus == 0 || num_cpus > MAX_CPUS {
        return Err(MpTableError::TooManyCpus(num_cpus));
    }
    let ioapic_id = num_cpus + 1;
    let table_addr = base + MPF_SIZE as u64;

    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..num_cpus {
        entries.push(MP_PROCESSOR);
        entries.push(cpu);
        entries.push(APIC_VERSION);
        entries.push(CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, BUS_ID_ISA]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for irq in 0..IOAPIC_PINS as u8 {
        // ISA IRQ n is IOAPIC pin n (KVM's default routing), bus-default polarity and trigger.
        entries.extend_from_slice(&[MP_INTSRC, MP_INT, 0, 0, BUS_ID_ISA, irq, ioapic_id, irq]);
        count += 1;
    }
    // LINT0 of every CPU is ExtINT (the 8259), LINT1 is NMI.
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, BUS_ID_ISA, 0, 0, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, BUS_ID_ISA, 0, 0xff, 1]);
    count += 2;

    let table_len = MPC_HEADER_SIZE + entries.len();
    if base + (MPF_SIZE + table_len) as u64 > HIMEM_START {
        return Err(MpTableError::TooBig);
    }

    let mut header = Vec::with_capacity(MPC_HEADER_SIZE);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(MPC_SPEC);
    header.push(0); // checksum, below
    header.extend_from_slice(b"HULL    ");
    header.extend_from_slice(b"HULL-VMM    ");
    header.extend_from_slice(&0u32.to_le_bytes()); // oemptr
    header.extend_from_slice(&0u16.to_le_bytes()); // oemsize
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    debug_assert_eq!(header.len(), MPC_HEADER_SIZE);

    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut mpf = Vec::with_capacity(MPF_SIZE);
    mpf.extend_from_slice(b"_MP_");
    mpf.extend_from_slice(&(table_addr as u32).to_le_bytes());
    mpf.push(1); // length in 16-byte units
    mpf.push(MPC_SPEC);
    mpf.push(0); // checksum, below
    mpf.extend_from_slice(&[0u8; 5]);
    mpf[10] = checksum(&mpf);

    let mut out = mpf;
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `num_cpus` CPUs at the EBDA.
pub fn setup<M: GuestMemory>(mem: &M, num_cpus: u8) -> Result<(), MpTableError> {
    let bytes = build(num_cpus, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))
        .map_err(|_| MpTableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn checksums_and_layout() {
        for cpus in [1u8, 2, 32, MAX_CPUS] {
            let b = build(cpus, EBDA_START).unwrap();
            assert_eq!(&b[0..4], b"_MP_");
            assert_eq!(sum(&b[..16]), 0, "floating pointer checksum");
            let ptr = u32::from_le_bytes(b[4..8].try_into().unwrap()) as u64;
            assert_eq!(ptr, EBDA_START + 16);
            let table = &b[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = u16::from_le_bytes(table[4..6].try_into().unwrap()) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "table checksum");
            let count = u16::from_le_bytes(table[34..36].try_into().unwrap()) as usize;
            assert_eq!(count, cpus as usize + 2 + IOAPIC_PINS as usize + 2);
            // Entries: cpus first; the first is the BSP.
            let e = &table[44..];
            assert_eq!(e[0], MP_PROCESSOR);
            assert_eq!(e[3], CPU_ENABLED | CPU_BSP);
            if cpus > 1 {
                assert_eq!(e[20 + 1], 1);
                assert_eq!(e[20 + 3], CPU_ENABLED);
            }
        }
    }

    #[test]
    fn rejects_bad_cpu_counts() {
        assert_eq!(build(0, EBDA_START), Err(MpTableError::TooManyCpus(0)));
        assert_eq!(build(255, EBDA_START), Err(MpTableError::TooManyCpus(255)));
    }
}
