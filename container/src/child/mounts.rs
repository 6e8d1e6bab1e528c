//! An init's mounts, made below the rootfs
//! before pivot_root: first nothing may propagate to the agent, then the
//! rootfs becomes a mount of its own (pivot_root needs one), then the
//! spec's mounts in order.

use super::sys::make_target;
use super::sys::At;
use crate::failure::{Report, Step};
use crate::plan::{MountOp, Plan};
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use std::ffi::CStr;

pub(super) fn mount_all(plan: &Plan) -> Result<(), Report> {
    // Nothing mounted here may reach the agent's mount namespace.
    mount(
        None::<&CStr>,
        c"/",
        None::<&CStr>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&CStr>,
    )
    .at(Step::MountPrivate, 0)?;
    let rootfs = plan.root.path.as_c_str();
    mount(
        Some(rootfs),
        rootfs,
        None::<&CStr>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&CStr>,
    )
    .at(Step::BindRoot, 0)?;
    for (i, m) in plan.mounts.iter().enumerate() {
        mount_one(m).at(Step::Mount, i)?;
    }
    Ok(())
}

/// One mount: its target, the mount, a remount for a bind's flags, and
/// its propagation.
fn mount_one(m: &MountOp) -> Result<(), Errno> {
    make_target(&m.target, m.target_is_file)?;
    let target = m.target.as_c_str();
    mount(
        m.source.as_deref(),
        target,
        m.fstype.as_deref(),
        m.flags,
        m.data.as_deref(),
    )?;
    if let Some(bits) = m.remount_flags {
        mount(
            None::<&CStr>,
            target,
            None::<&CStr>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | bits,
            None::<&CStr>,
        )?;
    }
    if let Some(p) = m.propagation {
        mount(None::<&CStr>, target, None::<&CStr>, p, None::<&CStr>)?;
    }
    Ok(())
}
