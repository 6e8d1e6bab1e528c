//! [`DiskLock`]: one writer per disk on this node (docs/vm-pods.md, "The
//! root disk on a volume"). A VM that writes a volume in place holds an
//! exclusive `flock` on a lock file named after the disk itself — a block
//! device's number (`st_rdev`), a file's device and inode — under the
//! node's runtime directory, for the VM's life; a second VM on the node
//! that would write the same disk is refused, and the refusal names the
//! first (the holder writes who it is into the file).
//!
//! Why not QEMU's own image locking alone (it stays on): its OFD locks are
//! on the inode QEMU was handed, and two device nodes of one block device
//! (`/dev/loop3` and `/dev/block/7:3`, or kubelet's per-pod paths) are two
//! inodes, so it would let both write; and its refusal names no pod. The
//! kernel drops a `flock` when the last descriptor closes, so a shim that
//! dies leaves no stale lock. Lock files are never removed (a removed file
//! would let a waiter lock an inode nobody else sees); they are empty but
//! for a line, and the runtime directory is a tmpfs.
//!
//! This guards one node only: across nodes a volume is guarded by its
//! PersistentVolumeClaim's access mode (ReadWriteOnce, or
//! ReadWriteOncePod), which Kubernetes enforces before the pod runs.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The directory under the runtime directory.
const LOCK_DIR: &str = "vm-disks";
/// The most of a holder's line that is read back.
const MAX_HOLDER: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum DiskLockError {
    #[error("{disk} is written by another VM on this node ({holder}); one VM at a time writes it")]
    Held { disk: PathBuf, holder: String },
    #[error("locking {disk} ({lock})")]
    Io {
        disk: PathBuf,
        lock: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a disk is, for its lock's name: the same disk by any path gets the
/// same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskKey {
    /// A block device's `st_rdev`.
    Device(u64),
    /// A file's `st_dev` and `st_ino`.
    File { dev: u64, ino: u64 },
}

impl DiskKey {
    /// The key of the disk `meta` describes (a block device, or a file).
    pub fn of(meta: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_block_device() {
            DiskKey::Device(meta.rdev())
        } else {
            DiskKey::File {
                dev: meta.dev(),
                ino: meta.ino(),
            }
        }
    }

    fn file_name(self) -> String {
        match self {
            DiskKey::Device(rdev) => format!(
                "block-{}:{}.lock",
                nix::sys::stat::major(rdev),
                nix::sys::stat::minor(rdev)
            ),
            DiskKey::File { dev, ino } => format!("file-{dev:x}-{ino}.lock"),
        }
    }
}

/// An exclusive hold on one disk; dropped, the next VM may write it.
#[derive(Debug)]
pub struct DiskLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl DiskLock {
    /// Locks `disk` (keyed `key`) under `runtime_dir` for `holder` (a
    /// line saying which pod and container), or says who holds it.
    pub fn take(
        runtime_dir: &Path,
        disk: &Path,
        key: DiskKey,
        holder: &str,
    ) -> Result<Self, DiskLockError> {
        let dir = runtime_dir.join(LOCK_DIR);
        let path = dir.join(key.file_name());
        let io = |source| DiskLockError::Io {
            disk: disk.to_owned(),
            lock: path.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                return Err(DiskLockError::Held {
                    disk: disk.to_owned(),
                    holder: read_holder(&mut file),
                })
            }
            Err((_, errno)) => return Err(io(errno.into())),
        };
        let line = holder.replace(['\n', '\0'], " ");
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        lock.write_all(line.as_bytes()).map_err(io)?;
        Ok(DiskLock { _lock: lock, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The holder's line, bounded; a holder that has not written it yet reads
/// as "a VM starting".
fn read_holder(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.take(MAX_HOLDER).read_to_string(&mut text);
    let text: String = text.chars().filter(|c| !c.is_control()).collect();
    if text.trim().is_empty() {
        "a VM starting".to_owned()
    } else {
        text.trim().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_writer_is_refused_and_told_the_first() {
        let run = tempfile::tempdir().unwrap();
        let disk = run.path().join("disk.img");
        std::fs::write(&disk, b"x").unwrap();
        let key = DiskKey::of(&std::fs::metadata(&disk).unwrap());
        let first = DiskLock::take(run.path(), &disk, key, "pod p1 container c1").unwrap();
        // The same file by another name (a hard link) is the same disk.
        let other = run.path().join("other-name");
        std::fs::hard_link(&disk, &other).unwrap();
        let key2 = DiskKey::of(&std::fs::metadata(&other).unwrap());
        assert_eq!(key, key2);
        let e = DiskLock::take(run.path(), &other, key2, "pod p2 container c2")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("other-name") && e.contains("pod p1 container c1"),
            "{e}"
        );
        // Released with the first VM, the disk takes its next writer.
        drop(first);
        let second = DiskLock::take(run.path(), &other, key2, "pod p2 container c2").unwrap();
        let line = std::fs::read_to_string(second.path()).unwrap();
        assert_eq!(line, "pod p2 container c2");
    }

    #[test]
    fn block_devices_are_keyed_by_number_not_path() {
        let null = std::fs::metadata("/dev/null").unwrap();
        // /dev/null is a character device: keyed as a file (its inode).
        assert!(matches!(DiskKey::of(&null), DiskKey::File { .. }));
        assert_eq!(
            DiskKey::Device(nix::sys::stat::makedev(7, 3)).file_name(),
            "block-7:3.lock"
        );
        let loops: Vec<_> = ["/dev/loop0", "/dev/block/7:0"]
            .iter()
            .filter_map(|p| std::fs::metadata(p).ok())
            .collect();
        if loops.len() == 2 {
            assert_eq!(DiskKey::of(&loops[0]), DiskKey::of(&loops[1]));
        } else {
            eprintln!("SKIPPED (part): /dev/loop0 or /dev/block/7:0 missing");
        }
    }

    #[test]
    fn a_holder_line_is_bounded_and_printable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        std::fs::write(&p, format!("pod\x1b[2J x{}", "y".repeat(4096))).unwrap();
        let line = read_holder(&mut File::open(&p).unwrap());
        assert!(
            line.len() <= MAX_HOLDER as usize && !line.contains('\x1b'),
            "{line}"
        );
        std::fs::write(&p, "").unwrap();
        assert_eq!(read_holder(&mut File::open(&p).unwrap()), "a VM starting");
    }
}
