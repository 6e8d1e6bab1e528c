//! A terminal (process.terminal), made after the mounts so that /dev/ptmx
//! is the container's: a pseudo-terminal whose slave becomes the process's
//! stdio and controlling terminal, and whose master is sent to the agent
//! over the console socket (see `crate::stdio`). Only system calls on
//! stack memory: nix's sendmsg would allocate its control buffer.

use super::sys::check;
use super::sys::At;
use crate::failure::{Report, Step};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::libc::{self, c_int, c_long};
use nix::sys::stat::Mode;
use nix::unistd;
use std::os::fd::RawFd;

pub(super) fn open(socket: RawFd) -> Result<(), Report> {
    make_terminal(socket).at(Step::Terminal, 0)
}

fn make_terminal(socket: RawFd) -> Result<(), Errno> {
    let master = nix::fcntl::open(
        c"/dev/ptmx",
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let unlock: c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int through the pointer, which points
    // at `unlock` on this stack frame.
    let ret = unsafe { libc::ioctl(master, libc::TIOCSPTLCK, &unlock) };
    check(c_long::from(ret))?;
    // TIOCGPTPEER opens the slave through the master, with no path lookup.
    // SAFETY: TIOCGPTPEER takes open flags as an integer; no memory is passed.
    let slave = unsafe { libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY) };
    check(c_long::from(slave))?;
    for target in 0..3 {
        unistd::dup2(slave, target)?;
    }
    if slave > 2 {
        let _ = unistd::close(slave);
    }
    // The session leader (setsid in `stdio`) takes its controlling terminal.
    // SAFETY: TIOCSCTTY takes an integer (0: do not steal); no memory is passed.
    let ret = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    check(c_long::from(ret))?;
    send_fd(socket, master)?;
    let _ = unistd::close(master);
    Ok(())
}

/// Sends `fd` over the unix socket `socket`: one byte with the fd attached
/// as SCM_RIGHTS.
fn send_fd(socket: RawFd, fd: RawFd) -> Result<(), Errno> {
    const INT: u32 = std::mem::size_of::<c_int>() as u32;
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // 64 bytes, 8-aligned: more than CMSG_SPACE(sizeof(int)), 24 on x86_64.
    let mut control = [0u64; 8];
    // SAFETY: msghdr is plain data, for which all-zero bytes are a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE and CMSG_LEN only compute sizes. With msg_control
    // and msg_controllen set, CMSG_FIRSTHDR returns the start of `control`,
    // not null (it is larger than a header), and the header and the int
    // after it lie inside `control`; the int is written unaligned.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(INT) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(INT) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), fd);
    }
    // SAFETY: `msg` points at `iov`, `byte` and `control`, all alive on this
    // stack frame for the call; sendmsg only reads them.
    let sent = unsafe { libc::sendmsg(socket, &msg, 0) };
    check(sent as c_long)
}
