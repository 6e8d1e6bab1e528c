//! A container process's stdio, the agent's side: pipes, or a
//! pseudo-terminal.
//!
//! A terminal is made by the child itself, from the container's own
//! /dev/ptmx after its mounts, as runc makes it: the slave then lives in
//! the container's devpts, so `tty` names it and it belongs to the
//! container. The child sends the master end back over a socket pair
//! (SCM_RIGHTS, see `child::console`); the agent keeps it for output, input
//! and resizes.

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("pipe: {0}")]
    Pipe(#[source] Errno),
    #[error("/dev/null: {0}")]
    DevNull(#[source] io::Error),
    #[error("socketpair: {0}")]
    SocketPair(#[source] Errno),
    #[error("recvmsg: {0}")]
    Receive(#[source] Errno),
    #[error("the child sent no terminal")]
    NoTerminal,
    #[error("pty: {0}")]
    NonBlocking(#[source] Errno),
    #[error("dup: {0}")]
    Dup(#[source] io::Error),
    #[error("TIOCSWINSZ: {0}")]
    WindowSize(#[source] Errno),
}

/// The agent's ends of a process's stdio.
pub(crate) struct ParentIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// A terminal's master end, for resizes.
    pub pty: Option<OwnedFd>,
}

pub(crate) struct Stdio {
    pub parent: ParentIo,
    /// The child's [stdin, stdout, stderr] until it execs (for a terminal,
    /// /dev/null until the child replaces them with the slave).
    pub child: [OwnedFd; 3],
    /// The agent's end of the socket the terminal's master comes on.
    pub console: Option<OwnedFd>,
    pub console_child: Option<OwnedFd>,
}

impl Stdio {
    /// Pipes; stdin is /dev/null unless the caller feeds it.
    pub fn pipes(stdin: bool) -> Result<Stdio, StdioError> {
        let (stdout_parent, stdout_child) = pipe_pair(true)?;
        let (stderr_parent, stderr_child) = pipe_pair(true)?;
        let (stdin_parent, stdin_child) = if stdin {
            let (p, c) = pipe_pair(false)?;
            (Some(p), c)
        } else {
            (None, dev_null()?)
        };
        Ok(Stdio {
            parent: ParentIo {
                stdin: stdin_parent,
                stdout: Some(stdout_parent),
                stderr: Some(stderr_parent),
                pty: None,
            },
            child: [stdin_child, stdout_child, stderr_child],
            console: None,
            console_child: None,
        })
    }

    /// A socket pair for the terminal the child will make.
    pub fn terminal() -> Result<Stdio, StdioError> {
        let (parent, child) = socket::socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(StdioError::SocketPair)?;
        Ok(Stdio {
            parent: ParentIo {
                stdin: None,
                stdout: None,
                stderr: None,
                pty: None,
            },
            child: [dev_null()?, dev_null()?, dev_null()?],
            console: Some(parent),
            console_child: Some(child),
        })
    }
}

/// Receives the terminal's master from the child, sizes it and splits it
/// into the agent's ends: output on "stdout", input (if fed) on "stdin".
pub(crate) fn receive_terminal(
    socket: OwnedFd,
    size: Option<(u16, u16)>,
    stdin: bool,
) -> Result<ParentIo, StdioError> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = socket::recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(StdioError::Receive)?;
    let fd = msg
        .cmsgs()
        .map_err(StdioError::Receive)?
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .ok_or(StdioError::NoTerminal)?;
    // SAFETY: the kernel just installed this fd for us (SCM_RIGHTS);
    // nothing else owns it.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    // Non-blocking for tokio; the flag is shared by the master's dups.
    fcntl(
        master.as_raw_fd(),
        FcntlArg::F_SETFL(OFlag::O_RDWR | OFlag::O_NONBLOCK),
    )
    .map_err(StdioError::NonBlocking)?;
    if let Some((rows, cols)) = size {
        set_window_size(&master, rows, cols)?;
    }
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(StdioError::Dup);
    Ok(ParentIo {
        stdin: if stdin { Some(dup(&master)?) } else { None },
        stdout: Some(dup(&master)?),
        stderr: None,
        pty: Some(master),
    })
}

pub(crate) fn set_window_size(master: &OwnedFd, rows: u16, cols: u16) -> Result<(), StdioError> {
    let size = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize through the pointer, which
    // points at `size` on our stack; the fd is open (owned by `master`).
    let ret = unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &size) };
    if ret == -1 {
        return Err(StdioError::WindowSize(Errno::last()));
    }
    Ok(())
}

/// /dev/null, read-write and close-on-exec (std opens with O_CLOEXEC).
fn dev_null() -> Result<OwnedFd, StdioError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(StdioError::DevNull)
}

/// (parent end, child end) of a pipe; the parent end is non-blocking for
/// tokio, the child end blocking as a process expects.
fn pipe_pair(parent_reads: bool) -> Result<(OwnedFd, OwnedFd), StdioError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(StdioError::Pipe)?;
    let (parent, child) = if parent_reads { (r, w) } else { (w, r) };
    let flags = fcntl(parent.as_raw_fd(), FcntlArg::F_GETFL).map_err(StdioError::Pipe)?;
    fcntl(
        parent.as_raw_fd(),
        FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(StdioError::Pipe)?;
    Ok((parent, child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_give_the_agent_non_blocking_ends_and_the_child_blocking_ones() {
        let s = Stdio::pipes(true).unwrap();
        let nonblocking = |fd: &OwnedFd| {
            let flags = fcntl(fd.as_raw_fd(), FcntlArg::F_GETFL).unwrap();
            OFlag::from_bits_truncate(flags).contains(OFlag::O_NONBLOCK)
        };
        assert!(nonblocking(s.parent.stdin.as_ref().unwrap()));
        assert!(nonblocking(s.parent.stdout.as_ref().unwrap()));
        assert!(s.child.iter().all(|fd| !nonblocking(fd)));
        // Without stdin the child reads /dev/null and the agent has no end.
        assert!(Stdio::pipes(false).unwrap().parent.stdin.is_none());
    }
}
