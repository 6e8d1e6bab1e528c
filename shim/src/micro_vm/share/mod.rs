//! The files a pod shares with its guest, laid out so that the guest can
//! never make the shim touch a host path outside the pod (docs/security.md).
//!
//! ```text
//! <runtime_dir>/pods/<pod id>/          0700, host-only
//!     mounts/                           the shim's mounts; a shared mount
//!         <container id>/rootfs         the container's rootfs (bind)
//!         <container id>/mounts/<i>     host bind i of config.json
//!     shared/                           read-only bind of mounts/, a slave:
//!                                       what virtiofsd serves to the guest
//! ```
//!
//! The guest writes only inside the rootfs and the read-write binds, which
//! are mounts of their own; `shared/` itself is read-only, so nothing the
//! guest makes appears in the directories the shim creates files in,
//! mounts on or removes (Kata lays its shared directory out the same way).
//! Binds are made with the new mount API (open_tree, mount_setattr,
//! move_mount), so a read-only or nosuid/nodev bind is never visible to
//! the guest, even for an instant, without those flags: a remount would
//! not propagate to `shared/`. Every unmount is `UMOUNT_NOFOLLOW`, of a
//! path the shim recorded; removal is `rmdir`/`unlink` of what the shim
//! made, never a recursive delete.
//!
//! In the guest, `shared/` is `/run/husk/shared`.

use super::guest_spec::HostBind;
use crate::host::mounts::{is_mount_point, mounts_under, unmount};
use nix::mount::{mount, MsFlags};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: {source}")]
    Mount {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("binding {source_path} at {target}: {source}")]
    Bind {
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ShareError + 'a {
    move |source| ShareError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn mnt<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> ShareError + 'a {
    move |source| ShareError::Mount {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The share tree of one pod.
#[derive(Debug, Clone)]
pub struct ShareTree {
    root: PathBuf,
    /// `pods/<pod id>` when the tree was made for a pooled VM under
    /// another name: a link the shim made to it (`adopt`).
    alias: Option<PathBuf>,
}

/// What `share_container` made for one container, undone by `unshare`
/// in reverse order.
#[derive(Debug, Default)]
pub struct ContainerShare {
    /// Mount points made, in order.
    mounts: Vec<PathBuf>,
    /// Directories and files made, in order.
    made: Vec<PathBuf>,
}

impl ShareTree {
    /// The tree of pod `pod_id`: `pods/<pod id>`, or the pooled VM's tree
    /// that name links to (`adopt`; a link only the shim makes, in a
    /// directory only it writes, to a plain name beside it).
    pub fn new(runtime_dir: &Path, pod_id: &str) -> Self {
        let path = runtime_dir.join("pods").join(pod_id);
        let target = std::fs::symlink_metadata(&path)
            .is_ok_and(|m| m.file_type().is_symlink())
            .then(|| std::fs::read_link(&path).ok())
            .flatten()
            .filter(|t| {
                t.components().count() == 1
                    && t.to_str().is_some_and(|n| husk_proto::is_safe_id(n, 128))
            });
        match target {
            Some(t) => Self {
                root: path.with_file_name(t),
                alias: Some(path),
            },
            None => Self {
                root: path,
                alias: None,
            },
        }
    }

    /// Names the tree for pod `id` too (a pooled VM's tree becoming its
    /// pod's): `pods/<id>` links to it. The tree itself does not move:
    /// virtiofsd finds the mounts below it by the path it was given.
    pub fn adopt(&mut self, id: &str) -> Result<(), ShareError> {
        let alias = self.root.with_file_name(id);
        let target = self.root.file_name().unwrap_or_default();
        std::os::unix::fs::symlink(target, &alias).map_err(io("naming the share tree", &alias))?;
        self.alias = Some(alias);
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn mounts(&self) -> PathBuf {
        self.root.join("mounts")
    }

    /// The directory virtiofsd serves: a read-only view of the shim's
    /// mounts.
    pub fn shared_dir(&self) -> PathBuf {
        self.root.join("shared")
    }

    /// Makes the tree, unless it exists: `mounts/` as a shared mount of its
    /// own and `shared/` as its read-only slave. On error nothing of it is
    /// left.
    pub fn create(&self) -> Result<(), ShareError> {
        let (mounts, shared) = (self.mounts(), self.shared_dir());
        if is_mount_point(&shared) {
            return Ok(());
        }
        let result = (|| {
            if let Some(parent) = self.root.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)
                    .map_err(io("creating", parent))?;
            }
            for dir in [&self.root, &mounts, &shared] {
                make_dir(dir)?;
            }
            // A peer group of its own: bind onto itself, private, shared.
            mount(
                Some(&mounts),
                &mounts,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(mnt("binding", &mounts))?;
            for flag in [MsFlags::MS_PRIVATE, MsFlags::MS_SHARED] {
                mount(None::<&str>, &mounts, None::<&str>, flag, None::<&str>)
                    .map_err(mnt("setting propagation of", &mounts))?;
            }
            bind(
                &mounts,
                &shared,
                BindFlags {
                    recursive: false,
                    read_only: true,
                },
            )?;
            mount(
                None::<&str>,
                &shared,
                None::<&str>,
                MsFlags::MS_SLAVE,
                None::<&str>,
            )
            .map_err(mnt("making a slave of", &shared))
        })();
        if result.is_err() {
            self.remove();
        }
        result
    }

    /// Shares container `id`: `rootfs` (a host directory, the bundle's
    /// mounted rootfs) at `<id>/rootfs` and each host bind at
    /// `<id>/mounts/<index>`. On error nothing of it is left.
    pub fn share_container(
        &self,
        id: &str,
        rootfs: &Path,
        binds: &[HostBind],
    ) -> Result<ContainerShare, ShareError> {
        let mut record = ContainerShare::default();
        match self.share_into(&mut record, id, rootfs, binds) {
            Ok(()) => Ok(record),
            Err(e) => {
                self.unshare(record);
                Err(e)
            }
        }
    }

    fn share_into(
        &self,
        record: &mut ContainerShare,
        id: &str,
        rootfs: &Path,
        binds: &[HostBind],
    ) -> Result<(), ShareError> {
        let dir = self.mounts().join(id);
        make_dir(&dir)?;
        record.made.push(dir.clone());
        let target = dir.join("rootfs");
        make_dir(&target)?;
        record.made.push(target.clone());
        bind(
            rootfs,
            &target,
            BindFlags {
                recursive: true,
                read_only: false,
            },
        )?;
        record.mounts.push(target);
        if binds.is_empty() {
            return Ok(());
        }
        let mounts = dir.join("mounts");
        make_dir(&mounts)?;
        record.made.push(mounts.clone());
        for b in binds {
            let target = mounts.join(b.index.to_string());
            if b.is_file {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io("creating", &target))?;
            } else {
                make_dir(&target)?;
            }
            record.made.push(target.clone());
            bind(
                &b.source,
                &target,
                BindFlags {
                    recursive: true,
                    read_only: b.read_only,
                },
            )?;
            record.mounts.push(target);
        }
        Ok(())
    }

    /// Undoes `share_container`: unmounts and removes what it recorded.
    pub fn unshare(&self, record: ContainerShare) {
        for m in record.mounts.iter().rev() {
            unmount(m);
        }
        for path in record.made.iter().rev() {
            remove_made(path);
        }
    }

    /// What a dead shim left of container `id` (no record survived it):
    /// its mounts, from the mount table, and its directory.
    pub fn remove_container(&self, id: &str) {
        let dir = self.mounts().join(id);
        if !is_real_dir(&dir) {
            return;
        }
        for m in mounts_under(&dir) {
            unmount(&m);
        }
        if mounts_under(&dir).is_empty() {
            remove_tree(&dir);
        }
    }

    /// Unmounts everything under the tree and removes it: the pod's end, or
    /// what a dead shim left (then from the mount table, as no record
    /// survived it). Never deletes anything below a mount.
    pub fn remove(&self) {
        if !self.root.exists() {
            if let Some(alias) = &self.alias {
                let _ = std::fs::remove_file(alias);
            }
            return;
        }
        unmount(&self.shared_dir());
        for m in mounts_under(&self.mounts()) {
            unmount(&m);
        }
        unmount(&self.mounts());
        let still_mounted = mounts_under(&self.root);
        if !still_mounted.is_empty() {
            tracing::warn!(dir = %self.root.display(), ?still_mounted, "mounts left in the share tree; it stays");
            return;
        }
        remove_tree(&self.root);
        if let Some(alias) = &self.alias {
            let _ = std::fs::remove_file(alias);
        }
    }
}

fn make_dir(dir: &Path) -> Result<(), ShareError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && is_real_dir(dir) => Ok(()),
        Err(e) => Err(io("creating", dir)(e)),
    }
}

fn is_real_dir(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_dir())
}

/// Removes a file or empty directory the shim made; anything else (a mount
/// point still busy, a directory with content) stays, with a warning.
fn remove_made(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let result = if meta.is_dir() {
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), %e, "cannot remove");
    }
}

/// Removes the host-only tree bottom-up: entries are unlinked, never
/// followed, and a directory on another device or in the mount table is
/// neither entered nor removed.
fn remove_tree(dir: &Path) {
    let Ok(top) = std::fs::symlink_metadata(dir) else {
        return;
    };
    let mounted = mounts_under(Path::new("/"));
    remove_below(dir, top.dev(), &mounted);
    remove_made(dir);
}

fn remove_below(dir: &Path, dev: u64, mounted: &[PathBuf]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if meta.dev() != dev || mounted.contains(&path) {
                tracing::warn!(path = %path.display(), "a mount in the share tree; left as it is");
                continue;
            }
            remove_below(&path, dev, mounted);
        }
        remove_made(&path);
    }
}

struct BindFlags {
    recursive: bool,
    read_only: bool,
}

/// Binds `source` at `target` (which the shim made, in the host-only
/// tree), nosuid and nodev, read-only when asked, with the flags set
/// before the mount is attached (see the module comment).
fn bind(source: &Path, target: &Path, flags: BindFlags) -> Result<(), ShareError> {
    let fail = |e: nix::Error| ShareError::Bind {
        source_path: source.to_owned(),
        target: target.to_owned(),
        source: e,
    };
    let c = |p: &Path| CString::new(p.as_os_str().as_bytes()).map_err(|_| fail(nix::Error::EINVAL));
    let (src, dst) = (c(source)?, c(target)?);
    let mut tree_flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if flags.recursive {
        tree_flags |= libc::AT_RECURSIVE as libc::c_uint;
    }
    // SAFETY: open_tree reads the NUL-terminated path `src`, which lives
    // across the call, and returns a new file descriptor or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            tree_flags,
        )
    };
    if fd < 0 {
        return Err(fail(nix::Error::last()));
    }
    // SAFETY: `fd` was just returned by open_tree and is owned by nothing else.
    let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if flags.read_only {
        attr.attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    let empty = c"";
    let at = libc::AT_EMPTY_PATH
        | if flags.recursive {
            libc::AT_RECURSIVE
        } else {
            0
        };
    // SAFETY: mount_setattr reads `attr` (a live mount_attr whose size is
    // passed) and the empty path; `tree` is a valid open_tree descriptor.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            at,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if r < 0 {
        return Err(fail(nix::Error::last()));
    }
    // SAFETY: move_mount reads the two NUL-terminated paths, which live
    // across the call; `tree` is a valid detached mount.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            dst.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(fail(nix::Error::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
