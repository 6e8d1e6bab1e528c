//! Putting a Linux guest into guest memory: the kernel (ELF `vmlinux` with
//! or without a PVH note, or bzImage) through linux-loader, the command
//! line, the initrd, the e820 map, and the boot structure the entry point
//! expects (`hvm_start_info` for PVH, the zero page otherwise).
//!
//! Everything here runs before any vCPU exists, so bad input (not a kernel,
//! an initrd that does not fit, a command line that is too long) ends the
//! VMM with an error that names the file or the size.

use crate::memory::{
    low_ram_end, GuestMemoryMmap, CMDLINE_MAX_SIZE, CMDLINE_START, EBDA_START, HIMEM_START,
    MMIO_HOLE_START, PVH_INFO_START, PVH_MEMMAP_START, PVH_MODLIST_START, ZERO_PAGE_START,
};
use linux_loader::configurator::{
    linux::LinuxBootConfigurator, pvh::PvhBootConfigurator, BootConfigurator, BootParams,
};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{bzimage::BzImage, Cmdline, KernelLoader};
use std::fs::File;
use std::path::{Path, PathBuf};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

/// e820 type of usable RAM (same value in the PVH memory map).
pub const E820_RAM: u32 = 1;
/// "HdrS": the setup header magic of boot protocol 2.00+.
pub const HDRS_MAGIC: u32 = 0x5372_6448;
/// The boot sector signature the kernel checks in `boot_flag`.
pub const BOOT_FLAG_MAGIC: u16 = 0xaa55;
/// `type_of_loader` 0xff: "undefined" boot loader, as Firecracker and
/// QEMU's direct kernel boot without a registered loader id.
pub const LOADER_TYPE_UNDEFINED: u8 = 0xff;
/// `hvm_start_info.magic` ("xEn3" with the top bit of '3' cleared).
pub const PVH_START_MAGIC: u32 = 0x336e_c578;
/// Version 1 of `hvm_start_info` has `memmap_paddr`/`memmap_entries`.
pub const PVH_START_VERSION: u32 = 1;
/// The 64-bit entry point is 0x200 into the protected-mode kernel.
pub const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// `xloadflags` bit: the kernel has the 64-bit entry point.
pub const XLF_KERNEL_64: u16 = 1;
/// Default `kernel_alignment` the zero page carries for ELF kernels (16 MiB,
/// CONFIG_PHYSICAL_ALIGN of x86_64 defconfig).
pub const KERNEL_ALIGNMENT: u32 = 0x100_0000;
/// The initrd is page aligned: the kernel frees it by pages.
pub const INITRD_ALIGN: u64 = 0x1000;

#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("kernel {path}: cannot open: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel {path}: neither an ELF vmlinux nor a bzImage (no ELF magic, no \"HdrS\" setup header)")]
    UnknownFormat { path: PathBuf },
    #[error("kernel {path}: {source}")]
    Load {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    #[error("kernel {path}: bzImage without a 64-bit entry point (xloadflags {xloadflags:#x})")]
    NotX86_64 { path: PathBuf, xloadflags: u16 },
    #[error("initrd {path}: cannot open: {source}")]
    OpenInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("initrd {path} is {size} bytes but only {room} bytes of guest RAM are free between the kernel end {kernel_end:#x} and {limit:#x}")]
    InitrdTooBig {
        path: PathBuf,
        size: u64,
        room: u64,
        kernel_end: u64,
        limit: u64,
    },
    #[error("initrd {path}: reading it into guest memory: {source}")]
    ReadInitrd {
        path: PathBuf,
        source: vm_memory::GuestMemoryError,
    },
    #[error("kernel command line is {len} bytes, the limit is {max} (with the terminating NUL)")]
    CmdlineTooLong { len: usize, max: usize },
    #[error("kernel command line has a NUL byte at offset {0}; the guest would cut it there")]
    CmdlineNul(usize),
    #[error("kernel command line: {0}")]
    Cmdline(#[source] linux_loader::cmdline::Error),
    #[error("writing the kernel command line to guest memory: {0}")]
    WriteCmdline(#[source] linux_loader::loader::Error),
    #[error("writing the boot parameters to guest memory: {0}")]
    BootParams(#[source] linux_loader::configurator::Error),
}

/// How the vCPU enters the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// PVH: 32-bit protected mode, paging off, `%ebx` = `hvm_start_info`.
    Pvh,
    /// Linux 64-bit boot protocol: long mode, identity paging,
    /// `%rsi` = zero page.
    Linux64,
}

/// The loaded kernel: where to enter it and how.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub mode: EntryMode,
    /// First byte after the kernel image (incl. bss), for initrd placement.
    pub kernel_end: u64,
    /// The bzImage setup header, copied into the zero page.
    pub setup_header: Option<setup_header>,
}

/// Where the vCPU starts and with which boot structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootEntry {
    pub entry: GuestAddress,
    pub mode: EntryMode,
    /// `hvm_start_info` (PVH) or zero page (Linux64) address.
    pub boot_info: GuestAddress,
}

/// The initrd as placed in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitrdPlacement {
    pub addr: GuestAddress,
    pub size: u64,
}

/// Loads kernel, initrd and command line and writes the boot structure.
pub fn load_guest(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<BootEntry, LoaderError> {
    let loaded = load_kernel(mem, kernel)?;
    let cmdline_max = match loaded.setup_header {
        // Boot protocol 2.06+ states the limit (without the NUL).
        Some(h) if h.version >= 0x0206 => (h.cmdline_size as usize + 1).min(CMDLINE_MAX_SIZE),
        _ => CMDLINE_MAX_SIZE,
    };
    write_cmdline(mem, cmdline, cmdline_max)?;
    let initrd = match initrd {
        Some(path) => Some(load_initrd(mem, path, &loaded)?),
        None => None,
    };
    let e820 = e820_map(mem);
    let boot_info = match loaded.mode {
        EntryMode::Pvh => {
            write_pvh_start_info(mem, initrd, &e820)?;
            GuestAddress(PVH_INFO_START)
        }
        EntryMode::Linux64 => {
            let zp = zero_page(loaded.setup_header, cmdline.len() + 1, initrd, &e820);
            let params = BootParams::new(&zp, GuestAddress(ZERO_PAGE_START));
            LinuxBootConfigurator::write_bootparams(&params, mem)
                .map_err(LoaderError::BootParams)?;
            GuestAddress(ZERO_PAGE_START)
        }
    };
    Ok(BootEntry {
        entry: loaded.entry,
        mode: loaded.mode,
        boot_info,
    })
}

/// Loads an ELF vmlinux (PVH entry if it has the note, else its 64-bit
/// `e_entry`) or a bzImage (64-bit entry at `code32_start + 0x200`).
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, LoaderError> {
    use linux_loader::loader::{bzimage::Error as BzError, elf::Error as ElfError, Error};
    let mut file = File::open(path).map_err(|source| LoaderError::OpenKernel {
        path: path.into(),
        source,
    })?;
    let load_err = |source| LoaderError::Load {
        path: path.into(),
        source,
    };
    let himem = Some(GuestAddress(HIMEM_START));
    match Elf::load(mem, None, &mut file, himem) {
        Ok(r) => {
            let (entry, mode) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => (addr, EntryMode::Pvh),
                _ => (r.kernel_load, EntryMode::Linux64),
            };
            return Ok(LoadedKernel {
                entry,
                mode,
                kernel_end: r.kernel_end,
                setup_header: None,
            });
        }
        // Not ELF (or too short to have a header): try bzImage.
        Err(Error::Elf(ElfError::InvalidElfMagicNumber | ElfError::ReadElfHeader)) => {}
        Err(e) => return Err(load_err(e)),
    }
    match BzImage::load(mem, None, &mut file, himem) {
        Ok(r) => {
            let hdr = r
                .setup_header
                .expect("BzImage::load returns the setup header");
            if hdr.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoaderError::NotX86_64 {
                    path: path.into(),
                    xloadflags: hdr.xloadflags,
                });
            }
            Ok(LoadedKernel {
                entry: r.kernel_load.unchecked_add(BZIMAGE_64BIT_ENTRY_OFFSET),
                mode: EntryMode::Linux64,
                kernel_end: r.kernel_end,
                setup_header: Some(hdr),
            })
        }
        Err(Error::Bzimage(
            BzError::InvalidBzImage | BzError::ReadBzImageHeader | BzError::SeekBzImageHeader,
        )) => Err(LoaderError::UnknownFormat { path: path.into() }),
        Err(e) => Err(load_err(e)),
    }
}

/// Writes the null-terminated command line at [`CMDLINE_START`].
/// `max` counts the terminating NUL.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, max: usize) -> Result<(), LoaderError> {
    if cmdline.len() + 1 > max {
        return Err(LoaderError::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    if let Some(pos) = cmdline.find('\0') {
        return Err(LoaderError::CmdlineNul(pos));
    }
    let cmdline = Cmdline::try_from(cmdline, max).map_err(LoaderError::Cmdline)?;
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cmdline)
        .map_err(LoaderError::WriteCmdline)
}

/// The highest page-aligned address for an initrd of `size` bytes that
/// ends at or below `limit` and starts at or above `kernel_end` — where
/// QEMU and the boot protocol's "as high as possible" put it, away from
/// the kernel's decompression and bss.
pub fn initrd_address(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    let start = limit.checked_sub(size)? & !(INITRD_ALIGN - 1);
    (start >= kernel_end).then_some(start)
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel: &LoadedKernel,
) -> Result<InitrdPlacement, LoaderError> {
    let mut file = File::open(path).map_err(|source| LoaderError::OpenInitrd {
        path: path.into(),
        source,
    })?;
    let size = file
        .metadata()
        .map_err(|source| LoaderError::OpenInitrd {
            path: path.into(),
            source,
        })?
        .len();
    let mut limit = low_ram_end(mem).raw_value();
    if let Some(h) = kernel.setup_header {
        // initrd_addr_max is the highest address the initrd may occupy.
        if h.initrd_addr_max != 0 {
            limit = limit.min(u64::from(h.initrd_addr_max) + 1);
        }
    }
    let addr = initrd_address(size, kernel.kernel_end, limit).ok_or(LoaderError::InitrdTooBig {
        path: path.into(),
        size,
        room: limit.saturating_sub(kernel.kernel_end),
        kernel_end: kernel.kernel_end,
        limit,
    })?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize)
        .map_err(|source| LoaderError::ReadInitrd {
            path: path.into(),
            source,
        })?;
    Ok(InitrdPlacement {
        addr: GuestAddress(addr),
        size,
    })
}

/// The e820 map: RAM below the EBDA, RAM from 1 MiB to the MMIO hole (or
/// the end of RAM), RAM above 4 GiB. What lies between (EBDA, legacy
/// video, BIOS area, the hole) is left out, which Linux treats as reserved.
pub fn e820_map(mem: &GuestMemoryMmap) -> Vec<boot_e820_entry> {
    let mut map = vec![boot_e820_entry {
        addr: 0,
        size: EBDA_START,
        r#type: E820_RAM,
    }];
    for region in mem.iter() {
        let start = region.start_addr().raw_value().max(HIMEM_START);
        let end = region.start_addr().raw_value() + region.len();
        let end = if start < MMIO_HOLE_START {
            end.min(MMIO_HOLE_START)
        } else {
            end
        };
        if end > start {
            map.push(boot_e820_entry {
                addr: start,
                size: end - start,
                r#type: E820_RAM,
            });
        }
    }
    map
}

/// The zero page for the 64-bit boot protocol (Documentation/arch/x86/
/// boot.rst, "Details of header fields" and "64-bit boot protocol").
pub fn zero_page(
    setup_header: Option<setup_header>,
    cmdline_size: usize,
    initrd: Option<InitrdPlacement>,
    e820: &[boot_e820_entry],
) -> boot_params {
    let mut zp = boot_params::default();
    if let Some(h) = setup_header {
        zp.hdr = h;
    } else {
        zp.hdr.header = HDRS_MAGIC;
        zp.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    zp.hdr.boot_flag = BOOT_FLAG_MAGIC;
    zp.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    zp.hdr.cmd_line_ptr = CMDLINE_START as u32;
    zp.hdr.cmdline_size = cmdline_size as u32;
    if let Some(i) = initrd {
        // Placed below the MMIO hole, so it fits the 32-bit fields.
        zp.hdr.ramdisk_image = i.addr.raw_value() as u32;
        zp.hdr.ramdisk_size = i.size as u32;
    }
    let n = e820.len().min(zp.e820_table.len());
    zp.e820_table[..n].copy_from_slice(&e820[..n]);
    zp.e820_entries = n as u8;
    zp
}

/// The PVH start info, module list and memory map (xen/include/public/
/// arch-x86/hvm/start_info.h).
pub fn pvh_start_info(
    initrd: Option<InitrdPlacement>,
    e820: &[boot_e820_entry],
) -> (
    hvm_start_info,
    Vec<hvm_memmap_table_entry>,
    Option<hvm_modlist_entry>,
) {
    let memmap: Vec<_> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.r#type,
            reserved: 0,
        })
        .collect();
    let module = initrd.map(|i| hvm_modlist_entry {
        paddr: i.addr.raw_value(),
        size: i.size,
        ..Default::default()
    });
    let info = hvm_start_info {
        magic: PVH_START_MAGIC,
        version: PVH_START_VERSION,
        nr_modules: u32::from(module.is_some()),
        modlist_paddr: if module.is_some() {
            PVH_MODLIST_START
        } else {
            0
        },
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    (info, memmap, module)
}

fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    initrd: Option<InitrdPlacement>,
    e820: &[boot_e820_entry],
) -> Result<(), LoaderError> {
    let (info, memmap, module) = pvh_start_info(initrd, e820);
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    if let Some(m) = module {
        params.set_modules(&[m], GuestAddress(PVH_MODLIST_START));
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(LoaderError::BootParams)
}

#[cfg(test)]
mod tests {
    //! Field-by-field checks against Documentation/arch/x86/boot.rst (zero
    //! page offsets) and Xen's start_info.h (PVH). Offsets are checked on
    //! the bytes, not just the struct fields, so a layout mistake in the
    //! bindings would show too.
    use super::*;
    use crate::memory::create_guest_memory;
    use crate::test_util::guest_image;
    use vm_memory::ByteValued;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }
    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }
    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn two_ranges() -> Vec<boot_e820_entry> {
        e820_map(&create_guest_memory(64).unwrap())
    }

    #[test]
    fn e820_has_low_ram_and_ram_from_1mib() {
        let map = two_ranges();
        assert_eq!(map.len(), 2);
        assert_eq!((map[0].addr, map[0].size, map[0].r#type), (0, 0x9fc00, 1));
        assert_eq!(
            (map[1].addr, map[1].size, map[1].r#type),
            (0x10_0000, (64 << 20) - 0x10_0000, 1)
        );
    }

    #[test]
    fn e820_of_a_large_guest_skips_the_mmio_hole() {
        let mem = create_guest_memory(4096 + 512).unwrap();
        let map = e820_map(&mem);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, MMIO_HOLE_START);
        assert_eq!({ map[2].addr }, 1 << 32);
        let total: u64 = map.iter().map(|e| e.size).sum();
        // All RAM but the EBDA..1 MiB gap is listed.
        assert_eq!(total, ((4096 + 512) << 20) - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn zero_page_fields_for_an_elf_kernel() {
        let initrd = InitrdPlacement {
            addr: GuestAddress(0x3f0_0000),
            size: 0x1234,
        };
        let zp = zero_page(None, 42, Some(initrd), &two_ranges());
        let b = zp.as_slice();
        assert_eq!(b.len(), 4096, "the zero page is one page");
        assert_eq!(u16_at(b, 0x1fe), 0xaa55, "boot_flag");
        assert_eq!(&b[0x202..0x206], b"HdrS", "header");
        assert_eq!(b[0x210], 0xff, "type_of_loader: undefined");
        assert_eq!(u32_at(b, 0x218), 0x3f0_0000, "ramdisk_image");
        assert_eq!(u32_at(b, 0x21c), 0x1234, "ramdisk_size");
        assert_eq!(u32_at(b, 0x228), CMDLINE_START as u32, "cmd_line_ptr");
        assert_eq!(u32_at(b, 0x230), 0x100_0000, "kernel_alignment");
        assert_eq!(u32_at(b, 0x238), 42, "cmdline_size");
        assert_eq!(b[0x1e8], 2, "e820_entries");
        // e820_table at 0x2d0, 20 bytes per entry: addr, size, type.
        assert_eq!(u64_at(b, 0x2d0), 0);
        assert_eq!(u64_at(b, 0x2d8), 0x9fc00);
        assert_eq!(u32_at(b, 0x2e0), E820_RAM);
        assert_eq!(u64_at(b, 0x2e4), 0x10_0000);
        assert_eq!(u64_at(b, 0x2ec), (64 << 20) - 0x10_0000);
        assert_eq!(u32_at(b, 0x2f4), E820_RAM);
    }

    #[test]
    fn zero_page_keeps_the_bzimage_setup_header_and_sets_loader_fields() {
        let mem = create_guest_memory(64).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bz");
        let image = guest_image::bzimage(&guest_image::bzimage_payload(&[0xf4]));
        std::fs::write(&path, image).unwrap();
        let k = load_kernel(&mem, &path).unwrap();
        assert_eq!(k.mode, EntryMode::Linux64);
        assert_eq!(k.entry, GuestAddress(guest_image::LOAD_ADDR + 0x200));
        let zp = zero_page(k.setup_header, 10, None, &two_ranges());
        let b = zp.as_slice();
        assert_eq!(u16_at(b, 0x206), 0x020f, "version from the image");
        assert_eq!(
            u32_at(b, 0x214),
            guest_image::LOAD_ADDR as u32,
            "code32_start"
        );
        assert_eq!(u16_at(b, 0x236), 1, "xloadflags from the image");
        assert_eq!(b[0x210], 0xff, "type_of_loader set by us");
        assert_eq!(u32_at(b, 0x218), 0, "no initrd");
        assert_eq!(u32_at(b, 0x228), CMDLINE_START as u32);
        // The 64-bit entry's first byte is the payload's, loaded at 1 MiB.
        let first: u8 = mem.read_obj(k.entry).unwrap();
        assert_eq!(first, 0xf4);
    }

    #[test]
    fn pvh_start_info_fields() {
        let initrd = InitrdPlacement {
            addr: GuestAddress(0x200_0000),
            size: 77,
        };
        let (info, memmap, module) = pvh_start_info(Some(initrd), &two_ranges());
        let b = info.as_slice();
        assert_eq!(b.len(), 56);
        assert_eq!(u32_at(b, 0), 0x336e_c578, "magic");
        assert_eq!(u32_at(b, 4), 1, "version");
        assert_eq!(u32_at(b, 8), 0, "flags");
        assert_eq!(u32_at(b, 12), 1, "nr_modules");
        assert_eq!(u64_at(b, 16), PVH_MODLIST_START, "modlist_paddr");
        assert_eq!(u64_at(b, 24), CMDLINE_START, "cmdline_paddr");
        assert_eq!(u64_at(b, 32), 0, "rsdp_paddr: no ACPI");
        assert_eq!(u64_at(b, 40), PVH_MEMMAP_START, "memmap_paddr");
        assert_eq!(u32_at(b, 48), 2, "memmap_entries");
        let m = module.unwrap();
        let mb = m.as_slice();
        assert_eq!(u64_at(mb, 0), 0x200_0000, "module paddr");
        assert_eq!(u64_at(mb, 8), 77, "module size");
        assert_eq!(u64_at(mb, 16), 0, "module cmdline_paddr");
        assert_eq!(memmap.len(), 2);
        let e = memmap[1].as_slice();
        assert_eq!(e.len(), 24);
        assert_eq!(u64_at(e, 0), 0x10_0000);
        assert_eq!(u64_at(e, 8), (64 << 20) - 0x10_0000);
        assert_eq!(u32_at(e, 16), 1, "type RAM");
    }

    #[test]
    fn pvh_without_initrd_has_no_modules() {
        let (info, _, module) = pvh_start_info(None, &two_ranges());
        assert_eq!((info.nr_modules, info.modlist_paddr), (0, 0));
        assert!(module.is_none());
    }

    #[test]
    fn load_guest_writes_start_info_modules_initrd_and_cmdline_into_ram() {
        let mem = create_guest_memory(32).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, guest_image::elf(&[0xf4; 64], 0, true)).unwrap();
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, b"initrd-bytes").unwrap();
        let boot = load_guest(&mem, &kernel, Some(&initrd), "console=ttyS0").unwrap();
        assert_eq!(boot.mode, EntryMode::Pvh);
        assert_eq!(boot.entry, GuestAddress(guest_image::LOAD_ADDR));
        assert_eq!(boot.boot_info, GuestAddress(PVH_INFO_START));

        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, PVH_START_MAGIC);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!(module.size, 12);
        let mut got = [0u8; 12];
        mem.read_slice(&mut got, GuestAddress(module.paddr))
            .unwrap();
        assert_eq!(&got, b"initrd-bytes");
        assert_eq!(module.paddr % INITRD_ALIGN, 0);
        assert!(module.paddr + module.size <= 32 << 20);
        let entry: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(info.memmap_paddr + 24)).unwrap();
        assert_eq!(
            (entry.addr, entry.size),
            (HIMEM_START, (32 << 20) - HIMEM_START)
        );
        let mut cmdline = [0u8; 14];
        mem.read_slice(&mut cmdline, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&cmdline, b"console=ttyS0\0", "NUL-terminated");
    }

    #[test]
    fn elf_without_pvh_note_enters_at_e_entry_in_64bit_mode() {
        let mem = create_guest_memory(32).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinux");
        std::fs::write(&kernel, guest_image::elf(&[0x90; 32], 16, false)).unwrap();
        let k = load_kernel(&mem, &kernel).unwrap();
        assert_eq!(k.mode, EntryMode::Linux64);
        assert_eq!(k.entry, GuestAddress(guest_image::LOAD_ADDR + 16));
        assert_eq!(k.kernel_end, guest_image::LOAD_ADDR + 32);
    }

    #[test]
    fn initrd_goes_as_high_as_possible_page_aligned() {
        assert_eq!(
            initrd_address(0x1000, 0x20_0000, 0x400_0000),
            Some(0x3ff_f000)
        );
        assert_eq!(
            initrd_address(0x1001, 0x20_0000, 0x400_0000),
            Some(0x3ff_e000)
        );
        // Exactly the room between kernel end and limit.
        assert_eq!(
            initrd_address(0x100_0000, 0x300_0000, 0x400_0000),
            Some(0x300_0000)
        );
        // One byte too many, or larger than everything.
        assert_eq!(initrd_address(0x100_0001, 0x300_0000, 0x400_0000), None);
        assert_eq!(initrd_address(u64::MAX, 0, 0x400_0000), None);
    }

    #[test]
    fn bzimage_initrd_addr_max_caps_the_initrd() {
        let mem = create_guest_memory(64).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("bz");
        let mut image = guest_image::bzimage(&guest_image::bzimage_payload(&[0xf4]));
        // initrd_addr_max = 32 MiB - 1 (offset 0x22c).
        image[0x22c..0x230].copy_from_slice(&(0x200_0000u32 - 1).to_le_bytes());
        std::fs::write(&kernel, image).unwrap();
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, [1u8; 100]).unwrap();
        let k = load_kernel(&mem, &kernel).unwrap();
        let placed = load_initrd(&mem, &initrd, &k).unwrap();
        assert_eq!(placed.addr, GuestAddress(0x200_0000 - 0x1000));
    }

    #[test]
    fn command_line_limits() {
        let mem = create_guest_memory(16).unwrap();
        let long = "x".repeat(CMDLINE_MAX_SIZE);
        let e = write_cmdline(&mem, &long, CMDLINE_MAX_SIZE).unwrap_err();
        assert!(
            e.to_string().contains("2048 bytes, the limit is 2048"),
            "{e}"
        );
        write_cmdline(&mem, &long[1..], CMDLINE_MAX_SIZE).unwrap();
        let last: u8 = mem
            .read_obj(GuestAddress(CMDLINE_START + CMDLINE_MAX_SIZE as u64 - 1))
            .unwrap();
        assert_eq!(last, 0, "NUL in the last byte");
        // Passed on verbatim: quoting, spacing and init args are the
        // guest's business.
        let c = "x=\"a  b\" -- init arg";
        write_cmdline(&mem, c, 100).unwrap();
        let mut got = vec![0u8; c.len() + 1];
        mem.read_slice(&mut got, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&got[..c.len()], c.as_bytes());
        assert_eq!(got[c.len()], 0);
        // A NUL would cut it short in the guest.
        let e = write_cmdline(&mem, "a\0b", 100).unwrap_err();
        assert!(e.to_string().contains("NUL byte at offset 1"), "{e}");
    }

    #[test]
    fn a_32bit_only_bzimage_is_refused() {
        let mem = create_guest_memory(16).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("bz32");
        let mut image = guest_image::bzimage(&[0xf4; 16]);
        image[0x236] = 0; // xloadflags without XLF_KERNEL_64
        std::fs::write(&kernel, image).unwrap();
        let e = load_kernel(&mem, &kernel).unwrap_err();
        assert!(
            e.to_string().contains("without a 64-bit entry point"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_kernel_is_named() {
        let mem = create_guest_memory(16).unwrap();
        let e = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vmlinux"), "{e}");
    }

    #[test]
    fn a_kernel_that_does_not_fit_guest_ram_is_refused() {
        let mem = create_guest_memory(16).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("huge");
        // 20 MiB of code loaded at 1 MiB into a 16 MiB guest.
        std::fs::write(&kernel, guest_image::elf(&vec![0x90; 20 << 20], 0, false)).unwrap();
        let e = load_kernel(&mem, &kernel).unwrap_err();
        assert!(e.to_string().contains("huge"), "{e}");
    }
}
