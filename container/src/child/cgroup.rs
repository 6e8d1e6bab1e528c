//! An init joins the container's cgroup, then makes the cgroup
//! namespace, so that its root is that cgroup (as under runc).

use super::sys::borrow;
use super::sys::At;
use crate::failure::{Report, Step};
use crate::plan::Plan;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::stat::Mode;
use nix::unistd;

pub(super) fn join(plan: &Plan) -> Result<(), Report> {
    if let Some(procs) = &plan.cgroup.procs {
        let fd = nix::fcntl::open(
            procs.as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .at(Step::Cgroup, 0)?;
        // "0" is the writer itself.
        let written = unistd::write(borrow(fd), b"0");
        let _ = unistd::close(fd);
        written.at(Step::Cgroup, 0)?;
    }
    if plan.namespaces.unshare_cgroup {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP).at(Step::Cgroup, 1)?;
    }
    Ok(())
}
