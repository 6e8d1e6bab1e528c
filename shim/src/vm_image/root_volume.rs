//! The root disk on a volume (docs/vm-pods.md, "The root disk on a
//! volume"): `io.husk.vm.root-disk: PATH` names a path in the container
//! that CRI gives it — a raw block device (`linux.devices`, how kubelet
//! passes a block PVC's `volumeDevices`) or a mounted directory (a
//! filesystem PVC, whose disk is `disk.img`, raw or qcow2, KubeVirt's
//! convention). This decides what the VM boots from it:
//!
//! - a volume that reads as blank (its first MiB all zero; a directory
//!   without `disk.img`) gets the image's disk imported first (raw), by
//!   QEMU (`husk_hypervisor::qemu::vm_volume`), which writes that first
//!   MiB last, and its first 4 KiB (every disk signature) after it: an
//!   import cut short reads as blank again and is redone, or, cut in its
//!   last milliseconds, as no disk, refused with how to redo it;
//! - a volume that holds a disk is booted as it is, read-write;
//! - anything else is refused, naming what was found; nothing is written.
//!
//! The host reads no more of a volume than its first MiB, compared with
//! fixed signatures (`husk_hypervisor::disk_format`); QEMU, confined, is
//! what parses a disk. The volume is locked for the VM's life
//! ([`DiskLock`]) before it is looked at, so two VMs on the node never
//! import into or write one disk.

use super::error::VmError;
use super::volume_path::{container_path, mounted_dir};
use crate::bundle::container_disk::ContainerDisk;
use crate::host::disk_lock::{DiskKey, DiskLock};
use husk_hypervisor::disk_format::{self, DiskFormat, DiskInfo};
use husk_hypervisor::qemu::vm_volume::{ImportSource, VolumeDisk, IMPORT_FIRST};
use serde_json::Value;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const ROOT_DISK_ANNOTATION: &str = "io.husk.vm.root-disk";
/// The disk file of a filesystem volume (KubeVirt's name).
pub const DISK_FILE: &str = "disk.img";
/// What is read of a volume's start: blank means all of it is zero.
const HEAD: u64 = husk_hypervisor::qemu::vm_volume::IMPORT_HEAD;
/// The share of a filesystem volume's free space a new `disk.img` leaves
/// to the file system, in thousandths (CDI's default overhead, 5.5%).
const FS_OVERHEAD_PERMILLE: u64 = 55;
const MIB: u64 = 1 << 20;

/// Where the annotation points, found in the container's spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootVolume {
    /// A block device the container is given: its host node.
    Block { path: String, host: PathBuf },
    /// A directory mounted in the container: its host source.
    Dir { path: String, host: PathBuf },
}

/// What a volume holds, from its first MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    Blank,
    Disk(DiskInfo),
}

/// The root disk on a volume, ready for QEMU.
#[derive(Debug)]
pub struct OnVolume {
    pub disk: VolumeDisk,
    /// Held until QEMU is gone.
    pub lock: DiskLock,
    /// The largest file QEMU may write (RLIMIT_FSIZE): a raw disk file's
    /// size, a qcow2's bound; none for a block device (not a file).
    pub max_file_bytes: Option<u64>,
}

/// What a VM's other files need (an OVMF variable store) of the bound.
const OTHER_FILES: u64 = 64 << 20;

/// The root volume the container's annotation names, if any. A path that
/// is neither a block device nor a directory mounted into the container is
/// refused: the VM would otherwise boot a throwaway overlay and lose what
/// the user meant to keep.
pub fn root_volume(spec: &Value, annotation: Option<&str>) -> Result<Option<RootVolume>, VmError> {
    let Some(path) = annotation else {
        return Ok(None);
    };
    let path = container_path(ROOT_DISK_ANNOTATION, path)?;
    if let Some((major, minor)) = block_device(spec, &path) {
        let host = super::launch::host_block_device(major, minor)?;
        return Ok(Some(RootVolume::Block { path, host }));
    }
    if let Some(host) = mounted_dir(spec, ROOT_DISK_ANNOTATION, &path)? {
        return Ok(Some(RootVolume::Dir { path, host }));
    }
    Err(VmError::Invalid(format!(
        "{ROOT_DISK_ANNOTATION}: {path:?} is neither a block device the container is given \
         (a block PVC in volumeDevices) nor a directory mounted there (a filesystem PVC in \
         volumeMounts)"
    )))
}

/// The spec's block device at container path `path`: its major and minor.
fn block_device(spec: &Value, path: &str) -> Option<(u64, u64)> {
    let devices = spec.pointer("/linux/devices")?.as_array()?;
    let d = devices.iter().find(|d| {
        d.get("type").and_then(Value::as_str) == Some("b")
            && d.get("path").and_then(Value::as_str) == Some(path)
    })?;
    Some((d.get("major")?.as_u64()?, d.get("minor")?.as_u64()?))
}

/// What a volume of `len` bytes whose start is `head` holds. `kernel_boot`:
/// the VM boots the image's kernel, so a bare file system (no partition
/// table) is a disk it can boot; firmware cannot boot one, and such a
/// volume is more likely a data volume, refused.
pub fn classify(path: &Path, head: &[u8], len: u64, kernel_boot: bool) -> Result<Content, VmError> {
    if !head.is_empty() && head.iter().all(|b| *b == 0) {
        return Ok(Content::Blank);
    }
    let info = disk_format::classify_head(path, head, len).map_err(|e| {
        // An import cut short in its last milliseconds: all but the
        // first 4 KiB of the first MiB written.
        let first = IMPORT_FIRST as usize;
        let cut_short = head.len() > first && head[..first].iter().all(|b| *b == 0);
        let hint = if cut_short {
            format!(
                " (its first 4 KiB are zero: if an import into it was cut short, zero its \
                 first MiB, e.g. dd if=/dev/zero of={} bs=1M count=1 conv=notrunc, and it is \
                 imported again)",
                path.display()
            )
        } else {
            String::new()
        };
        VmError::Invalid(format!(
            "{ROOT_DISK_ANNOTATION}: the volume holds something that is not a disk, and \
             husk-vm does not overwrite it: {e}{hint}"
        ))
    })?;
    let partitioned = head.get(510..512) == Some(&[0x55, 0xaa]);
    if info.format == DiskFormat::Raw && !partitioned && !kernel_boot {
        return Err(VmError::Invalid(format!(
            "{ROOT_DISK_ANNOTATION}: {} holds an ext file system with no partition table: \
             firmware cannot boot it (is it a data volume?), and husk-vm does not overwrite it",
            path.display()
        )));
    }
    Ok(Content::Disk(info))
}

/// The root disk on `volume`, locked for `holder` under `runtime_dir`, with
/// the import `image` needs where the volume is blank.
pub fn prepare(
    volume: &RootVolume,
    image: &ContainerDisk,
    kernel_boot: bool,
    runtime_dir: &Path,
    holder: &str,
) -> Result<OnVolume, VmError> {
    let (path, block_device) = match volume {
        RootVolume::Block { host, .. } => (host.clone(), true),
        RootVolume::Dir { host, .. } => (disk_file(host, image.virtual_size)?, false),
    };
    let io = |what: &str| {
        let context = format!("{ROOT_DISK_ANNOTATION}: {what} {}", path.display());
        move |source| VmError::Io { context, source }
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&path)
        .map_err(io("opening"))?;
    let meta = file.metadata().map_err(io("reading"))?;
    let right = if block_device {
        meta.file_type().is_block_device()
    } else {
        meta.is_file()
    };
    if !right {
        return Err(VmError::Invalid(format!(
            "{ROOT_DISK_ANNOTATION}: {} is not a {}",
            path.display(),
            if block_device {
                "block device"
            } else {
                "regular file"
            }
        )));
    }
    let lock = DiskLock::take(runtime_dir, &path, DiskKey::of(&meta), holder)
        .map_err(|e| VmError::Invalid(super::context::chain(e)))?;
    let len = file.seek(SeekFrom::End(0)).map_err(io("sizing"))?;
    file.rewind().map_err(io("reading"))?;
    let mut head = Vec::with_capacity(HEAD as usize);
    (&mut file)
        .take(HEAD)
        .read_to_end(&mut head)
        .map_err(io("reading"))?;
    let content = classify(&path, &head, len, kernel_boot)?;
    let (format, import, disk_size) = match content {
        Content::Disk(info) => (info.format, None, info.virtual_size),
        Content::Blank => (
            DiskFormat::Raw,
            Some(import_source(&path, len, image)?),
            len,
        ),
    };
    let max_file_bytes = (!block_device).then(|| match format {
        DiskFormat::Raw => len.max(OTHER_FILES),
        DiskFormat::Qcow2 => disk_size
            .saturating_add(disk_size / 64)
            .saturating_add(OTHER_FILES)
            .max(len),
    });
    let disk = VolumeDisk {
        path,
        block_device,
        format,
        import,
    };
    Ok(OnVolume {
        disk,
        lock,
        max_file_bytes,
    })
}

/// The import of `image` into a blank volume of `len` bytes, which must
/// hold it.
fn import_source(path: &Path, len: u64, image: &ContainerDisk) -> Result<ImportSource, VmError> {
    if len < image.virtual_size {
        return Err(VmError::Invalid(format!(
            "{ROOT_DISK_ANNOTATION}: {} is blank but holds {} MiB, and the image's disk is {} MiB",
            path.display(),
            len / MIB,
            image.virtual_size.div_ceil(MIB)
        )));
    }
    Ok(ImportSource {
        image: image.disk.clone(),
        format: image.format,
        virtual_size: image.virtual_size,
    })
}

/// The disk file of the filesystem volume at `dir`: `disk.img`, made (raw,
/// sparse, blank) where it is not there yet, as large as the volume's free
/// space less the file system's share, and at least `virtual_size`.
fn disk_file(dir: &Path, virtual_size: u64) -> Result<PathBuf, VmError> {
    let path = dir.join(DISK_FILE);
    let io = |what: &'static str| {
        let context = format!("{ROOT_DISK_ANNOTATION}: {what} {}", path.display());
        move |source| VmError::Io { context, source }
    };
    match std::fs::symlink_metadata(&path) {
        Ok(_) => return Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading")(e)),
    }
    let st = nix::sys::statvfs::statvfs(dir).map_err(|e| io("statvfs of")(e.into()))?;
    let free = (st.blocks_available() as u64).saturating_mul(st.fragment_size());
    let room = (free - free / 1000 * FS_OVERHEAD_PERMILLE) / MIB * MIB;
    let size = virtual_size.div_ceil(MIB) * MIB;
    if room < size {
        return Err(VmError::Invalid(format!(
            "{ROOT_DISK_ANNOTATION}: the volume at {} has {} MiB free, and the image's disk is \
             {} MiB",
            dir.display(),
            free / MIB,
            size / MIB
        )));
    }
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path);
    match created {
        Ok(f) => f.set_len(room).map_err(io("sizing"))?,
        // Another VM made it meanwhile: the lock decides.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("creating")(e)),
    }
    Ok(path)
}

/// A line of the container's stderr while an import runs: at its start,
/// at each tenth, at its end.
pub struct ImportProgress {
    total: u64,
    tenths_told: u64,
}

impl ImportProgress {
    pub fn new(total: u64) -> Self {
        Self {
            total: total.max(1),
            tenths_told: 0,
        }
    }

    /// The line to tell when `done` bytes are copied, if a tenth was passed.
    pub fn at(&mut self, done: u64) -> Option<String> {
        let tenths = (done.min(self.total) as u128 * 10 / self.total as u128) as u64;
        if tenths <= self.tenths_told || tenths == 10 {
            return None;
        }
        self.tenths_told = tenths;
        Some(format!(
            "husk-vm: importing the image's disk: {}% ({} of {} MiB)\n",
            tenths * 10,
            done / MIB,
            self.total.div_ceil(MIB)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn image(virtual_size: u64) -> ContainerDisk {
        ContainerDisk {
            disk: "/b/rootfs/disk/disk.qcow2".into(),
            format: DiskFormat::Qcow2,
            virtual_size,
            kernel: None,
        }
    }

    fn mbr() -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[..4].copy_from_slice(b"\xeb\x63\x90\x10");
        h[510..512].copy_from_slice(&[0x55, 0xaa]);
        h
    }

    #[test]
    fn the_annotation_must_name_a_given_device_or_a_mounted_directory() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().to_str().unwrap();
        let spec = json!({
            "mounts": [
                {"destination": "/disk", "source": src, "options": ["rbind", "rw"]},
                {"destination": "/ro", "source": src, "options": ["rbind", "ro"]},
                {"destination": "/etc/hostname", "source": "/etc/hostname"}
            ],
            "linux": {"devices": [{"path": "/dev/xvda", "type": "b", "major": 4095, "minor": 4095}]}
        });
        assert_eq!(root_volume(&spec, None).unwrap(), None);
        assert_eq!(
            root_volume(&spec, Some("/disk/")).unwrap(),
            Some(RootVolume::Dir {
                path: "/disk".into(),
                host: dir.path().to_owned()
            })
        );
        let err = |p: &str| root_volume(&spec, Some(p)).unwrap_err().to_string();
        assert!(err("/ro").contains("read-only"), "{}", err("/ro"));
        assert!(err("/etc/hostname").contains("not a directory"));
        assert!(
            err("/data").contains("neither a block device"),
            "{}",
            err("/data")
        );
        for unclean in ["disk", "/disk/../etc", "/", "/a/./b", "/a\nb"] {
            assert!(err(unclean).contains("clean absolute path"), "{unclean}");
        }
        // A device the container is given must exist on the host.
        assert!(
            err("/dev/xvda").contains("4095:4095"),
            "{}",
            err("/dev/xvda")
        );
        let null = json!({"linux": {"devices": [{"path": "/dev/xvda", "type": "c", "major": 1, "minor": 3}]}});
        assert!(root_volume(&null, Some("/dev/xvda")).is_err());
        let loop0 = json!({"linux": {"devices": [{"path": "/dev/xvda", "type": "b", "major": 7, "minor": 0}]}});
        match root_volume(&loop0, Some("/dev/xvda")) {
            Ok(Some(RootVolume::Block { path, .. })) => assert_eq!(path, "/dev/xvda"),
            other => eprintln!("SKIPPED (part): no loop device 7:0 here ({other:?})"),
        }
    }

    #[test]
    fn blank_disk_and_garbage_are_told_apart() {
        let p = Path::new("/dev/loop9");
        assert_eq!(
            classify(p, &vec![0; 1 << 20], 1 << 30, false).unwrap(),
            Content::Blank
        );
        assert_eq!(
            classify(p, &mbr(), 1 << 30, false).unwrap(),
            Content::Disk(DiskInfo {
                format: DiskFormat::Raw,
                virtual_size: 1 << 30
            })
        );
        let mut qcow2 = vec![0u8; 104];
        qcow2[..4].copy_from_slice(b"QFI\xfb");
        qcow2[4..8].copy_from_slice(&3u32.to_be_bytes());
        qcow2[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        assert_eq!(
            classify(p, &qcow2, 1 << 20, false).unwrap(),
            Content::Disk(DiskInfo {
                format: DiskFormat::Qcow2,
                virtual_size: 1 << 30
            })
        );
        let mut xfs = vec![0u8; 1 << 20];
        xfs[..4].copy_from_slice(b"XFSB");
        let e = classify(p, &xfs, 1 << 30, false).unwrap_err().to_string();
        assert!(e.contains("XFS") && e.contains("does not overwrite"), "{e}");
        let mut junk = vec![0u8; 1 << 20];
        junk[700_000] = 1;
        let e = classify(p, &junk, 1 << 30, false).unwrap_err().to_string();
        assert!(e.contains("not a disk") && e.contains("cut short"), "{e}");
        junk[0] = 1;
        let e = classify(p, &junk, 1 << 30, false).unwrap_err().to_string();
        assert!(e.contains("not a disk") && !e.contains("cut short"), "{e}");
        // A bare ext file system: a disk for a kernel boot only.
        let mut ext = vec![0u8; 4096];
        ext[1080..1082].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(
            classify(p, &ext, 1 << 30, true).unwrap(),
            Content::Disk(DiskInfo {
                format: DiskFormat::Raw,
                virtual_size: 1 << 30
            })
        );
        let e = classify(p, &ext, 1 << 30, false).unwrap_err().to_string();
        assert!(e.contains("data volume"), "{e}");
    }

    #[test]
    fn a_filesystem_volume_gets_disk_img_imported_once() {
        let run = tempfile::tempdir().unwrap();
        let vol = tempfile::tempdir().unwrap();
        let v = RootVolume::Dir {
            path: "/disk".into(),
            host: vol.path().to_owned(),
        };
        let on = prepare(&v, &image(4 << 20), false, run.path(), "pod a").unwrap();
        let (disk, lock) = (on.disk, on.lock);
        let file = vol.path().join(DISK_FILE);
        assert_eq!(
            (disk.path.as_path(), disk.block_device),
            (file.as_path(), false)
        );
        assert_eq!(disk.import.as_ref().map(|i| i.virtual_size), Some(4 << 20));
        let len = std::fs::metadata(&file).unwrap().len();
        assert!(len >= 4 << 20 && len.is_multiple_of(MIB), "{len}");
        // A second VM on the node is refused while the first holds it.
        let e = prepare(&v, &image(4 << 20), false, run.path(), "pod b")
            .unwrap_err()
            .to_string();
        assert!(e.contains("pod a") && e.contains("disk.img"), "{e}");
        drop(lock);
        // An import cut short (head still zero) is imported again.
        let again = prepare(&v, &image(4 << 20), false, run.path(), "pod a").unwrap();
        assert!(again.disk.import.is_some());
        assert_eq!(again.max_file_bytes, Some(len.max(OTHER_FILES)));
        drop(again);
        // Once whole, it is booted as it is.
        let mut f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
        std::io::Write::write_all(&mut f, &mbr()).unwrap();
        let booted = prepare(&v, &image(4 << 20), false, run.path(), "pod a").unwrap();
        assert_eq!(
            (booted.disk.import, booted.disk.format),
            (None, DiskFormat::Raw)
        );
        drop(booted.lock);
        // Garbage is refused and left as it was.
        std::fs::write(&file, b"not a disk, somebody's data..").unwrap();
        let e = prepare(&v, &image(4 << 20), false, run.path(), "pod a")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a disk"), "{e}");
        assert_eq!(
            std::fs::read(&file).unwrap(),
            b"not a disk, somebody's data.."
        );
    }

    #[test]
    fn a_volume_too_small_or_a_link_is_refused() {
        let run = tempfile::tempdir().unwrap();
        let vol = tempfile::tempdir().unwrap();
        let v = RootVolume::Dir {
            path: "/disk".into(),
            host: vol.path().to_owned(),
        };
        let file = vol.path().join(DISK_FILE);
        std::fs::File::create(&file)
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        let e = prepare(&v, &image(4 << 20), false, run.path(), "p")
            .unwrap_err()
            .to_string();
        assert!(e.contains("2 MiB") && e.contains("4 MiB"), "{e}");
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &file).unwrap();
        assert!(prepare(&v, &image(4 << 20), false, run.path(), "p").is_err());
        let e = prepare(&v, &image(1 << 62), false, run.path(), "p");
        assert!(e.is_err());
    }

    #[test]
    fn import_progress_is_told_by_tenths() {
        let mut p = ImportProgress::new(100 * MIB);
        assert_eq!(p.at(0), None);
        assert_eq!(
            p.at(25 * MIB).as_deref(),
            Some("husk-vm: importing the image's disk: 20% (25 of 100 MiB)\n")
        );
        assert_eq!(p.at(26 * MIB), None);
        assert!(p.at(95 * MIB).unwrap().contains("90%"));
        assert_eq!(p.at(100 * MIB), None);
    }
}
