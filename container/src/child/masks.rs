//! An init's last view of its files: linux.maskedPaths hidden (a directory under an
//! empty read-only tmpfs, a file under /dev/null), linux.readonlyPaths
//! bound read-only, and a read-only root last. Paths the image lacks are
//! skipped, as under runc.

use super::sys::At;
use crate::failure::{Report, Step};
use crate::plan::{Masks, Root};
use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use std::ffi::CStr;

pub(super) fn apply(masks: &Masks, root: &Root) -> Result<(), Report> {
    for (i, p) in masks.masked.iter().enumerate() {
        mask(p).at(Step::MaskPath, i)?;
    }
    for (i, p) in masks.readonly.iter().enumerate() {
        make_readonly(p).at(Step::ReadonlyPath, i)?;
    }
    if root.readonly {
        remount(c"/", MsFlags::empty()).at(Step::ReadonlyRoot, 0)?;
    }
    Ok(())
}

fn mask(path: &CStr) -> Result<(), Errno> {
    match nix::sys::stat::stat(path) {
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
        Ok(st) if st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFDIR => mount(
            Some(c"tmpfs"),
            path,
            Some(c"tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&CStr>,
        ),
        Ok(_) => mount(
            Some(c"/dev/null"),
            path,
            None::<&CStr>,
            MsFlags::MS_BIND,
            None::<&CStr>,
        ),
    }
}

fn make_readonly(path: &CStr) -> Result<(), Errno> {
    match mount(
        Some(path),
        path,
        None::<&CStr>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&CStr>,
    ) {
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e),
        Ok(()) => remount(path, MsFlags::MS_REC),
    }
}

/// A read-only bind remount of what is mounted at `path`.
fn remount(path: &CStr, extra: MsFlags) -> Result<(), Errno> {
    mount(
        None::<&CStr>,
        path,
        None::<&CStr>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | extra,
        None::<&CStr>,
    )
}
