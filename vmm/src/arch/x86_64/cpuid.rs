//! CPUID: KVM's supported set, adjusted per vCPU (topology, APIC id, hypervisor signature) with
//! the features a guest must not see removed.
//!
//! Two bits matter for boot time. KVM emulates the LAPIC TSC-deadline timer but leaves its bit
//! out of KVM_GET_SUPPORTED_CPUID (userspace sets it when KVM_CAP_TSC_DEADLINE_TIMER is there),
//! and leaf 0x6 carries ARAT (the LAPIC timer keeps running in deep C-states). With both, Linux
//! needs no PIT: it skips LAPIC timer calibration against the PIT (about 100 ms of ticks, whose
//! verification can fail under a loaded host and leave the guest on the PIT as its clock event
//! device) and the IO-APIC timer check.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

// Leaf 0x1.
const LEAF1_ECX_MONITOR: u32 = 1 << 3;
const LEAF1_ECX_VMX: u32 = 1 << 5;
const LEAF1_ECX_TSC_DEADLINE: u32 = 1 << 24;
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
const LEAF1_EDX_HTT: u32 = 1 << 28;
// Leaf 0x6: Always Running APIC Timer.
const LEAF6_EAX_ARAT: u32 = 1 << 2;
// Leaf 0x80000001.
const EXT1_ECX_SVM: u32 = 1 << 2;

/// "KVMKVMKVM\0\0\0" as the three signature registers of leaf 0x40000000.
const KVM_SIGNATURE: [u32; 3] = [0x4b4d_564b, 0x564b_4d56, 0x0000_004d];

/// Number of bits needed to hold APIC ids `0..n`.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// What the host KVM offers beyond KVM_GET_SUPPORTED_CPUID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostFeatures {
    /// KVM_CAP_TSC_DEADLINE_TIMER: the in-kernel LAPIC emulates TSC-deadline mode.
    pub tsc_deadline: bool,
}

fn adjust_entry(e: &mut kvm_cpuid_entry2, cpu_id: u32, cpu_count: u32, host: HostFeatures) {
    let bits = id_bits(cpu_count);
    match e.function {
        0x1 => {
            // EBX: [31:24] initial APIC id, [23:16] logical processors, [15:8] CLFLUSH (8 qwords).
            e.ebx = (e.ebx & 0xff) | (8 << 8) | ((cpu_count & 0xff) << 16) | (cpu_id << 24);
            e.ecx |= LEAF1_ECX_HYPERVISOR;
            e.ecx &= !(LEAF1_ECX_VMX | LEAF1_ECX_MONITOR);
            if host.tsc_deadline {
                e.ecx |= LEAF1_ECX_TSC_DEADLINE;
            } else {
                e.ecx &= !LEAF1_ECX_TSC_DEADLINE;
            }
            if cpu_count > 1 {
                e.edx |= LEAF1_EDX_HTT;
            } else {
                e.edx &= !LEAF1_EDX_HTT;
            }
        }
        0x4 => {
            // Intel deterministic cache parameters: every core in one package, no SMT.
            let level = (e.eax >> 5) & 0x7;
            let sharing = if level >= 3 { cpu_count - 1 } else { 0 };
            e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((cpu_count - 1) & 0x3f) << 26);
        }
        0x6 => {
            // No thermal/power management interface; ARAT stays (KVM's LAPIC timer never
            // stops).
            e.eax &= LEAF6_EAX_ARAT;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0xa => {
            // No architectural PMU: the guest must not program host counters.
            e.eax = 0;
            e.ebx = 0;
            e.ecx = 0;
            e.edx = 0;
        }
        0xb | 0x1f => {
            // Extended topology: one thread per core, `cpu_count` cores.
            e.edx = cpu_id;
            match e.index {
                0 => {
                    e.eax = 0;
                    e.ebx = 1;
                    e.ecx = 0x100;
                }
                1 => {
                    e.eax = bits;
                    e.ebx = cpu_count;
                    e.ecx = 0x200 | 1;
                }
                i => {
                    e.eax = 0;
                    e.ebx = 0;
                    e.ecx = i;
                }
            }
        }
        0x4000_0000 => {
            e.eax = 0x4000_0001;
            e.ebx = KVM_SIGNATURE[0];
            e.ecx = KVM_SIGNATURE[1];
            e.edx = KVM_SIGNATURE[2];
        }
        0x8000_0001 => {
            e.ecx &= !EXT1_ECX_SVM;
        }
        0x8000_0008 => {
            // AMD: [15:12] APIC id size, [7:0] number of cores - 1.
            e.ecx = (e.ecx & !0xf0ff) | (bits << 12) | ((cpu_count - 1) & 0xff);
        }
        0x8000_001e => {
            // AMD extended APIC id / compute unit: one thread per unit, one node.
            e.eax = cpu_id;
            e.ebx = cpu_id & 0xff;
            e.ecx = 0;
        }
        _ => {}
    }
}

/// Adjusts KVM's supported CPUID for vCPU `cpu_id` of `cpu_count`.
pub fn adjust(cpuid: &mut CpuId, cpu_id: u8, cpu_count: u8, host: HostFeatures) {
    let cpu_count = u32::from(cpu_count.max(1));
    for e in cpuid.as_mut_slice() {
        adjust_entry(e, u32::from(cpu_id), cpu_count, host);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn adjusted_with(
        function: u32,
        index: u32,
        id: u8,
        count: u8,
        host: HostFeatures,
    ) -> kvm_cpuid_entry2 {
        let mut c = CpuId::from_entries(&[entry(function, index)]).unwrap();
        adjust(&mut c, id, count, host);
        c.as_slice()[0]
    }

    fn adjusted(function: u32, index: u32, id: u8, count: u8) -> kvm_cpuid_entry2 {
        adjusted_with(function, index, id, count, HostFeatures::default())
    }

    #[test]
    fn tsc_deadline_follows_the_kvm_capability() {
        let on = HostFeatures { tsc_deadline: true };
        assert_ne!(
            adjusted_with(1, 0, 0, 1, on).ecx & LEAF1_ECX_TSC_DEADLINE,
            0
        );
        // Never advertised when KVM cannot emulate it, whatever the supported set said.
        let off = adjusted_with(1, 0, 0, 1, HostFeatures::default());
        assert_eq!(off.ecx & LEAF1_ECX_TSC_DEADLINE, 0);
        // The other leaf-1 adjustments still apply.
        let e = adjusted_with(1, 0, 1, 2, on);
        assert_eq!(e.ecx & (LEAF1_ECX_VMX | LEAF1_ECX_MONITOR), 0);
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
    }

    #[test]
    fn leaf6_keeps_only_arat() {
        let e = adjusted(6, 0, 0, 1);
        assert_eq!(e.eax, LEAF6_EAX_ARAT);
        assert_eq!((e.ebx, e.ecx, e.edx), (0, 0, 0));
        let mut none = entry(6, 0);
        none.eax = 0;
        let mut c = CpuId::from_entries(&[none]).unwrap();
        adjust(&mut c, 0, 1, HostFeatures::default());
        assert_eq!(c.as_slice()[0].eax, 0);
    }

    #[test]
    fn leaf1_topology_and_hidden_features() {
        let e = adjusted(1, 0, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_ne!(e.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_eq!(e.ecx & LEAF1_ECX_VMX, 0);
        assert_ne!(e.edx & LEAF1_EDX_HTT, 0);
        assert_eq!(adjusted(1, 0, 0, 1).edx & LEAF1_EDX_HTT, 0);
    }

    #[test]
    fn hypervisor_leaf_has_kvm_signature() {
        let e = adjusted(0x4000_0000, 0, 0, 1);
        let mut sig = Vec::new();
        for r in [e.ebx, e.ecx, e.edx] {
            sig.extend_from_slice(&r.to_le_bytes());
        }
        assert_eq!(&sig, b"KVMKVMKVM\0\0\0");
    }

    #[test]
    fn extended_topology() {
        let smt = adjusted(0xb, 0, 2, 3);
        assert_eq!((smt.eax, smt.ebx, smt.edx), (0, 1, 2));
        let core = adjusted(0xb, 1, 2, 3);
        assert_eq!((core.eax, core.ebx, core.ecx >> 8, core.edx), (2, 3, 2, 2));
        assert_eq!(adjusted(0x8000_0001, 0, 0, 1).ecx & EXT1_ECX_SVM, 0);
        assert_eq!(adjusted(0x8000_0008, 0, 0, 2).ecx & 0xff, 1);
        assert_eq!(adjusted(0xa, 0, 0, 1).eax, 0);
    }

    #[test]
    fn id_bits_counts() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
    }
}
