//! Putting a Linux guest into guest memory: the kernel (ELF `vmlinux` with
//! or without a PVH note, or bzImage) through linux-loader, the command
//! line, the initrd, the e820 map, and the boot structure the entry point
//! expects (`hvm_start_info` for PVH, the zero page otherwise).
//!
//! Everything here runs before any vCPU exists, so bad input (not a kernel,
//! an initrd that does not fit, a command line that is too long) ends the
//! VMM with an error that names the file or the size.

use super::memory::{
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
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("writing the kernel command line to guest memory: {0}")]
    WriteCmdline(linux_loader::loader::Error),
    #[error("writing the boot parameters to guest memory: {0}")]
    BootParams(linux_loader::configurator::Error),
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

/// Reads a `T` back from guest memory; used by tests and diagnostics.
pub fn read_obj<T: vm_memory::ByteValued>(mem: &GuestMemoryMmap, addr: u64) -> Option<T> {
    mem.read_obj(GuestAddress(addr)).ok()
}
