//! Filesystem confinement of husk-vmm: once everything it needs from the
//! host is open (kernel, initrd, /dev/kvm, console log, the daemons'
//! sockets, the TAP), husk-vmm's root becomes its VM's run directory,
//! mounted read-only, nosuid, nodev and noexec, and the host's file system
//! is gone from its view. Firecracker's jailer does the same with chroot
//! before exec; husk-vmm does it itself, in two steps, because it must open
//! host paths first and the mount namespace must exist before any thread
//! does (a thread's `unshare` would move only that thread):
//!
//! 1. [`Jail::prepare`], first thing in `main`, single-threaded: checks the
//!    directory and enters a private mount namespace, so nothing done in
//!    it reaches the host and every later thread shares it, with new IPC
//!    and UTS namespaces (no host System V or POSIX IPC object, no host
//!    name to change).
//! 2. [`Jail::enter`], after setup and before the capabilities are
//!    dropped: `pivot_root` into the directory (it moves every thread, as
//!    they share the mount namespace and the root), then detaches the old
//!    root.
//!
//! The directory is bound without its sub-mounts, so no host mount is
//! pinned by the VMM's namespace for its life.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error("--jail {dir}: must be an absolute path")]
    NotAbsolute { dir: PathBuf },
    #[error("--jail {dir}: not a directory (a file)")]
    NotADirectory { dir: PathBuf },
    #[error("--jail {dir}: not a directory ({source})")]
    Missing {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--jail {dir}: {what}: {errno} (husk-vmm needs CAP_SYS_ADMIN to confine itself)")]
    Sys {
        dir: PathBuf,
        what: &'static str,
        #[source]
        errno: nix::Error,
    },
}

/// A jail directory, with the private mount namespace already entered.
#[derive(Debug)]
pub struct Jail {
    dir: PathBuf,
}

impl Jail {
    /// Checks `dir` and moves this process into a new mount namespace in
    /// which every mount is private, and new IPC and UTS namespaces. Call
    /// it while the process has one thread.
    pub fn prepare(dir: &Path) -> Result<Self, JailError> {
        if !dir.is_absolute() {
            return Err(JailError::NotAbsolute { dir: dir.into() });
        }
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(JailError::NotADirectory { dir: dir.into() }),
            Err(source) => {
                return Err(JailError::Missing {
                    dir: dir.into(),
                    source,
                })
            }
        }
        let sys = |what| {
            move |errno| JailError::Sys {
                dir: dir.into(),
                what,
                errno,
            }
        };
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
            .map_err(sys("unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS)"))?;
        // Private, not slave: the VMM needs no later host mount, and
        // nothing it mounts or unmounts may reach the host.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(sys("making / private"))?;
        Ok(Jail { dir: dir.into() })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes the jail directory this process's root, read-only, and drops
    /// the rest of the file system from its view.
    pub fn enter(self) -> Result<(), JailError> {
        let dir = self.dir.as_path();
        let sys = |what| {
            move |errno| JailError::Sys {
                dir: dir.into(),
                what,
                errno,
            }
        };
        // pivot_root wants a mount point; a bind of the directory onto
        // itself is one. Not MS_REC: the run directory's sub-mounts, if
        // any, are not the VMM's business.
        mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(sys("bind-mounting the directory onto itself"))?;
        mount(
            None::<&str>,
            dir,
            None::<&str>,
            MsFlags::MS_REMOUNT
                | MsFlags::MS_BIND
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(sys("remounting it read-only"))?;
        nix::unistd::chdir(dir).map_err(sys("chdir"))?;
        // pivot_root(".", "."): the old root is stacked on the new one and
        // detached right after, so no directory for it is needed (runc's
        // way).
        nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root"))?;
        umount2(".", MntFlags::MNT_DETACH).map_err(sys("detaching the old root"))?;
        nix::unistd::chdir("/").map_err(sys("chdir /"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_or_missing_directory_is_refused_before_anything_changes() {
        let e = Jail::prepare(Path::new("run/x")).unwrap_err().to_string();
        assert_eq!(e, "--jail run/x: must be an absolute path");
        let e = Jail::prepare(Path::new("/nonexistent/husk-jail"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--jail /nonexistent/husk-jail: not a directory"),
            "{e}"
        );
        let f = tempfile::NamedTempFile::new().unwrap();
        let e = Jail::prepare(f.path()).unwrap_err().to_string();
        assert!(e.ends_with("not a directory (a file)"), "{e}");
    }
}
