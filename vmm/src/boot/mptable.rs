//! The Intel MultiProcessor Specification 1.4 table: how a guest without
//! ACPI (the micro-VM has none) learns its CPUs, the IOAPIC and how ISA
//! interrupts are wired. Without it Linux sees one CPU and no IOAPIC.
//!
//! Hand-written because rust-vmm publishes no crate for it (Firecracker
//! and Cloud Hypervisor each keep their own). Written as bytes at the
//! offsets the spec gives (chapter 4), which keeps the layout checkable
//! against the spec without packed structs.

use crate::memory::{GuestMemoryMmap, EBDA_START};
use husk_vmm_config::MAX_VCPUS;
use vm_memory::{Bytes, GuestAddress};

/// Where the floating pointer goes: the first KiB of the EBDA, the first
/// place Linux scans (arch/x86/kernel/mpparse.c).
pub const MPTABLE_START: u64 = EBDA_START;
/// The in-kernel IOAPIC KVM provides with KVM_CREATE_IRQCHIP.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
/// Its input pins (KVM_IOAPIC_NUM_PINS).
pub const IOAPIC_PINS: u8 = 24;
/// The local APICs' base address.
pub const LAPIC_ADDR: u32 = 0xfee0_0000;
/// APIC version 0x14 (integrated xAPIC), IOAPIC version 0x11, as KVM's.
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;

// Entry types (spec table 4-3) and sizes.
pub const MP_PROCESSOR: u8 = 0;
pub const MP_BUS: u8 = 1;
pub const MP_IOAPIC: u8 = 2;
pub const MP_INTSRC: u8 = 3;
pub const MP_LINTSRC: u8 = 4;
const FLOATING_SIZE: usize = 16;
const HEADER_SIZE: usize = 44;
const PROCESSOR_SIZE: usize = 20;

// Interrupt types (spec table 4-9).
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;

const ISA_BUS_ID: u8 = 0;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error(
        "an MP table for {0} vCPUs: at most {MAX_VCPUS} (8-bit APIC IDs, IOAPIC takes the next)"
    )]
    TooManyCpus(u8),
    #[error("writing the MP table to guest memory: {0}")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// The floating pointer and configuration table for `cpus` CPUs, as the
/// bytes to place at [`MPTABLE_START`].
pub fn build(cpus: u8) -> Result<Vec<u8>, MptableError> {
    if cpus == 0 || cpus > MAX_VCPUS {
        return Err(MptableError::TooManyCpus(cpus));
    }
    let ioapic_id = cpus; // the first ID after the CPUs'
    let mut entries = Vec::new();
    let mut count = 0u16;
    for cpu in 0..cpus {
        let mut e = [0u8; PROCESSOR_SIZE];
        e[0] = MP_PROCESSOR;
        e[1] = cpu; // local APIC ID, as CPUID reports it
        e[2] = APIC_VERSION;
        e[3] = 0x1 | if cpu == 0 { 0x2 } else { 0 }; // enabled, BSP
                                                     // CPU signature (family 6) and feature flags (FPU, APIC): what
                                                     // Linux only prints.
        e[4..8].copy_from_slice(&0x600u32.to_le_bytes());
        e[8..12].copy_from_slice(&((1u32 << 0) | (1 << 9)).to_le_bytes());
        entries.extend_from_slice(&e);
        count += 1;
    }
    entries.extend_from_slice(&[MP_BUS, ISA_BUS_ID, b'I', b'S', b'A', b' ', b' ', b' ']);
    count += 1;
    let mut ioapic = [MP_IOAPIC, ioapic_id, IOAPIC_VERSION, 0x1, 0, 0, 0, 0];
    ioapic[4..8].copy_from_slice(&IOAPIC_ADDR.to_le_bytes());
    entries.extend_from_slice(&ioapic);
    count += 1;
    // ISA IRQ n -> IOAPIC pin n, bus-default polarity and trigger (flags
    // 0), which is how KVM routes GSIs (and so our irqfds) by default.
    for pin in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[MP_INTSRC, MP_INT, 0, 0, ISA_BUS_ID, pin, ioapic_id, pin]);
        count += 1;
    }
    // Every LAPIC (0xff): LINT0 takes ExtINT from the PIC, LINT1 is NMI,
    // matching what regs::setup_lapic programs.
    entries.extend_from_slice(&[MP_LINTSRC, MP_EXTINT, 0, 0, ISA_BUS_ID, 0, 0xff, 0]);
    entries.extend_from_slice(&[MP_LINTSRC, MP_NMI, 0, 0, ISA_BUS_ID, 0, 0xff, 1]);
    count += 2;

    let table_len = HEADER_SIZE + entries.len();
    let mut header = [0u8; HEADER_SIZE];
    header[0..4].copy_from_slice(b"PCMP");
    header[4..6].copy_from_slice(&(table_len as u16).to_le_bytes());
    header[6] = 4; // spec revision 1.4
    header[8..16].copy_from_slice(b"HUSK    ");
    header[16..28].copy_from_slice(b"MICROVM     ");
    header[34..36].copy_from_slice(&count.to_le_bytes());
    header[36..40].copy_from_slice(&LAPIC_ADDR.to_le_bytes());
    let mut table = header.to_vec();
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = [0u8; FLOATING_SIZE];
    floating[0..4].copy_from_slice(b"_MP_");
    let table_addr = (MPTABLE_START + FLOATING_SIZE as u64) as u32;
    floating[4..8].copy_from_slice(&table_addr.to_le_bytes());
    floating[8] = 1; // length in 16-byte paragraphs
    floating[9] = 4; // spec revision 1.4
                     // feature byte 1 = 0: a configuration table is present (no default
                     // configuration); feature byte 2 bit 7 = 0: no IMCR, virtual wire mode.
    floating[10] = checksum(&floating);

    let mut out = floating.to_vec();
    out.extend_from_slice(&table);
    Ok(out)
}

/// Writes the MP table for `cpus` CPUs into guest memory.
pub fn setup(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MptableError> {
    let bytes = build(cpus)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

/// The byte that makes `bytes` sum to 0 mod 256 (its own slot being 0).
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    fn u16_at(b: &[u8], o: usize) -> u16 {
        u16::from_le_bytes([b[o], b[o + 1]])
    }

    fn u32_at(b: &[u8], o: usize) -> u32 {
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
    }

    #[test]
    fn floating_pointer_per_spec_4_1() {
        let t = build(2).unwrap();
        let fp = &t[..16];
        assert_eq!(&fp[0..4], b"_MP_");
        assert_eq!(
            u32_at(fp, 4) as u64,
            MPTABLE_START + 16,
            "points at the table"
        );
        assert_eq!((fp[8], fp[9]), (1, 4), "one paragraph, revision 1.4");
        assert_eq!(sum(fp), 0, "checksum");
        assert_eq!(fp[11], 0, "feature 1: table present, no default config");
        assert_eq!(MPTABLE_START % 16, 0, "paragraph aligned");
    }

    #[test]
    fn configuration_table_header_per_spec_4_2() {
        let t = build(3).unwrap();
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        assert_eq!(u16_at(table, 4) as usize, table.len(), "base table length");
        assert_eq!(table[6], 4);
        assert_eq!(sum(table), 0, "checksum over the whole base table");
        assert_eq!(u32_at(table, 36), 0xfee0_0000, "local APIC address");
        // 3 CPUs, bus, IOAPIC, 24 interrupt sources, 2 local sources.
        assert_eq!(u16_at(table, 34), 3 + 1 + 1 + 24 + 2, "entry count");
        assert_eq!(table.len(), 44 + 3 * 20 + (1 + 1 + 24 + 2) * 8);
    }

    #[test]
    fn entries_describe_cpus_ioapic_and_wiring() {
        let t = build(2).unwrap();
        let e = &t[16 + 44..];
        // Processors: type 0, APIC IDs 0 and 1, enabled, only 0 is BSP.
        assert_eq!((e[0], e[1], e[3]), (MP_PROCESSOR, 0, 0b11));
        assert_eq!((e[20], e[21], e[23]), (MP_PROCESSOR, 1, 0b01));
        let rest = &e[40..];
        assert_eq!(
            &rest[0..8],
            &[MP_BUS, 0, b'I', b'S', b'A', b' ', b' ', b' ']
        );
        let io = &rest[8..16];
        assert_eq!(
            (io[0], io[1], io[3]),
            (MP_IOAPIC, 2, 1),
            "IOAPIC ID after the CPUs, enabled"
        );
        assert_eq!(u32_at(io, 4), 0xfec0_0000);
        for pin in 0..24usize {
            let s = &rest[16 + pin * 8..24 + pin * 8];
            assert_eq!(
                s,
                &[MP_INTSRC, MP_INT, 0, 0, 0, pin as u8, 2, pin as u8],
                "IRQ {pin}"
            );
        }
        let l = &rest[16 + 24 * 8..];
        assert_eq!(
            &l[0..8],
            &[MP_LINTSRC, MP_EXTINT, 0, 0, 0, 0, 0xff, 0],
            "ExtINT on LINT0"
        );
        assert_eq!(
            &l[8..16],
            &[MP_LINTSRC, MP_NMI, 0, 0, 0, 0, 0xff, 1],
            "NMI on LINT1"
        );
        assert_eq!(l.len(), 16);
    }

    #[test]
    fn cpu_count_limits() {
        assert!(build(0).is_err());
        assert!(build(MAX_VCPUS).is_ok());
        assert!(build(255).unwrap_err().to_string().contains("255 vCPUs"));
    }

    #[test]
    fn setup_writes_the_table_into_low_memory() {
        let mem = crate::memory::create_guest_memory(16).unwrap();
        setup(&mem, 4).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&sig, b"_MP_");
        mem.read_slice(&mut sig, GuestAddress(MPTABLE_START + 16))
            .unwrap();
        assert_eq!(&sig, b"PCMP");
    }
}
