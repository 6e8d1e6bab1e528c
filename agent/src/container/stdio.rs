//! A container process's stdio: pipes, or a pseudo-terminal.
//!
//! A terminal is made by the child itself, from the container's own
//! /dev/ptmx after its mounts, as runc makes it: the slave then lives in
//! the container's devpts, so `tty` names it and it belongs to the
//! container. The child sends the master end back over a socket pair
//! (SCM_RIGHTS); the agent keeps it for output, input and resizes.

use super::ContainerError;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::socket::{self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType};
use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The agent's ends of a process's stdio.
pub struct ParentIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// A terminal's master end, for resizes.
    pub pty: Option<OwnedFd>,
}

pub struct Stdio {
    pub parent: ParentIo,
    /// The child's [stdin, stdout, stderr] until it execs (for a terminal,
    /// /dev/null until the child replaces them with the slave).
    pub child: [OwnedFd; 3],
    /// The agent's end of the socket the terminal's master comes on.
    pub console: Option<OwnedFd>,
    pub console_child: Option<OwnedFd>,
}

fn io(what: &str) -> impl Fn(Errno) -> ContainerError + '_ {
    move |e| ContainerError::Io(format!("{what}: {e}"))
}

impl Stdio {
    /// Pipes; stdin is /dev/null unless the caller feeds it.
    pub fn pipes(stdin: bool) -> Result<Stdio, ContainerError> {
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
    pub fn terminal() -> Result<Stdio, ContainerError> {
        let (parent, child) = socket::socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(io("socketpair"))?;
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
pub fn receive_terminal(
    socket: OwnedFd,
    size: Option<(u16, u16)>,
    stdin: bool,
) -> Result<ParentIo, ContainerError> {
    let mut byte = [0u8; 1];
    let mut iov = [IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let msg = socket::recvmsg::<()>(
        socket.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )
    .map_err(io("recvmsg"))?;
    let fd = msg
        .cmsgs()
        .map_err(io("cmsg"))?
        .find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })
        .ok_or_else(|| ContainerError::Io("the child sent no terminal".into()))?;
    // SAFETY: the kernel just installed this fd for us; nothing else owns it.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    // Non-blocking for tokio; the flag is shared by the master's dups.
    nix::fcntl::fcntl(
        master.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::O_RDWR | OFlag::O_NONBLOCK),
    )
    .map_err(io("pty"))?;
    if let Some((rows, cols)) = size {
        set_window_size(&master, rows, cols)?;
    }
    let dup = |fd: &OwnedFd| {
        fd.try_clone()
            .map_err(|e| ContainerError::Io(format!("dup: {e}")))
    };
    Ok(ParentIo {
        stdin: if stdin { Some(dup(&master)?) } else { None },
        stdout: Some(dup(&master)?),
        stderr: None,
        pty: Some(master),
    })
}

pub fn set_window_size(master: &OwnedFd, rows: u16, cols: u16) -> Result<(), ContainerError> {
    let size = nix::libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer.
    if unsafe { nix::libc::ioctl(master.as_raw_fd(), nix::libc::TIOCSWINSZ, &size) } == -1 {
        return Err(ContainerError::Io(format!("TIOCSWINSZ: {}", Errno::last())));
    }
    Ok(())
}

fn dev_null() -> Result<OwnedFd, ContainerError> {
    let fd = nix::fcntl::open(
        c"/dev/null",
        OFlag::O_RDWR | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io("/dev/null"))?;
    // SAFETY: open just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// (parent end, child end) of a pipe; the parent end is non-blocking for
/// tokio, the child end blocking as a process expects.
fn pipe_pair(parent_reads: bool) -> Result<(OwnedFd, OwnedFd), ContainerError> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io("pipe"))?;
    let (parent, child) = if parent_reads { (r, w) } else { (w, r) };
    let flags =
        nix::fcntl::fcntl(parent.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).map_err(io("pipe"))?;
    nix::fcntl::fcntl(
        parent.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK),
    )
    .map_err(io("pipe"))?;
    Ok((parent, child))
}
