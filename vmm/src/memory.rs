//! husk-vmm's guest physical memory: the address-space layout and
//! guest RAM backed by one memfd.
//!
//! RAM is a memfd (not anonymous memory) so that vhost-user daemons
//! (virtiofsd, vhost-device-vsock) can map the very same pages when they are
//! handed the fd. RAM starts at 0; the 32-bit MMIO hole
//! [`MMIO_HOLE_START`, 4 GiB) is left out, and RAM that does not fit below
//! it continues at 4 GiB.

use std::ffi::CString;
use std::fs::File;
use vm_memory::{Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

// Low memory, below 1 MiB. The boot structures live at fixed addresses the
// way every x86 VMM (Firecracker, Cloud Hypervisor) lays them out.
/// GDT used on entry (64-bit boot protocol and PVH).
pub const GDT_START: u64 = 0x500;
/// Empty IDT loaded on entry, so no stale vector is ever used; after the
/// GDT's five entries (0x500..0x528).
pub const IDT_START: u64 = 0x540;
/// PVH `hvm_start_info`.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initrd), right after the start info.
pub const PVH_MODLIST_START: u64 = 0x6040;
/// PVH memory map (one `hvm_memmap_table_entry` per e820 range).
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// The zero page (`struct boot_params`) of the Linux 64-bit boot protocol.
/// PVH and the zero page are never used together, so 0x7000 is shared.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer; the stack grows down from here below the tables.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the 64-bit entry: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line, null-terminated.
pub const CMDLINE_START: u64 = 0x20000;
/// Largest command line we place (Linux x86 COMMAND_LINE_SIZE is 2048).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the Extended BIOS Data Area: usable RAM below 1 MiB ends here.
pub const EBDA_START: u64 = 0x9fc00;
/// Where the kernel and everything "high" goes (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO hole (virtio-mmio devices, IOAPIC, LAPIC) up to 4 GiB.
pub const MMIO_HOLE_START: u64 = 0xc000_0000;
pub const MMIO_HOLE_END: u64 = 0x1_0000_0000;

/// virtio-mmio register windows, one 4 KiB page per device from here, at
/// the start of the MMIO hole.
pub const VIRTIO_MMIO_BASE: u64 = MMIO_HOLE_START;
/// The interrupt lines virtio devices get, in order. Legacy PIC lines only
/// (no MP table / IOAPIC routing yet), skipping 0-4 (timer, keyboard,
/// cascade, COM2, COM1), 8 (RTC) and 13 (FPU).
pub const VIRTIO_IRQS: [u32; 8] = [5, 6, 7, 9, 10, 11, 12, 14];

/// Smallest guest we accept (husk-vmm-config's limit, here in the unit
/// of [`create_guest_memory`]).
const MIN_MEMORY_MIB: u64 = husk_vmm_config::MIN_MEMORY_MIB as u64;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {mib} MiB is below the minimum of {MIN_MEMORY_MIB} MiB")]
    TooSmall { mib: u64 },
    #[error("guest memory of {mib} MiB does not fit the host address space")]
    TooLarge { mib: u64 },
    #[error("memfd_create for guest RAM: {0}")]
    Memfd(#[source] nix::Error),
    #[error("sizing the guest RAM memfd to {size} bytes: {source}")]
    Resize { size: u64, source: std::io::Error },
    #[error("mapping guest RAM: {0}")]
    Mmap(#[from] vm_memory::mmap::FromRangesError),
}

/// The guest-physical ranges RAM of `size` bytes occupies: below the MMIO
/// hole, and the rest from 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_HOLE_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_HOLE_START),
            (GuestAddress(MMIO_HOLE_END), size - MMIO_HOLE_START),
        ]
    }
}

/// Guest RAM of `mib` MiB in one memfd (`husk-guest-ram`), mapped shared
/// (vm-memory maps file-backed regions MAP_SHARED).
pub fn create_guest_memory(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    if mib < MIN_MEMORY_MIB {
        return Err(MemoryError::TooSmall { mib });
    }
    let size = mib
        .checked_mul(1 << 20)
        .filter(|s| usize::try_from(*s).is_ok())
        .ok_or(MemoryError::TooLarge { mib })?;
    let name = CString::new("husk-guest-ram").expect("no NUL in a literal");
    let fd = nix::sys::memfd::memfd_create(&name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(MemoryError::Memfd)?;
    let file = std::sync::Arc::new(File::from(fd));
    file.set_len(size)
        .map_err(|source| MemoryError::Resize { size, source })?;
    let mut offset = 0u64;
    let ranges: Vec<_> = ram_ranges(size)
        .into_iter()
        .map(|(addr, len)| {
            let r = (
                addr,
                len as usize,
                Some(FileOffset::from_arc(file.clone(), offset)),
            );
            offset += len;
            r
        })
        .collect();
    Ok(GuestMemoryMmap::from_ranges_with_files(ranges)?)
}

/// The end (exclusive) of the RAM below the MMIO hole: the limit for
/// everything the boot protocols want below 4 GiB (initrd, tables).
pub fn low_ram_end(mem: &GuestMemoryMmap) -> GuestAddress {
    let end = mem
        .iter()
        .filter(|r| r.start_addr().raw_value() < MMIO_HOLE_START)
        .map(|r| r.start_addr().unchecked_add(r.len()))
        .max()
        .unwrap_or(GuestAddress(0));
    GuestAddress(end.raw_value().min(MMIO_HOLE_START))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use vm_memory::Bytes;

    #[test]
    fn small_guest_is_one_range_from_zero() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_HOLE_START));
        assert_eq!(r[1], (GuestAddress(1 << 32), (4 << 30) - MMIO_HOLE_START));
    }

    #[test]
    fn guest_ram_is_a_shared_memfd() {
        let mem = create_guest_memory(32).unwrap();
        assert_eq!(low_ram_end(&mem), GuestAddress(32 << 20));
        let region = mem.iter().next().unwrap();
        let fo = region.file_offset().expect("RAM is file backed");
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fo.file().as_raw_fd())).unwrap();
        assert!(
            link.to_string_lossy().starts_with("/memfd:husk-guest-ram"),
            "{link:?}"
        );
        // A write through the mapping is visible through the fd: MAP_SHARED.
        mem.write_obj(0xfeed_u32, GuestAddress(0x1000)).unwrap();
        let mut buf = [0u8; 4];
        nix::sys::uio::pread(fo.file(), &mut buf, 0x1000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xfeed);
    }

    #[test]
    fn too_small_guest_is_refused() {
        let e = create_guest_memory(1).unwrap_err();
        assert!(e.to_string().contains("below the minimum"), "{e}");
    }
}
