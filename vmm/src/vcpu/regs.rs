//! The architectural state a vCPU starts in: GDT and segment registers,
//! control registers, identity page tables for the 64-bit entry, general
//! registers, FPU, boot MSRs, CPUID and the local APIC's LINT pins.
//!
//! Hand-written rather than taken from a crate: rust-vmm has no published
//! crate for x86 vCPU boot state (Firecracker and Cloud Hypervisor each
//! keep their own `arch` module). The values follow the two entry
//! protocols we support: Linux's 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst) and Xen's PVH start of day
//! (docs/misc/pvh.pandoc).

use crate::boot::loader::{BootEntry, EntryMode};
use crate::memory::{
    GuestMemoryMmap, BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START,
};
use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

// Control register and EFER bits.
pub const X86_CR0_PE: u64 = 1 << 0;
pub const X86_CR0_PG: u64 = 1 << 31;
pub const X86_CR4_PAE: u64 = 1 << 5;
pub const EFER_LME: u64 = 1 << 8;
pub const EFER_LMA: u64 = 1 << 10;

/// GDT indices. The 64-bit boot protocol requires `__BOOT_CS` = 0x10 and
/// `__BOOT_DS` = 0x18; PVH leaves selectors unspecified, so both modes use
/// the same slots.
pub const GDT_CODE: u16 = 2;
pub const GDT_DATA: u16 = 3;
pub const GDT_TSS: u16 = 4;
/// The selectors of those slots, as the tests and the test guest's
/// assembler check them (the boot path builds them from the table).
#[cfg(any(test, feature = "test-util"))]
pub const BOOT_CS: u16 = GDT_CODE * 8;
#[cfg(any(test, feature = "test-util"))]
pub const BOOT_DS: u16 = GDT_DATA * 8;

/// Identity map of the first GiB with 2 MiB pages: enough for the kernel's
/// early code, which builds its own page tables right away.
#[cfg(test)]
pub const IDENTITY_MAPPED_BYTES: u64 = 1 << 30;

// Page table entry bits.
const PTE_PRESENT: u64 = 1 << 0;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_HUGE: u64 = 1 << 7;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing {what} to guest memory: {source}")]
    Memory {
        what: &'static str,
        source: vm_memory::GuestMemoryError,
    },
}

// The IDT must not overwrite the GDT's last entry.
const _: () = assert!(IDT_START >= GDT_START + 5 * 8);

/// Encodes a GDT descriptor. `flags` holds the access byte in bits 0-7 and
/// the G, D/B, L, AVL nibble in bits 12-15, the layout Linux's
/// `GDT_ENTRY()` macro uses.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The `kvm_segment` a descriptor loads into a segment register.
pub fn segment_from_gdt(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = (entry & 0xffff) | ((entry >> 32) & 0x000f_0000);
    let g = ((entry >> 55) & 1) as u8;
    let limit = if g == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = ((entry >> 47) & 1) as u8;
    kvm_segment {
        base,
        limit: limit as u32,
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

/// The GDT for an entry mode: null, unused, code, data, TSS.
pub fn gdt(mode: EntryMode) -> [u64; 5] {
    let code = match mode {
        // Present, ring 0, code, execute/read, accessed; G=1, L=1.
        EntryMode::Linux64 => gdt_entry(0xa09b, 0, 0xfffff),
        // Present, ring 0, code, execute/read, accessed; G=1, D=1 (32-bit).
        EntryMode::Pvh => gdt_entry(0xc09b, 0, 0xfffff),
    };
    [
        0,
        0,
        code,
        // Present, ring 0, data, read/write, accessed; G=1, B=1: 4 GiB flat.
        gdt_entry(0xc093, 0, 0xfffff),
        // Present, 32-bit TSS (busy), byte granular, limit 0x67 (PVH asks
        // for exactly this; the 64-bit protocol does not care).
        gdt_entry(0x008b, 0, 0x67),
    ]
}

/// Writes GDT, an empty IDT and, for the 64-bit entry, the identity page
/// tables; fills `sregs` to match.
pub fn setup_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    sregs: &mut kvm_sregs,
) -> Result<(), RegsError> {
    let table = gdt(mode);
    for (i, entry) in table.iter().enumerate() {
        write(mem, GDT_START + i as u64 * 8, *entry, "the GDT")?;
    }
    write(mem, IDT_START, 0u64, "the IDT")?;
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (table.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(table[GDT_CODE as usize], GDT_CODE);
    let data = segment_from_gdt(table[GDT_DATA as usize], GDT_DATA);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(table[GDT_TSS as usize], GDT_TSS);

    match mode {
        EntryMode::Pvh => {
            // PE only; paging, PAE and long mode off (all other writable
            // bits cleared, as the PVH spec says).
            sregs.cr0 = X86_CR0_PE;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        EntryMode::Linux64 => {
            setup_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 = X86_CR4_PAE;
            sregs.cr0 = X86_CR0_PE | X86_CR0_PG;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    Ok(())
}

/// `PML4[0]` -> `PDPT[0]` -> PD with 512 2 MiB pages: virtual = physical for
/// the first GiB.
pub fn setup_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    const WHAT: &str = "the page tables";
    write(
        mem,
        PML4_START,
        PDPTE_START | PTE_PRESENT | PTE_WRITABLE,
        WHAT,
    )?;
    write(
        mem,
        PDPTE_START,
        PDE_START | PTE_PRESENT | PTE_WRITABLE,
        WHAT,
    )?;
    for i in 0..512u64 {
        let entry = (i << 21) | PTE_PRESENT | PTE_WRITABLE | PTE_HUGE;
        write(mem, PDE_START + i * 8, entry, WHAT)?;
    }
    Ok(())
}

/// General registers on entry.
pub fn boot_regs(boot: &BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        // Bit 1 is reserved and always 1; IF, TF and VM clear.
        rflags: 0x2,
        rip: boot.entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        ..Default::default()
    };
    match boot.mode {
        EntryMode::Pvh => regs.rbx = boot.boot_info.0,
        EntryMode::Linux64 => regs.rsi = boot.boot_info.0,
    }
    regs
}

/// x87 and SSE state after reset as Linux expects it: FCW 0x37f (all
/// exceptions masked), MXCSR 0x1f80.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

pub const MSR_IA32_SYSENTER_CS: u32 = 0x174;
pub const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
pub const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
pub const MSR_STAR: u32 = 0xc000_0081;
pub const MSR_LSTAR: u32 = 0xc000_0082;
pub const MSR_CSTAR: u32 = 0xc000_0083;
pub const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
pub const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
pub const MSR_IA32_TSC: u32 = 0x10;
pub const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
pub const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
/// IA32_MISC_ENABLE bit 0: fast string operations.
pub const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled (bit 11), default type write-back (6).
pub const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// MSRs reset to a known state: syscall entry points zero until the kernel
/// sets them, TSC from zero, fast strings on, write-back default memory
/// type (without it the guest maps all RAM uncached and crawls).
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Local APIC register offsets and delivery modes.
pub const APIC_LVT0: usize = 0x350;
pub const APIC_LVT1: usize = 0x360;
pub const APIC_MODE_EXTINT: u32 = 0x7;
pub const APIC_MODE_NMI: u32 = 0x4;

/// Wires the local APIC like a PC: LINT0 takes the 8259 PIC's interrupts
/// (ExtINT), LINT1 is the NMI pin. Without this the guest never sees the
/// PIC's timer or the serial IRQ before it sets up the IOAPIC.
pub fn setup_lapic(lapic: &mut kvm_lapic_state) {
    let set_mode = |lapic: &mut kvm_lapic_state, reg: usize, mode: u32| {
        let old = lapic_reg(lapic, reg);
        // Delivery mode is bits 8-10; clearing bit 16 unmasks the pin.
        let new = (old & !0x1_0700) | (mode << 8);
        set_lapic_reg(lapic, reg, new);
    };
    set_mode(lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_mode(lapic, APIC_LVT1, APIC_MODE_NMI);
}

pub fn lapic_reg(lapic: &kvm_lapic_state, reg: usize) -> u32 {
    let b = &lapic.regs[reg..reg + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, reg: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[reg + i] = *byte as _;
    }
}

/// CPUID leaf 1 ECX bit 31: "running under a hypervisor".
pub const CPUID_HYPERVISOR_BIT: u32 = 1 << 31;

/// Adjusts what KVM supports for vCPU `index` of `count`: the APIC ID in
/// leaf 1 (EBX 31:24) and leaves 0xb/0x1f (EDX), the logical processor
/// count in leaf 1 (EBX 23:16), and the hypervisor bit so the guest looks
/// for paravirtual features.
pub fn setup_cpuid(cpuid: &mut kvm_bindings::CpuId, index: u8, count: u8) {
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(index) << 24) | (u32::from(count) << 16);
                entry.ecx |= CPUID_HYPERVISOR_BIT;
                if count > 1 {
                    entry.edx |= 1 << 28; // HTT: more than one logical CPU
                }
            }
            0xb | 0x1f => entry.edx = u32::from(index),
            _ => {}
        }
    }
}

fn write<T: vm_memory::ByteValued>(
    mem: &GuestMemoryMmap,
    addr: u64,
    val: T,
    what: &'static str,
) -> Result<(), RegsError> {
    mem.write_obj(val, GuestAddress(addr))
        .map_err(|source| RegsError::Memory { what, source })
}

#[cfg(test)]
mod tests {
    //! Checked against Documentation/arch/x86/boot.rst ("64-bit boot
    //! protocol"), Xen's docs/misc/pvh.pandoc and the SDM's descriptor and
    //! paging formats.
    use super::*;
    use crate::memory::create_guest_memory;

    #[test]
    fn gdt_entries_match_linux_boot_gdt_values() {
        // The values Linux's own boot GDT uses (arch/x86/boot/compressed).
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc09b, 0, 0xfffff), 0x00cf_9b00_0000_ffff);
        assert_eq!(gdt_entry(0xc093, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        // Base and limit bits land in their split fields.
        let e = gdt_entry(0x0093, 0x1234_5678, 0xabcde);
        let s = segment_from_gdt(e, 1);
        assert_eq!((s.base, s.limit), (0x1234_5678, 0xabcde));
    }

    #[test]
    fn linux64_segments_are_flat_boot_cs_and_boot_ds() {
        let t = gdt(EntryMode::Linux64);
        assert_eq!(t[0], 0, "null descriptor");
        let cs = segment_from_gdt(t[GDT_CODE as usize], GDT_CODE);
        assert_eq!(cs.selector, 0x10, "__BOOT_CS");
        assert_eq!((cs.base, cs.limit, cs.g), (0, 0xffff_ffff, 1), "4G flat");
        assert_eq!(cs.type_, 0xb, "code, execute/read, accessed");
        assert_eq!((cs.s, cs.dpl, cs.present), (1, 0, 1));
        assert_eq!((cs.l, cs.db), (1, 0), "64-bit code: L=1 requires D=0");
        let ds = segment_from_gdt(t[GDT_DATA as usize], GDT_DATA);
        assert_eq!(ds.selector, 0x18, "__BOOT_DS");
        assert_eq!((ds.base, ds.limit, ds.g), (0, 0xffff_ffff, 1), "4G flat");
        assert_eq!(ds.type_, 0x3, "data, read/write, accessed");
        assert_eq!((ds.s, ds.db, ds.present, ds.unusable), (1, 1, 1, 0));
    }

    #[test]
    fn pvh_segments_are_32bit_flat_with_a_0x67_tss() {
        let t = gdt(EntryMode::Pvh);
        let cs = segment_from_gdt(t[GDT_CODE as usize], GDT_CODE);
        assert_eq!((cs.base, cs.limit), (0, 0xffff_ffff));
        assert_eq!((cs.l, cs.db, cs.type_), (0, 1, 0xb), "32-bit read/execute");
        let ds = segment_from_gdt(t[GDT_DATA as usize], GDT_DATA);
        assert_eq!((ds.base, ds.limit, ds.db, ds.type_), (0, 0xffff_ffff, 1, 3));
        let tr = segment_from_gdt(t[GDT_TSS as usize], GDT_TSS);
        assert_eq!(
            (tr.base, tr.limit, tr.g),
            (0, 0x67, 0),
            "base 0, limit 0x67"
        );
        assert_eq!((tr.type_, tr.s, tr.present), (0xb, 0, 1), "busy 32-bit TSS");
    }

    #[test]
    fn linux64_sregs_enable_long_mode_with_identity_paging() {
        let mem = create_guest_memory(16).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_sregs(&mem, EntryMode::Linux64, &mut sregs).unwrap();
        assert_eq!(
            sregs.cr0 & (X86_CR0_PE | X86_CR0_PG),
            X86_CR0_PE | X86_CR0_PG
        );
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cr4 & X86_CR4_PAE, X86_CR4_PAE);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.selector, sregs.ds.selector), (BOOT_CS, BOOT_DS));
        for s in [sregs.es, sregs.fs, sregs.gs, sregs.ss] {
            assert_eq!(s.selector, BOOT_DS);
        }
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (GDT_START, 5 * 8 - 1));
        assert_eq!(sregs.idt.base, IDT_START);
        // The GDT in guest memory is the one the segments came from.
        for (i, e) in gdt(EntryMode::Linux64).iter().enumerate() {
            let got: u64 = mem
                .read_obj(GuestAddress(GDT_START + 8 * i as u64))
                .unwrap();
            assert_eq!(got, *e, "GDT[{i}]");
        }
    }

    #[test]
    fn identity_page_tables_map_the_first_gib_with_2mib_pages() {
        let mem = create_guest_memory(16).unwrap();
        setup_page_tables(&mem).unwrap();
        let at = |a: u64| -> u64 { mem.read_obj(GuestAddress(a)).unwrap() };
        assert_eq!(
            at(PML4_START),
            PDPTE_START | 0x3,
            "PML4[0]: present, writable"
        );
        assert_eq!(at(PML4_START + 8), 0, "PML4[1] empty");
        assert_eq!(at(PDPTE_START), PDE_START | 0x3, "PDPT[0]");
        assert_eq!(at(PDPTE_START + 8), 0, "PDPT[1] empty");
        for i in [0u64, 1, 255, 511] {
            assert_eq!(
                at(PDE_START + 8 * i),
                (i << 21) | 0x83,
                "PD[{i}]: 2 MiB page"
            );
        }
        assert_eq!((511u64 << 21) + (1 << 21), IDENTITY_MAPPED_BYTES);
    }

    #[test]
    fn pvh_sregs_have_paging_off_and_cr4_clear() {
        let mem = create_guest_memory(16).unwrap();
        let mut sregs = kvm_sregs {
            cr4: 0xffff,
            efer: 0xd01,
            ..Default::default()
        };
        setup_sregs(&mem, EntryMode::Pvh, &mut sregs).unwrap();
        assert_eq!(sregs.cr0, X86_CR0_PE);
        assert_eq!((sregs.cr4, sregs.efer), (0, 0));
        assert_eq!((sregs.tr.limit, sregs.tr.base), (0x67, 0));
    }

    #[test]
    fn entry_registers_per_mode() {
        let linux = BootEntry {
            entry: GuestAddress(0x100_0000),
            mode: EntryMode::Linux64,
            boot_info: GuestAddress(0x7000),
        };
        let r = boot_regs(&linux);
        assert_eq!((r.rip, r.rsi, r.rbx), (0x100_0000, 0x7000, 0));
        assert_eq!((r.rsp, r.rflags), (BOOT_STACK_POINTER, 2));
        let pvh = BootEntry {
            mode: EntryMode::Pvh,
            boot_info: GuestAddress(0x6000),
            ..linux
        };
        let r = boot_regs(&pvh);
        assert_eq!((r.rbx, r.rsi), (0x6000, 0));
        assert_eq!(
            r.rflags & ((1 << 17) | (1 << 9) | (1 << 8)),
            0,
            "VM, IF, TF"
        );
    }

    #[test]
    fn fpu_and_msrs_reset_values() {
        let fpu = boot_fpu();
        assert_eq!((fpu.fcw, fpu.mxcsr), (0x37f, 0x1f80));
        let msrs = boot_msrs();
        let get = |i| msrs.iter().find(|m| m.index == i).map(|m| m.data);
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806), "MTRRs on, WB");
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1), "fast strings");
        assert_eq!(get(MSR_LSTAR), Some(0));
    }

    #[test]
    fn lapic_lint0_is_extint_and_lint1_is_nmi_unmasked() {
        let mut lapic = kvm_lapic_state::default();
        // As KVM resets them: masked (bit 16), plus a trigger bit to keep.
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x1_8000);
        set_lapic_reg(&mut lapic, APIC_LVT1, 0x1_0000);
        setup_lapic(&mut lapic);
        assert_eq!(
            lapic_reg(&lapic, APIC_LVT0),
            0x8700,
            "ExtINT, unmasked, level kept"
        );
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0x0400, "NMI, unmasked");
    }

    #[test]
    fn cpuid_carries_apic_id_count_and_hypervisor_bit() {
        let mut cpuid = kvm_bindings::CpuId::new(3).unwrap();
        let e = cpuid.as_mut_slice();
        e[0].function = 1;
        e[0].ebx = 0xff00_0800; // stale APIC ID, CLFLUSH size 8
        e[1].function = 0xb;
        e[2].function = 0x8000_0001;
        e[2].ecx = 0x1234;
        setup_cpuid(&mut cpuid, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(
            e[0].ebx, 0x0304_0800,
            "APIC ID 3, 4 logical CPUs, CLFLUSH kept"
        );
        assert_ne!(e[0].ecx & CPUID_HYPERVISOR_BIT, 0);
        assert_ne!(e[0].edx & (1 << 28), 0, "HTT with more than one CPU");
        assert_eq!(e[1].edx, 3, "x2APIC ID");
        assert_eq!(e[2].ecx, 0x1234, "other leaves untouched");
    }
}
