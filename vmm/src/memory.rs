//! husk-vmm's guest physical memory: the address-space layout and
//! guest RAM backed by one file: a memfd, a template's file, or a
//! template's file mapped private by a clone ([`RamBacking`]).
//!
//! RAM is a memfd (not anonymous memory) so that vhost-user daemons
//! (virtiofsd, vhost-device-vsock) can map the very same pages when they are
//! handed the fd. RAM starts at 0; the 32-bit MMIO hole
//! [`MMIO_HOLE_START`, 4 GiB) is left out, and RAM that does not fit below
//! it continues at 4 GiB, in the same file after the low part.

use std::ffi::CString;
use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    Address, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
};

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
    #[error("guest RAM file {path}: {what}: {source}")]
    File {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("guest RAM file {path}: {size} bytes, the VM's RAM is {expected}")]
    FileSize {
        path: PathBuf,
        size: u64,
        expected: u64,
    },
    #[error("guest RAM file {path}: not a regular file")]
    NotAFile { path: PathBuf },
    #[error("mapping guest RAM file {path} private: {source}")]
    MmapPrivate {
        path: PathBuf,
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    #[error("guest RAM regions: {0}")]
    Regions(#[source] vm_memory::GuestRegionCollectionError),
}

/// Where guest RAM lives.
#[derive(Debug, Clone, Copy)]
pub enum RamBacking<'a> {
    /// A memfd of its own: an ordinary VM.
    Memfd,
    /// A new file at this path (refused if it exists), mapped shared: a
    /// template's RAM, which its snapshot leaves in the file.
    NewFile(&'a Path),
    /// A template's file, opened read-only and mapped private (copy on
    /// write): a clone's RAM. Pages the clone never writes stay the
    /// file's, shared with the template and every other clone.
    Template(&'a Path),
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
    guest_memory(mib, RamBacking::Memfd)
}

/// Guest RAM of `mib` MiB in `backing`.
pub fn guest_memory(mib: u64, backing: RamBacking) -> Result<GuestMemoryMmap, MemoryError> {
    if mib < MIN_MEMORY_MIB {
        return Err(MemoryError::TooSmall { mib });
    }
    let size = mib
        .checked_mul(1 << 20)
        .filter(|s| usize::try_from(*s).is_ok())
        .ok_or(MemoryError::TooLarge { mib })?;
    let file = match backing {
        RamBacking::Memfd => {
            let name = CString::new("husk-guest-ram").expect("no NUL in a literal");
            let flags = nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC;
            let fd = nix::sys::memfd::memfd_create(&name, flags).map_err(MemoryError::Memfd)?;
            File::from(fd)
        }
        RamBacking::NewFile(path) => {
            let err = |what| {
                move |source| MemoryError::File {
                    path: path.into(),
                    what,
                    source,
                }
            };
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(err("creating it (it must not exist)"))?
        }
        RamBacking::Template(path) => return template_memory(path, size),
    };
    let file = std::sync::Arc::new(file);
    file.set_len(size)
        .map_err(|source| MemoryError::Resize { size, source })?;
    let ranges: Vec<_> = file_ranges(size)
        .into_iter()
        .map(|(addr, len, offset)| {
            (
                addr,
                len as usize,
                Some(FileOffset::from_arc(file.clone(), offset)),
            )
        })
        .collect();
    Ok(GuestMemoryMmap::from_ranges_with_files(ranges)?)
}

/// [`ram_ranges`] with each range's offset in the RAM file.
fn file_ranges(size: u64) -> Vec<(GuestAddress, u64, u64)> {
    let mut offset = 0u64;
    ram_ranges(size)
        .into_iter()
        .map(|(addr, len)| {
            let r = (addr, len, offset);
            offset += len;
            r
        })
        .collect()
}

/// A clone's RAM: the template's file at `path`, which must be a regular
/// file of exactly `size` bytes, opened read-only and mapped private, so
/// nothing the clone does reaches the file.
fn template_memory(path: &Path, size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let err = |what| {
        move |source| MemoryError::File {
            path: path.into(),
            what,
            source,
        }
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(err("opening it read-only"))?;
    let meta = file.metadata().map_err(err("fstat"))?;
    if !meta.file_type().is_file() {
        return Err(MemoryError::NotAFile { path: path.into() });
    }
    if meta.len() != size {
        return Err(MemoryError::FileSize {
            path: path.into(),
            size: meta.len(),
            expected: size,
        });
    }
    let file = std::sync::Arc::new(file);
    let mut regions = Vec::new();
    for (addr, len, offset) in file_ranges(size) {
        let mapping = MmapRegionBuilder::new(len as usize)
            .with_file_offset(FileOffset::from_arc(file.clone(), offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|source| MemoryError::MmapPrivate {
                path: path.into(),
                source,
            })?;
        // `addr + len` is below 1 TiB + 4 GiB: no overflow.
        regions.push(GuestRegionMmap::new(mapping, addr).expect("RAM ranges do not overflow"));
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)
}

/// Writes guest RAM back to its file (msync): a template's memory on a
/// disk-backed file is complete once this returns (on tmpfs it already
/// is). Only for shared mappings; a private one has nothing to write.
pub fn sync_to_file(mem: &GuestMemoryMmap) -> std::io::Result<()> {
    for region in mem.iter() {
        // SAFETY: the range is exactly one mapping `mem` owns and keeps
        // for the call; msync reads page state and writes nothing in it.
        let r =
            unsafe { libc::msync(region.as_ptr().cast(), region.len() as usize, libc::MS_SYNC) };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
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
    fn a_template_file_is_shared_and_a_clone_maps_it_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        let template = guest_memory(16, RamBacking::NewFile(&path)).unwrap();
        template
            .write_obj(0x1234_u32, GuestAddress(0x2000))
            .unwrap();
        sync_to_file(&template).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 16 << 20);
        // A second template on the same file is refused: it must be new.
        let e = guest_memory(16, RamBacking::NewFile(&path)).unwrap_err();
        assert!(e.to_string().contains("it must not exist"), "{e}");

        let clone = guest_memory(16, RamBacking::Template(&path)).unwrap();
        assert_eq!(clone.read_obj::<u32>(GuestAddress(0x2000)).unwrap(), 0x1234);
        clone.write_obj(0x5678_u32, GuestAddress(0x2000)).unwrap();
        assert_eq!(clone.read_obj::<u32>(GuestAddress(0x2000)).unwrap(), 0x5678);
        // The clone's write stayed in its private copy.
        let mut buf = [0u8; 4];
        let f = File::open(&path).unwrap();
        nix::sys::uio::pread(&f, &mut buf, 0x2000).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0x1234);
        assert_eq!(
            template.read_obj::<u32>(GuestAddress(0x2000)).unwrap(),
            0x1234
        );
    }

    #[test]
    fn a_template_file_of_another_size_or_kind_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("memory");
        drop(guest_memory(16, RamBacking::NewFile(&path)).unwrap());
        let e = guest_memory(32, RamBacking::Template(&path)).unwrap_err();
        let want = format!(
            "{}: 16777216 bytes, the VM's RAM is 33554432",
            path.display()
        );
        assert!(e.to_string().contains(&want), "{e}");
        let e = guest_memory(16, RamBacking::Template(dir.path())).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = guest_memory(16, RamBacking::Template(&dir.path().join("x"))).unwrap_err();
        assert!(e.to_string().contains("opening it read-only"), "{e}");
    }

    #[test]
    fn too_small_guest_is_refused() {
        let e = create_guest_memory(1).unwrap_err();
        assert!(e.to_string().contains("below the minimum"), "{e}");
    }
}
