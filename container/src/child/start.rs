//! The last checks before "created" (the cwd, the program on the PATH
//! prepared in the plan), and the wait for Start: the child reports
//! `Created` and blocks on the start pipe until the agent releases it.

use super::sys::{borrow, exit, is_regular};
use super::sys::{At, ChildFds};
use crate::failure::{Report, Step};
use crate::plan::ProcessPlan;
use nix::errno::Errno;
use nix::unistd::{self, AccessFlags};
use std::ffi::CStr;

/// Enters the cwd and finds the program, as the user will see it.
pub(super) fn find_program(process: &ProcessPlan) -> Result<&CStr, Report> {
    unistd::chdir(process.cwd.as_c_str()).at(Step::Cwd, 0)?;
    process
        .exec_candidates
        .iter()
        .map(|c| c.as_c_str())
        .find(|c| unistd::access(*c, AccessFlags::X_OK).is_ok() && is_regular(c))
        .ok_or(Report::new(Step::Lookup, 0, Errno::ENOENT))
}

/// Reports `Created` and waits for Start's byte; at EOF (the agent removed
/// the process instead) exits quietly.
pub(super) fn wait(fds: &ChildFds) -> Result<(), Report> {
    unistd::write(borrow(fds.status), &Report::CREATED.encode()).at(Step::Created, 0)?;
    let mut byte = [0u8; 1];
    match unistd::read(fds.start, &mut byte) {
        Ok(1) => Ok(()),
        Ok(_) => exit(0),
        Err(e) => Err(Report::new(Step::WaitStart, 0, e)),
    }
}
