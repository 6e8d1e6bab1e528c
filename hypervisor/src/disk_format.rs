//! Telling a VM image's disk file apart by its content, as KubeVirt's
//! containerDisk asks ("qcow2 or raw"), before QEMU is given it. The file
//! comes from a user's image, so it is hostile: QEMU is always told the
//! format (never left to probe), and a qcow2 that would make QEMU open
//! another file — a backing file or an external data file named in its
//! header, which could be any host path — is refused.
//!
//! Formats: qcow2 (QEMU's docs/interop/qcow2.txt, "Header"); raw is a
//! whole number of 512-byte sectors that starts like a disk (an MBR or
//! protective-MBR boot signature, as GPT disks have too) or like a bare
//! ext2/3/4 filesystem. Other image formats QEMU knows are named in the
//! refusal, with the conversion that fixes it.

use std::io::Read;
use std::path::{Path, PathBuf};

/// qcow2's magic, "QFI\xfb".
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// Incompatible feature bit 1: the image is marked corrupt.
const QCOW2_CORRUPT: u64 = 1 << 1;
/// Incompatible feature bit 2: the guest data lives in an external file.
const QCOW2_EXTERNAL_DATA: u64 = 1 << 2;
const SECTOR: u64 = 512;
/// The ext2/3/4 superblock starts at 1024; s_magic is at offset 56 in it.
const EXT_MAGIC_OFFSET: usize = 1024 + 56;
const EXT_MAGIC: [u8; 2] = [0x53, 0xef];
/// What is read of the file's start to tell it apart.
pub const HEAD: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    /// The name QEMU's `format=` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Raw => "raw",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DiskFormatError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is a {format} image; husk-vm boots qcow2 or raw disks (convert it: qemu-img convert -O qcow2 {path} disk.qcow2)")]
    OtherFormat { path: PathBuf, format: &'static str },
    #[error("{path} is not a disk image: {reason}")]
    NotADisk { path: PathBuf, reason: String },
    #[error("{path} is a qcow2 image that names a backing file; a containerDisk must hold the whole disk (flatten it: qemu-img convert -O qcow2 {path} disk.qcow2)")]
    Qcow2BackingFile { path: PathBuf },
    #[error("{path} is a qcow2 image with an external data file; a containerDisk must hold the whole disk (flatten it: qemu-img convert -O qcow2 {path} disk.qcow2)")]
    Qcow2ExternalData { path: PathBuf },
    #[error("{path} is a qcow2 image marked corrupt (check it: qemu-img check -r all {path})")]
    Qcow2Corrupt { path: PathBuf },
}

/// What a disk file's header says, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskInfo {
    pub format: DiskFormat,
    /// The size of the disk the guest sees: qcow2's header field, a raw
    /// disk's length.
    pub virtual_size: u64,
}

/// The largest virtual size taken: QEMU's own limit for qcow2 (32 MiB
/// clusters) is 2^61 bytes; a header claiming more is not a disk.
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 61;

/// Reads the start of `path` and says which format it is and how large a
/// disk it holds, or why it is not a disk husk-vm boots.
pub fn probe(path: &Path) -> Result<DiskInfo, DiskFormatError> {
    let io = |source| DiskFormatError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut head = Vec::with_capacity(HEAD);
    (&file)
        .take(HEAD as u64)
        .read_to_end(&mut head)
        .map_err(io)?;
    probe_head(&head, len).map_err(|e| e.at(path))
}

/// Tells apart a disk read some other way than [`probe`] (a volume, a
/// block device): `head` is what was read of its start (up to 1 MiB: more
/// than [`HEAD`] lets a refusal name more), `len` its size.
pub fn classify_head(path: &Path, head: &[u8], len: u64) -> Result<DiskInfo, DiskFormatError> {
    probe_head(head, len).map_err(|e| e.at(path))
}

/// What a start that is no disk holds, where it is something common, so
/// a refusal can say what was found.
fn found(head: &[u8]) -> Option<&'static str> {
    let known: [(usize, &[u8], &str); 7] = [
        (0, b"XFSB", "an XFS file system"),
        (0, b"LUKS\xba\xbe", "a LUKS encrypted volume"),
        (4086, b"SWAPSPACE2", "Linux swap space"),
        (4086, b"SWAP-SPACE", "Linux swap space"),
        (65600, b"_BHRfS_M", "a btrfs file system"),
        (32769, b"CD001", "an ISO 9660 file system"),
        (0, b"\x1f\x8b", "gzip-compressed data"),
    ];
    known
        .iter()
        .find(|(at, magic, _)| head.get(*at..at + magic.len()) == Some(*magic))
        .map(|k| k.2)
}

/// What is wrong with a disk file, before its path is known
/// ([`DiskFormatError`] says each with the path).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Other(&'static str),
    NotADisk(String),
    Backing,
    ExternalData,
    Corrupt,
}

impl Refusal {
    fn at(self, path: &Path) -> DiskFormatError {
        let path = path.to_owned();
        match self {
            Refusal::Other(format) => DiskFormatError::OtherFormat { path, format },
            Refusal::NotADisk(reason) => DiskFormatError::NotADisk { path, reason },
            Refusal::Backing => DiskFormatError::Qcow2BackingFile { path },
            Refusal::ExternalData => DiskFormatError::Qcow2ExternalData { path },
            Refusal::Corrupt => DiskFormatError::Qcow2Corrupt { path },
        }
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// [`probe`] of a file of `len` bytes that starts with `head`: its first
/// `len` bytes, up to [`HEAD`].
pub fn probe_head(head: &[u8], len: u64) -> Result<DiskInfo, Refusal> {
    if head.starts_with(QCOW2_MAGIC) {
        return qcow2(head);
    }
    // Formats QEMU would take but husk-vm does not: named, so the user
    // knows what to convert.
    let other = [
        (&b"KDMV"[..], 0, "VMDK"),
        (b"# Disk DescriptorFile", 0, "VMDK descriptor"),
        (b"vhdxfile", 0, "VHDX"),
        (b"conectix", 0, "VHD (vpc)"),
        (b"QFI", 0, "qcow (version 1)"),
        (b"QED\0", 0, "QED"),
        (b"<<< Oracle VM VirtualBox Disk Image >>>", 0, "VDI"),
        (b"<<< innotek VirtualBox Disk Image >>>", 0, "VDI"),
        (b"<<< Sun xVM VirtualBox Disk Image >>>", 0, "VDI"),
    ];
    for (magic, at, name) in other {
        if head.get(at..at + magic.len()) == Some(magic) {
            return Err(Refusal::Other(name));
        }
    }
    if len == 0 {
        return Err(Refusal::NotADisk("the file is empty".into()));
    }
    if !len.is_multiple_of(SECTOR) {
        return Err(Refusal::NotADisk(format!(
            "{len} bytes is not a whole number of 512-byte sectors, and it is not qcow2"
        )));
    }
    let boot_signature = head.get(510..512) == Some(&[0x55, 0xaa]);
    let ext = head.get(EXT_MAGIC_OFFSET..EXT_MAGIC_OFFSET + 2) == Some(&EXT_MAGIC);
    if boot_signature || ext {
        return Ok(DiskInfo {
            format: DiskFormat::Raw,
            virtual_size: len,
        });
    }
    let what = match found(head) {
        Some(thing) => format!("it holds {thing}: "),
        None => String::new(),
    };
    Err(Refusal::NotADisk(format!(
        "{what}neither qcow2 nor a raw disk (no partition table's boot signature at byte 510, \
         no ext filesystem)"
    )))
}

/// A qcow2 header that QEMU can open without any other file.
fn qcow2(head: &[u8]) -> Result<DiskInfo, Refusal> {
    let version =
        be32(head, 4).ok_or_else(|| Refusal::NotADisk("a truncated qcow2 header".into()))?;
    if version != 2 && version != 3 {
        return Err(Refusal::NotADisk(format!(
            "qcow2 version {version}; QEMU knows 2 and 3"
        )));
    }
    let backing_offset =
        be64(head, 8).ok_or_else(|| Refusal::NotADisk("a truncated qcow2 header".into()))?;
    if backing_offset != 0 {
        return Err(Refusal::Backing);
    }
    if version == 3 {
        let incompatible =
            be64(head, 72).ok_or_else(|| Refusal::NotADisk("a truncated qcow2 header".into()))?;
        if incompatible & QCOW2_EXTERNAL_DATA != 0 {
            return Err(Refusal::ExternalData);
        }
        if incompatible & QCOW2_CORRUPT != 0 {
            return Err(Refusal::Corrupt);
        }
    }
    let truncated = || Refusal::NotADisk("a truncated qcow2 header".into());
    let virtual_size = be64(head, 24).ok_or_else(truncated)?;
    if virtual_size == 0 || virtual_size > MAX_VIRTUAL_SIZE || virtual_size % SECTOR != 0 {
        return Err(Refusal::NotADisk(format!(
            "a qcow2 header giving the disk {virtual_size} bytes (a disk is a whole number \
             of 512-byte sectors, at most 2^61 bytes)"
        )));
    }
    Ok(DiskInfo {
        format: DiskFormat::Qcow2,
        virtual_size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2_header(version: u32, backing: u64, incompatible: u64) -> Vec<u8> {
        let mut h = vec![0u8; 104];
        h[..4].copy_from_slice(QCOW2_MAGIC);
        h[4..8].copy_from_slice(&version.to_be_bytes());
        h[8..16].copy_from_slice(&backing.to_be_bytes());
        h[24..32].copy_from_slice(&(2u64 << 30).to_be_bytes());
        h[72..80].copy_from_slice(&incompatible.to_be_bytes());
        h
    }

    fn qcow2(virtual_size: u64) -> Result<DiskInfo, Refusal> {
        Ok(DiskInfo {
            format: DiskFormat::Qcow2,
            virtual_size,
        })
    }

    #[test]
    fn the_virtual_size_comes_from_a_checked_header() {
        assert_eq!(probe_head(&qcow2_header(3, 0, 0), 1 << 20), qcow2(2 << 30));
        for bad in [0u64, 511, u64::MAX, MAX_VIRTUAL_SIZE + 512] {
            let mut h = qcow2_header(3, 0, 0);
            h[24..32].copy_from_slice(&bad.to_be_bytes());
            assert!(
                matches!(probe_head(&h, 1 << 20), Err(Refusal::NotADisk(r)) if r.contains("bytes")),
                "{bad}"
            );
        }
        let mut mbr = vec![0u8; 4096];
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert_eq!(
            probe_head(&mbr, 3 << 20).map(|d| d.virtual_size),
            Ok(3 << 20)
        );
    }

    #[test]
    fn qcow2_is_taken_only_when_it_needs_no_other_file() {
        assert_eq!(probe_head(&qcow2_header(3, 0, 0), 1 << 20), qcow2(2 << 30));
        assert_eq!(probe_head(&qcow2_header(2, 0, 0), 1 << 20), qcow2(2 << 30));
        assert_eq!(
            probe_head(&qcow2_header(3, 512, 0), 1 << 20),
            Err(Refusal::Backing)
        );
        assert_eq!(
            probe_head(&qcow2_header(2, 512, 0), 1 << 20),
            Err(Refusal::Backing)
        );
        assert_eq!(
            probe_head(&qcow2_header(3, 0, QCOW2_EXTERNAL_DATA), 1 << 20),
            Err(Refusal::ExternalData)
        );
        assert_eq!(
            probe_head(&qcow2_header(3, 0, QCOW2_CORRUPT), 1 << 20),
            Err(Refusal::Corrupt)
        );
        assert!(matches!(
            probe_head(&qcow2_header(4, 0, 0), 1 << 20),
            Err(Refusal::NotADisk(r)) if r.contains("version 4")
        ));
        assert!(matches!(
            probe_head(&QCOW2_MAGIC[..], 4),
            Err(Refusal::NotADisk(r)) if r.contains("truncated")
        ));
    }

    #[test]
    fn raw_needs_sectors_and_a_disk_or_filesystem_signature() {
        let mut mbr = vec![0u8; 4096];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(
            probe_head(&mbr, 1 << 30).map(|d| d.format),
            Ok(DiskFormat::Raw)
        );
        let mut ext = vec![0u8; 4096];
        ext[EXT_MAGIC_OFFSET] = 0x53;
        ext[EXT_MAGIC_OFFSET + 1] = 0xef;
        assert_eq!(
            probe_head(&ext, 1 << 30).map(|d| d.format),
            Ok(DiskFormat::Raw)
        );
        // Not whole sectors: the test image's text file.
        let text = b"This is not a disk image.\n";
        assert!(matches!(
            probe_head(text, text.len() as u64),
            Err(Refusal::NotADisk(r)) if r.contains("26 bytes")
        ));
        assert!(matches!(
            probe_head(&vec![0u8; 4096], 1 << 20),
            Err(Refusal::NotADisk(r)) if r.contains("boot signature")
        ));
        assert!(matches!(probe_head(b"", 0), Err(Refusal::NotADisk(r)) if r.contains("empty")));
    }

    #[test]
    fn what_a_non_disk_holds_is_named() {
        let mut xfs = vec![0u8; 1 << 20];
        xfs[..4].copy_from_slice(b"XFSB");
        let e = classify_head(Path::new("/dev/loop9"), &xfs, 1 << 30)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/dev/loop9") && e.contains("an XFS file system"),
            "{e}"
        );
        let mut btrfs = vec![0u8; 1 << 20];
        btrfs[65600..65608].copy_from_slice(b"_BHRfS_M");
        assert!(matches!(
            probe_head(&btrfs, 1 << 30),
            Err(Refusal::NotADisk(r)) if r.contains("btrfs")
        ));
        // Only what was read is looked at.
        assert!(matches!(
            probe_head(&btrfs[..4096], 1 << 30),
            Err(Refusal::NotADisk(r)) if !r.contains("btrfs")
        ));
    }

    #[test]
    fn other_image_formats_are_named() {
        assert_eq!(
            probe_head(b"KDMV\x01\0\0\0", 1 << 20),
            Err(Refusal::Other("VMDK"))
        );
        assert_eq!(
            probe_head(b"vhdxfile....", 1 << 20),
            Err(Refusal::Other("VHDX"))
        );
        assert_eq!(
            probe_head(b"<<< Oracle VM VirtualBox Disk Image >>>\n", 1 << 20),
            Err(Refusal::Other("VDI"))
        );
    }

    #[test]
    fn errors_name_the_file_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        std::fs::write(&p, b"This is not a disk image.\n").unwrap();
        let e = probe(&p).unwrap_err().to_string();
        assert!(e.contains("disk.img is not a disk image"), "{e}");
        std::fs::write(&p, qcow2_header(3, 512, 0)).unwrap();
        let e = probe(&p).unwrap_err().to_string();
        assert!(
            e.contains("backing file") && e.contains("qemu-img convert"),
            "{e}"
        );
        let e = probe(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(e.contains("missing"), "{e}");
    }
}
