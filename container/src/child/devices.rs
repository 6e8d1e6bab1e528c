//! An init's /dev. Before pivot_root, the default devices
//! are bound from the guest's own nodes over empty files (runc does the
//! same in user namespaces; here it saves a mknod per device) and
//! linux.devices are made with mknod; after it, the /dev symlinks.

use super::sys::At;
use super::sys::{make_path, make_target, Last};
use crate::failure::{Report, Step};
use crate::plan::{DeviceNode, Devices};
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, umask, Mode, SFlag};
use nix::unistd::{self, Gid, Uid};
use std::ffi::CStr;

pub(super) fn create(devices: &Devices) -> Result<(), Report> {
    for (i, (source, target)) in devices.binds.iter().enumerate() {
        make_target(target, true).at(Step::Device, i)?;
        mount(
            Some(source.as_c_str()),
            target.as_c_str(),
            None::<&CStr>,
            MsFlags::MS_BIND,
            None::<&CStr>,
        )
        .at(Step::Device, i)?;
    }
    // With umask 0, as runc does, so that fileMode is exact.
    let old_mask = umask(Mode::empty());
    for (i, node) in devices.nodes.iter().enumerate() {
        make_node(node).at(Step::DeviceNode, i)?;
    }
    umask(old_mask);
    Ok(())
}

/// A node of linux.devices, replacing whatever is at its path.
fn make_node(d: &DeviceNode) -> Result<(), Errno> {
    let target = d.target.as_c_str();
    make_path(target, Last::Skip)?;
    match unistd::unlink(target) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e),
    }
    mknod(
        target,
        SFlag::from_bits_truncate(d.mode & nix::libc::S_IFMT),
        Mode::from_bits_truncate(d.mode & 0o7777),
        makedev(d.major, d.minor),
    )?;
    unistd::chown(
        target,
        Some(Uid::from_raw(d.uid)),
        Some(Gid::from_raw(d.gid)),
    )
}

/// Inside the new root: /dev/fd, /dev/stdin, ... (an image's own wins).
pub(super) fn link(devices: &Devices) -> Result<(), Report> {
    for (i, (target, link)) in devices.links.iter().enumerate() {
        match unistd::symlinkat(target.as_c_str(), None, link.as_c_str()) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(e).at(Step::Device, i),
        }
    }
    Ok(())
}
