//! What husk-vm makes of a VM image's disk file before QEMU is given it
//! (husk-hypervisor's `disk_format::probe_head`, which `probe` runs on
//! the file's first 4 KiB and its length): the file is the image's, so
//! hostile. Nothing may panic; besides:
//!
//! - an accepted qcow2 (QEMU's docs/interop/qcow2.txt, "Header") is
//!   version 2 or 3, names no backing file, and as version 3 has neither
//!   the external data file nor the corrupt bit; its virtual size is the
//!   header's, not zero, at most `MAX_VIRTUAL_SIZE` and whole 512-byte
//!   sectors;
//! - raw is accepted only for a non-empty file of whole sectors that is
//!   not qcow2 and has an MBR boot signature at byte 510 or an ext
//!   superblock's magic at 1080, and its size is the file's;
//! - each refusal is what the header says (a backing file, an external
//!   data file, the corrupt bit only from a qcow2 header), and its reason
//!   is bounded, printable text.
//!
//! Input: byte 0 bit 0: the file is exactly the rest of the input; else
//! a u64 length follows and the file is that long, starting with the
//! rest of the input (zeros after it, as in a sparse file).

#![no_main]

use husk_fuzz::Input;
use husk_hypervisor::disk_format::{probe_head, DiskFormat, Refusal, HEAD, MAX_VIRTUAL_SIZE};
use libfuzzer_sys::fuzz_target;

const QCOW2_MAGIC: &[u8] = b"QFI\xfb";

fn be32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn be64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let exact = input.u8() & 1 != 0;
    let (head, len) = if exact {
        let rest = input.rest();
        (rest[..rest.len().min(HEAD)].to_vec(), rest.len() as u64)
    } else {
        let len = input.u64();
        let rest = input.rest();
        // The file's first min(len, HEAD) bytes: the input, then zeros.
        let n = usize::try_from(len).unwrap_or(usize::MAX).min(HEAD);
        let mut head = rest[..rest.len().min(n)].to_vec();
        head.resize(n, 0);
        (head, len)
    };
    let qcow2 = head.starts_with(QCOW2_MAGIC);
    let version = be32(&head, 4);
    let incompatible = be64(&head, 72).unwrap_or(0);
    match probe_head(&head, len) {
        Ok(info) => match info.format {
            DiskFormat::Qcow2 => {
                assert!(qcow2);
                assert!(matches!(version, Some(2 | 3)), "version {version:?}");
                assert_eq!(be64(&head, 8), Some(0), "a backing file");
                if version == Some(3) {
                    assert!(head.len() >= 80);
                    assert_eq!(incompatible & 0b110, 0, "external data or corrupt");
                }
                assert_eq!(Some(info.virtual_size), be64(&head, 24));
                assert!(info.virtual_size > 0 && info.virtual_size <= MAX_VIRTUAL_SIZE);
                assert_eq!(info.virtual_size % 512, 0);
            }
            DiskFormat::Raw => {
                assert!(!qcow2 && !head.starts_with(b"QFI"));
                assert!(len > 0 && len % 512 == 0, "raw of {len} bytes");
                assert_eq!(info.virtual_size, len);
                let mbr = head.get(510..512) == Some(&[0x55, 0xaa][..]);
                let ext = head.get(1080..1082) == Some(&[0x53, 0xef][..]);
                assert!(mbr || ext, "raw without a signature");
            }
        },
        Err(Refusal::Backing) => {
            assert!(qcow2 && matches!(version, Some(2 | 3)));
            assert_ne!(be64(&head, 8).unwrap(), 0);
        }
        Err(Refusal::ExternalData) => {
            assert!(qcow2 && version == Some(3) && incompatible & 0b100 != 0)
        }
        Err(Refusal::Corrupt) => assert!(qcow2 && version == Some(3) && incompatible & 0b010 != 0),
        Err(Refusal::Other(name)) => assert!(!qcow2, "qcow2 named {name}"),
        Err(Refusal::NotADisk(reason)) => {
            assert!(reason.len() <= 256, "a reason of {} bytes", reason.len());
            assert!(!reason.chars().any(char::is_control), "{reason:?}");
        }
    }
});
