//! Where a container's files live on the host and in the guest, and the
//! mounts that put them there.
//!
//! containerd hands the rootfs as mounts (overlay from the snapshotter); the
//! shim mounts them at `<bundle>/rootfs` like runc's shim, then bind-mounts
//! that into the VM's shared directory, which virtiofsd serves to the guest:
//!
//!   host  <runtime_dir>/shared/<vm id>/<container id>/rootfs
//!   guest /run/husk/shared/<container id>/rootfs

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

/// Mounts containerd's rootfs mounts at `<bundle>/rootfs` (none: the bundle
/// brings its own rootfs) and binds it into the shared directory.
pub fn mount_rootfs(mounts: &[Mount], bundle: &Path, share_at: &Path) -> Result<(), RootfsError> {
    let rootfs = bundle.join("rootfs");
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
