//! An init enters the rootfs. pivot_root(".", ".") stacks the
//! old root under the new one, and the detach removes it (as runc does).

use super::sys::At;
use crate::failure::{Report, Step};
use crate::plan::Root;
use nix::mount::{umount2, MntFlags};
use nix::unistd::{chdir, pivot_root};

pub(super) fn pivot(root: &Root) -> Result<(), Report> {
    let at = |r: nix::Result<()>| r.at(Step::PivotRoot, 0);
    at(chdir(root.path.as_c_str()))?;
    at(pivot_root(c".", c"."))?;
    at(umount2(c".", MntFlags::MNT_DETACH))?;
    at(chdir(c"/"))
}
