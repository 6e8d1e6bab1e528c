//! Reading a mounted image as a KubeVirt containerDisk: exactly one disk
//! file (qcow2 or raw, told apart by content) under `/disk/`, and, where
//! the image has them, `/boot/vmlinuz` and `/boot/initrd.img` for a direct
//! kernel boot. The image is a user's: nothing in it is followed as a
//! symbolic link (an absolute one would name a host file), every file must
//! be a regular file inside the rootfs, and a qcow2 that would open another
//! file is refused (`husk_hypervisor::disk_format`).
//!
//! [`looks_like_container_disk`] is the husk runtime's side: an image that
//! is a containerDisk and nothing else, given to `husk`, is pointed to
//! `husk-vm`.

use husk_hypervisor::disk_format::{self, DiskFormat, DiskFormatError, DiskInfo};
use std::path::{Path, PathBuf};

/// Where a containerDisk keeps its disk (KubeVirt's default path).
pub const DISK_DIR: &str = "disk";
/// The kernel and initrd a direct kernel boot takes from the image.
pub const KERNEL: &str = "boot/vmlinuz";
pub const INITRD: &str = "boot/initrd.img";

/// A checked containerDisk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDisk {
    /// The disk file, inside the mounted rootfs.
    pub disk: PathBuf,
    pub format: DiskFormat,
    /// The size of the disk the guest sees, from the checked header.
    pub virtual_size: u64,
    /// (vmlinuz, initrd.img) when the image has both.
    pub kernel: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ContainerDiskError {
    #[error("the image is not a containerDisk: it has no /disk/ directory (a husk-vm container's image holds its VM's disk as the one file under /disk/, as KubeVirt's containerDisks do)")]
    NoDiskDir,
    #[error("the image is not a containerDisk: /disk is {0}, not a directory")]
    DiskDirNotADir(&'static str),
    #[error(
        "the image is not a containerDisk: /disk/ is empty (it must hold exactly one disk file)"
    )]
    NoDiskFile,
    #[error("the image is not a containerDisk: /disk/ holds {count} files ({names}); it must hold exactly one disk file")]
    TwoDiskFiles { count: usize, names: String },
    #[error("the image's /disk/{name} is {kind}, not a regular file")]
    NotAFile { name: String, kind: &'static str },
    #[error("the image's /disk/ holds a disk husk-vm cannot boot")]
    Format(#[source] DiskFormatError),
    #[error("the image's /{path} is {kind}, not a regular file")]
    BootFile {
        path: &'static str,
        kind: &'static str,
    },
    #[error("the image has /{present} but not /{missing}: a direct kernel boot needs both")]
    HalfKernel {
        present: &'static str,
        missing: &'static str,
    },
    #[error("reading the image at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else {
        "a special file"
    }
}

/// Checks the image mounted at `rootfs` and finds its disk and kernel.
pub fn inspect(rootfs: &Path) -> Result<ContainerDisk, ContainerDiskError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| ContainerDiskError::Io { path, source }
    };
    let dir = rootfs.join(DISK_DIR);
    let meta = match std::fs::symlink_metadata(&dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ContainerDiskError::NoDiskDir)
        }
        Err(e) => return Err(io(&dir)(e)),
    };
    if !meta.is_dir() {
        return Err(ContainerDiskError::DiskDirNotADir(kind(&meta)));
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(io(&dir))? {
        let entry = entry.map_err(io(&dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    let name = match names.as_slice() {
        [] => return Err(ContainerDiskError::NoDiskFile),
        [one] => one.clone(),
        many => {
            return Err(ContainerDiskError::TwoDiskFiles {
                count: many.len(),
                names: many.join(", "),
            })
        }
    };
    let disk = dir.join(&name);
    let meta = std::fs::symlink_metadata(&disk).map_err(io(&disk))?;
    if !meta.is_file() {
        return Err(ContainerDiskError::NotAFile {
            name,
            kind: kind(&meta),
        });
    }
    let DiskInfo {
        format,
        virtual_size,
    } = disk_format::probe(&disk).map_err(ContainerDiskError::Format)?;
    Ok(ContainerDisk {
        disk,
        format,
        virtual_size,
        kernel: kernel(rootfs)?,
    })
}

/// The image's kernel and initrd, when it has both as regular files.
fn kernel(rootfs: &Path) -> Result<Option<(PathBuf, PathBuf)>, ContainerDiskError> {
    let boot = rootfs.join("boot");
    match std::fs::symlink_metadata(&boot) {
        Ok(m) if m.is_dir() => {}
        // No /boot (or not a directory): firmware boot, as for any image.
        _ => return Ok(None),
    }
    let file = |rel: &'static str| -> Result<Option<PathBuf>, ContainerDiskError> {
        let path = rootfs.join(rel);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_file() => Ok(Some(path)),
            Ok(m) => Err(ContainerDiskError::BootFile {
                path: rel,
                kind: kind(&m),
            }),
            Err(_) => Ok(None),
        }
    };
    match (file(KERNEL)?, file(INITRD)?) {
        (Some(k), Some(i)) => Ok(Some((k, i))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(ContainerDiskError::HalfKernel {
            present: KERNEL,
            missing: INITRD,
        }),
        (None, Some(_)) => Err(ContainerDiskError::HalfKernel {
            present: INITRD,
            missing: KERNEL,
        }),
    }
}

/// Whether the image mounted at `rootfs` is a containerDisk and nothing
/// else: its top level holds `/disk/` (with at least one file that is a
/// disk) and at most `/boot/` besides — no OS tree a container could run.
pub fn looks_like_container_disk(rootfs: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(rootfs) else {
        return false;
    };
    let mut has_disk_dir = false;
    for entry in entries.flatten() {
        match entry.file_name().to_str() {
            Some(DISK_DIR) => has_disk_dir = true,
            Some("boot") => {}
            _ => return false,
        }
    }
    has_disk_dir
        && std::fs::read_dir(rootfs.join(DISK_DIR))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                e.file_type().is_ok_and(|t| t.is_file()) && disk_format::probe(&e.path()).is_ok()
            })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error and its causes on one line.
    fn chain(e: impl std::error::Error + Send + Sync + 'static) -> String {
        format!("{:#}", anyhow::Error::new(e))
    }

    const QCOW2: &[u8] = b"QFI\xfb\0\0\0\x03\0\0\0\0\0\0\0\0";

    fn image(files: &[(&str, &[u8])]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        for (path, data) in files {
            let p = root.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data).unwrap();
        }
        root
    }

    fn qcow2() -> Vec<u8> {
        let mut h = QCOW2.to_vec();
        h.resize(512, 0);
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h
    }

    #[test]
    fn one_disk_is_found_and_its_format_told_by_content() {
        let root = image(&[("disk/whatever.img", &qcow2())]);
        let d = inspect(root.path()).unwrap();
        assert_eq!(d.format, DiskFormat::Qcow2);
        assert_eq!(d.virtual_size, 1 << 30);
        assert_eq!(d.disk, root.path().join("disk/whatever.img"));
        assert_eq!(d.kernel, None);
        assert!(looks_like_container_disk(root.path()));
    }

    #[test]
    fn a_kernel_and_initrd_in_boot_are_used_together_or_not_at_all() {
        let root = image(&[
            ("disk/disk.qcow2", &qcow2()),
            ("boot/vmlinuz", b"k"),
            ("boot/initrd.img", b"i"),
        ]);
        let d = inspect(root.path()).unwrap();
        assert_eq!(
            d.kernel,
            Some((
                root.path().join("boot/vmlinuz"),
                root.path().join("boot/initrd.img")
            ))
        );
        assert!(looks_like_container_disk(root.path()));
        let half = image(&[("disk/disk.qcow2", &qcow2()), ("boot/vmlinuz", b"k")]);
        let e = chain(inspect(half.path()).unwrap_err());
        assert!(e.contains("/boot/vmlinuz but not /boot/initrd.img"), "{e}");
    }

    #[test]
    fn every_bad_image_says_what_is_wrong() {
        let none = image(&[("bin/sh", b"")]);
        let e = chain(inspect(none.path()).unwrap_err());
        assert!(e.contains("no /disk/ directory"), "{e}");
        assert!(!looks_like_container_disk(none.path()));

        let two = image(&[("disk/a.qcow2", &qcow2()), ("disk/b.qcow2", &qcow2())]);
        let e = chain(inspect(two.path()).unwrap_err());
        assert!(e.contains("holds 2 files (a.qcow2, b.qcow2)"), "{e}");

        let text = image(&[("disk/disk.img", b"This is not a disk image.\n")]);
        let e = chain(inspect(text.path()).unwrap_err());
        assert!(e.contains("disk.img is not a disk image"), "{e}");
        assert!(!looks_like_container_disk(text.path()));

        let empty = image(&[]);
        std::fs::create_dir(empty.path().join("disk")).unwrap();
        let e = chain(inspect(empty.path()).unwrap_err());
        assert!(e.contains("/disk/ is empty"), "{e}");
    }

    #[test]
    fn symbolic_links_are_never_followed() {
        let root = image(&[]);
        std::fs::create_dir(root.path().join("disk")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.path().join("disk/disk.img")).unwrap();
        let e = chain(inspect(root.path()).unwrap_err());
        assert!(e.contains("disk.img is a symbolic link"), "{e}");

        let linked = image(&[]);
        std::os::unix::fs::symlink("/etc", linked.path().join("disk")).unwrap();
        let e = chain(inspect(linked.path()).unwrap_err());
        assert!(e.contains("/disk is a symbolic link"), "{e}");

        let kernel = image(&[("disk/disk.qcow2", &qcow2()), ("boot/initrd.img", b"i")]);
        std::os::unix::fs::symlink("/boot/vmlinuz", kernel.path().join("boot/vmlinuz")).unwrap();
        let e = chain(inspect(kernel.path()).unwrap_err());
        assert!(e.contains("/boot/vmlinuz is a symbolic link"), "{e}");
    }

    #[test]
    fn an_os_image_with_a_disk_dir_is_not_taken_for_a_container_disk() {
        let os = image(&[("disk/disk.qcow2", &qcow2()), ("bin/sh", b"")]);
        assert!(!looks_like_container_disk(os.path()));
    }
}
