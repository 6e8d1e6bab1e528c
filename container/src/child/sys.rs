//! What the phases share: the child's descriptors, a failed call placed
//! in the report ([`At`]), raw system call results, borrowed fds, and
//! `mkdir -p` on a prepared C string, all without allocating.

use crate::failure::{Report, Step};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd;
use std::ffi::CStr;
use std::os::fd::{BorrowedFd, RawFd};

/// A raw system call's return: -1 means errno.
pub(super) fn check(ret: nix::libc::c_long) -> Result<(), Errno> {
    if ret == -1 {
        Err(Errno::last())
    } else {
        Ok(())
    }
}

/// Ends the child at once, with no atexit handlers and no stdio flush
/// (`std::process::exit` runs both, and both take locks).
pub(super) fn exit(code: nix::libc::c_int) -> ! {
    // SAFETY: _exit(2) ends the process; it reads and writes no memory.
    unsafe { nix::libc::_exit(code) }
}

/// One of the child's fds (`ChildFds`, or one it opened), as nix takes it.
pub(super) fn borrow(fd: RawFd) -> BorrowedFd<'static> {
    // SAFETY: the fds of `ChildFds` stay open for the child's whole life
    // (until exec or _exit), and the child's own are closed only after
    // their last use.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// What `make_path` makes of the last component of a path.
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Last {
    Dir,
    File,
    /// Only the parent directories (for mknod).
    Skip,
}

/// A mount target: a directory, or an empty file for a file bind mount.
pub(super) fn make_target(path: &CStr, is_file: bool) -> Result<(), Errno> {
    make_path(path, if is_file { Last::File } else { Last::Dir })
}

/// mkdir -p, then the last component as `last_as` says. Walks the
/// prepared C string's slashes into a stack buffer: no allocation.
pub(super) fn make_path(path: &CStr, last_as: Last) -> Result<(), Errno> {
    let bytes = path.to_bytes();
    let mut buf = [0u8; 4096];
    if bytes.len() >= buf.len() {
        return Err(Errno::ENAMETOOLONG);
    }
    for end in (1..=bytes.len()).filter(|&e| e == bytes.len() || bytes[e] == b'/') {
        buf[..end].copy_from_slice(&bytes[..end]);
        buf[end] = 0;
        let part = CStr::from_bytes_until_nul(&buf[..=end]).map_err(|_| Errno::EINVAL)?;
        let last = end == bytes.len();
        if last && last_as == Last::Skip {
            break;
        }
        if last && last_as == Last::File {
            match nix::fcntl::open(
                part,
                OFlag::O_CREAT | OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            ) {
                Ok(fd) => {
                    let _ = unistd::close(fd);
                }
                Err(Errno::EISDIR) => {}
                Err(e) => return Err(e),
            }
        } else {
            match unistd::mkdir(part, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(Errno::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

pub(super) fn is_regular(path: &CStr) -> bool {
    nix::sys::stat::stat(path).is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG)
}

/// File descriptors the child uses; all close-on-exec except after dup2.
pub(crate) struct ChildFds {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// The status pipe's write end: reports to the agent.
    pub status: RawFd,
    /// The start pipe's read end: a byte releases the child to exec.
    pub start: RawFd,
    /// Socket to send a terminal's master on; -1 without a terminal.
    pub console: RawFd,
}

/// A system call's errno, placed: `?` in a phase turns it into the report.
pub(super) trait At<T> {
    fn at(self, step: Step, index: usize) -> Result<T, Report>;
}

impl<T> At<T> for Result<T, Errno> {
    fn at(self, step: Step, index: usize) -> Result<T, Report> {
        self.map_err(|errno| Report::new(step, index, errno))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;

    fn c(p: &std::path::Path) -> CString {
        CString::new(p.to_str().unwrap()).unwrap()
    }

    #[test]
    fn make_target_creates_directories_and_files() {
        let dir = tempfile::tempdir().unwrap();
        make_target(&c(&dir.path().join("a/b/c")), false).unwrap();
        assert!(dir.path().join("a/b/c").is_dir());
        make_target(&c(&dir.path().join("x/y/file")), true).unwrap();
        assert!(dir.path().join("x/y/file").is_file());
        assert!(is_regular(&c(&dir.path().join("x/y/file"))));
        // Again, over what exists: nothing to do, no error.
        make_target(&c(&dir.path().join("x/y/file")), true).unwrap();
    }

    #[test]
    fn skip_makes_only_the_parents() {
        let dir = tempfile::tempdir().unwrap();
        make_path(&c(&dir.path().join("dev/sub/node")), Last::Skip).unwrap();
        assert!(dir.path().join("dev/sub").is_dir());
        assert!(!dir.path().join("dev/sub/node").exists());
        let long = CString::new(vec![b'a'; 5000]).unwrap();
        assert_eq!(make_path(&long, Last::Dir), Err(Errno::ENAMETOOLONG));
    }
}
