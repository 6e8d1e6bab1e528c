//! One unprivileged id per running VM, host-wide (`[confinement]`): a VM
//! takes id `first + n` by locking byte n of one lock file with an
//! open-file-description lock (F_OFD_SETLK). The lock belongs to the open
//! file, so it is released when [`VmIds`] is dropped or its process dies
//! (the VM's processes die with it: PR_SET_PDEATHSIG), and no list of
//! taken ids can go stale. Shims of every containerd, and the tests' own
//! runtime directories, share the one file.

use crate::Error;
use husk_vmm_config::Identity;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

/// A VM's id, taken until this is dropped.
#[derive(Debug)]
pub struct VmIds {
    identity: Identity,
    /// Holds the lock; private, and close-on-exec (helpers never get it).
    _lock: std::fs::File,
}

impl VmIds {
    /// Takes a free id of `first .. first + count`, trying from a place
    /// that differs per process so that VMs started together do not all
    /// try the same ids in turn.
    pub fn take(first: u32, count: u32, lock_file: &Path) -> Result<Self, Error> {
        let io = |what: &str, e| Error::io(format!("{what} {}", lock_file.display()), e);
        if let Some(dir) = lock_file.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io("creating the directory of", e))?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(lock_file)
            .map_err(|e| io("opening", e))?;
        let start = (std::process::id() as u64)
            .wrapping_mul(2_654_435_761)
            .wrapping_add(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos() as u64),
            );
        for i in 0..u64::from(count) {
            let n = (start.wrapping_add(i) % u64::from(count)) as i64;
            let lock = libc::flock {
                l_type: libc::F_WRLCK as i16,
                l_whence: libc::SEEK_SET as i16,
                l_start: n,
                l_len: 1,
                l_pid: 0,
            };
            // SAFETY: fcntl reads the flock struct we own.
            if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) } == 0 {
                let id = first + n as u32;
                return Ok(Self {
                    identity: Identity { uid: id, gid: id },
                    _lock: file,
                });
            }
            let e = std::io::Error::last_os_error();
            if !matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) {
                return Err(io("locking an id in", e));
            }
        }
        Err(Error::NoVmIds {
            first,
            count,
            lock_file: lock_file.to_owned(),
        })
    }

    pub fn identity(&self) -> Identity {
        self.identity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_holder_gets_its_own_id_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("sub/ids.lock");
        let a = VmIds::take(1000, 2, &lock).unwrap();
        let b = VmIds::take(1000, 2, &lock).unwrap();
        assert_ne!(a.identity(), b.identity());
        for id in [a.identity(), b.identity()] {
            assert!((1000..1002).contains(&id.uid) && id.uid == id.gid, "{id:?}");
        }
        let e = VmIds::take(1000, 2, &lock).unwrap_err().to_string();
        assert!(e.contains("1000") && e.contains("ids.lock"), "{e}");
        let freed = a.identity();
        drop(a);
        assert_eq!(VmIds::take(1000, 2, &lock).unwrap().identity(), freed);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&lock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
