//! process.user: supplementary groups, gid and uid, then the umask. Raw
//! system calls: glibc's set*id wrappers broadcast the change to every
//! thread they know of, and in this clone those threads are gone, so the
//! wrappers would wait for them forever.

use super::sys::check;
use super::sys::At;
use crate::failure::{Report, Step};
use crate::plan::User;
use nix::errno::Errno;
use nix::libc::{self, c_long};
use nix::sys::stat::{umask, Mode};

pub(super) fn set_ids(user: &User) -> Result<(), Report> {
    let groups = &user.additional_gids;
    // SAFETY: setgroups reads `groups.len()` gids (u32, as gid_t) through
    // the pointer, which points into the plan's vector of that length.
    let ret = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    check(ret).at(Step::User, 0)?;
    set_id(libc::SYS_setresgid, user.gid).at(Step::User, 1)?;
    set_id(libc::SYS_setresuid, user.uid).at(Step::User, 2)
}

/// setresgid or setresuid (`nr`): the same id as real, effective and saved.
fn set_id(nr: c_long, id: u32) -> Result<(), Errno> {
    let id = c_long::from(id);
    // SAFETY: setresgid and setresuid take three integer ids; no memory is
    // passed.
    check(unsafe { libc::syscall(nr, id, id, id) })
}

pub(super) fn set_umask(user: &User) {
    if let Some(mask) = user.umask {
        umask(Mode::from_bits_truncate(mask as libc::mode_t));
    }
}
