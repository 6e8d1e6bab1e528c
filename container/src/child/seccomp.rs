//! linux.seccomp: load the filter the plan compiled, with one seccomp(2)
//! call (libseccomp's loader would allocate). Where in the sequence it is
//! loaded depends on noNewPrivileges (see `run`).

use super::sys::check;
use super::sys::At;
use crate::failure::{Report, Step};
use crate::plan::SeccompProgram;
use nix::errno::Errno;
use nix::libc::{self, c_ulong};

pub(super) fn load(program: Option<&SeccompProgram>) -> Result<(), Report> {
    match program {
        Some(p) => install(p).at(Step::Seccomp, 0),
        None => Ok(()),
    }
}

/// seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog).
fn install(program: &SeccompProgram) -> Result<(), Errno> {
    const SECCOMP_SET_MODE_FILTER: c_ulong = 1;
    let fprog = libc::sock_fprog {
        // The plan refuses filters longer than u16::MAX instructions.
        len: program.filter.len() as u16,
        filter: program.filter.as_ptr().cast_mut(),
    };
    // SAFETY: seccomp(2) reads the sock_fprog and its `len` instructions
    // through the pointers: `fprog` on this stack frame, and the plan's
    // vector of exactly that length. It copies the filter and writes nothing.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            SECCOMP_SET_MODE_FILTER,
            c_ulong::from(program.flags),
            &fprog as *const libc::sock_fprog,
        )
    };
    check(ret)
}
