//! An init writes linux.sysctl inside the container's
//! namespaces before /proc/sys becomes read-only (it is in readonlyPaths).

use super::sys::borrow;
use super::sys::At;
use crate::failure::{Report, Step};
use crate::plan::Sysctl;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd;

pub(super) fn write(sysctls: &[Sysctl]) -> Result<(), Report> {
    for (i, s) in sysctls.iter().enumerate() {
        write_one(s).at(Step::Sysctl, i)?;
    }
    Ok(())
}

fn write_one(s: &Sysctl) -> Result<(), Errno> {
    let fd = nix::fcntl::open(
        s.path.as_c_str(),
        OFlag::O_WRONLY | OFlag::O_TRUNC | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let written = unistd::write(borrow(fd), s.value.to_bytes());
    let _ = unistd::close(fd);
    written.map(drop)
}
