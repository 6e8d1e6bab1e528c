//! Enter namespaces by file with setns(2): a pod's shared ones
//! for an init, before it mounts anything; all of the init's for an exec
//! (its PID namespace was entered by the thread that cloned it).

use super::sys::borrow;
use super::sys::At;
use crate::failure::{Report, Step};
use crate::plan::Namespaces;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd;

pub(super) fn enter(namespaces: &Namespaces) -> Result<(), Report> {
    for (i, (path, kind)) in namespaces.enter.iter().enumerate() {
        let fd = nix::fcntl::open(
            path.as_c_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .at(Step::JoinNamespace, i)?;
        let joined = nix::sched::setns(borrow(fd), *kind);
        let _ = unistd::close(fd);
        joined.at(Step::JoinNamespace, i)?;
    }
    Ok(())
}
