//! Where a container's files live on the host and in the guest, and the
//! mounts that put them there.
//!
//! containerd hands the rootfs as mounts (overlay from the snapshotter); the
//! shim mounts them at `<bundle>/rootfs` like runc's shim, then bind-mounts
//! that into the VM's shared directory, which virtiofsd serves to the guest:
//!
//!   host  <runtime_dir>/shared/<vm id>/<container id>/rootfs
//!   guest /run/husk/shared/<container id>/rootfs
//!
//! Bind mounts of host paths go the same way, one share point per mount:
//! `<container id>/mounts/<index in config.json>`.

use crate::spec::HostBind;
use containerd_shim_protos::api::Mount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::path::{Path, PathBuf};

pub fn shared_dir(runtime_dir: &Path, vm_id: &str) -> PathBuf {
    runtime_dir.join("shared").join(vm_id)
}

pub fn host_container_dir(shared: &Path, container_id: &str) -> PathBuf {
    shared.join(container_id)
}

pub fn guest_rootfs(container_id: &str) -> String {
    format!("{}/{container_id}/rootfs", husk_proto::GUEST_SHARED_DIR)
}

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("mounting the rootfs at {target}: {message}")]
    Mount { target: PathBuf, message: String },
}

/// Mounts containerd's rootfs mounts at `<bundle>/rootfs` and binds that
/// into the shared directory; with no mounts the spec's own root
/// (`host_root`, e.g. `ctr run --rootfs`) is shared as it is.
pub fn mount_rootfs(
    mounts: &[Mount],
    bundle: &Path,
    host_root: &Path,
    share_at: &Path,
) -> Result<(), RootfsError> {
    let rootfs = if mounts.is_empty() {
        host_root.to_owned()
    } else {
        bundle.join("rootfs")
    };
    let fail = |target: &Path, message: String| RootfsError::Mount {
        target: target.to_owned(),
        message,
    };
    std::fs::create_dir_all(&rootfs).map_err(|e| fail(&rootfs, e.to_string()))?;
    for m in mounts {
        let fstype = Some(m.type_.as_str()).filter(|s| !s.is_empty());
        let source = Some(m.source.as_str()).filter(|s| !s.is_empty());
        containerd_shim::mount::mount_rootfs(fstype, source, &m.options, &rootfs)
            .map_err(|e| fail(&rootfs, e.to_string()))?;
    }
    std::fs::create_dir_all(share_at).map_err(|e| fail(share_at, e.to_string()))?;
    if let Err(e) = mount(
        Some(&rootfs),
        share_at,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    ) {
        if !mounts.is_empty() {
            let _ = umount2(&rootfs, MntFlags::MNT_DETACH);
        }
        return Err(fail(share_at, e.to_string()));
    }
    Ok(())
}

/// Binds each host path of `binds` at `<container_dir>/mounts/<index>`,
/// read-only on the host side too where the spec asks for it.
pub fn mount_binds(container_dir: &Path, binds: &[HostBind]) -> Result<(), RootfsError> {
    for b in binds {
        let target = container_dir.join("mounts").join(b.index.to_string());
        let fail = |message: String| RootfsError::Mount {
            target: target.clone(),
            message: format!("binding {}: {message}", b.source.display()),
        };
        std::fs::create_dir_all(target.parent().unwrap_or(container_dir))
            .map_err(|e| fail(e.to_string()))?;
        if b.is_file {
            std::fs::File::create(&target).map_err(|e| fail(e.to_string()))?;
        } else {
            std::fs::create_dir_all(&target).map_err(|e| fail(e.to_string()))?;
        }
        mount(
            Some(&b.source),
            &target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| fail(e.to_string()))?;
        if b.read_only {
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|e| fail(format!("read-only remount: {e}")))?;
        }
    }
    Ok(())
}

/// Undoes `mount_rootfs` and `mount_binds` and removes the container's
/// share directory; safe to call on what was never mounted.
pub fn release(bundle: &Path, container_dir: &Path, unmount_bundle_rootfs: bool) {
    unmount_rootfs(bundle, &container_dir.join("rootfs"), unmount_bundle_rootfs);
    let _ = std::fs::remove_dir(container_dir.join("rootfs"));
    let mounts = container_dir.join("mounts");
    if let Ok(entries) = std::fs::read_dir(&mounts) {
        for entry in entries.flatten() {
            let path = entry.path();
            unmount_all(&path);
            // Only what is no longer a mount point can go: a file we
            // created, or an empty directory.
            let _ = std::fs::remove_file(&path).or_else(|_| std::fs::remove_dir(&path));
        }
    }
    let _ = std::fs::remove_dir(&mounts);
    let _ = std::fs::remove_dir(container_dir);
}

/// Undoes `mount_rootfs`; safe to call on what is not mounted.
pub fn unmount_rootfs(bundle: &Path, share_at: &Path, unmount_bundle_rootfs: bool) {
    unmount_all(share_at);
    if unmount_bundle_rootfs {
        unmount_all(&bundle.join("rootfs"));
    }
}

/// Unmounts everything stacked at `target` (lazily, so a busy virtiofsd
/// cannot keep it).
pub fn unmount_all(target: &Path) {
    for _ in 0..16 {
        match umount2(target, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return,
            Err(e) => {
                tracing::warn!(target = %target.display(), %e, "umount failed");
                return;
            }
        }
    }
}
