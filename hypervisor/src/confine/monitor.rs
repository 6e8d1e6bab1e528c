//! A PID namespace for a helper that does not make one itself: between
//! fork and exec, the child unshares CLONE_NEWPID and forks again. The
//! grandchild goes on to exec the helper as PID 1 of the new namespace;
//! the first child stays behind as its monitor, the process the launcher
//! spawned and supervises:
//!
//! - it closes every descriptor (it must hold no socket, pipe or log open:
//!   the launcher's spawn waits for its exec-error pipe to close),
//!   takes the name `husk-ns-monitor`, drops to the helper's credentials
//!   and filter;
//! - SIGTERM, SIGINT or SIGHUP from the launcher become SIGKILL for the
//!   helper: a PID 1 ignores the signals it has no handler for, and the
//!   helpers confined this way keep no state a graceful stop would save;
//! - when the helper exits, the monitor exits with its status (128 + the
//!   signal when a signal ended it);
//! - the helper dies with the monitor (PR_SET_PDEATHSIG), the monitor with
//!   the launcher.
//!
//! Everything here runs between fork and exec: system calls only, on
//! memory prepared before the fork.

use super::credentials::Credentials;
use libc::{c_int, pid_t, sock_filter};

/// The name the monitor shows in /proc/<pid>/comm.
pub const MONITOR_NAME: &std::ffi::CStr = c"husk-ns-monitor";

/// Splits into monitor and helper; returns in the helper only, with a
/// pidfd of the monitor (-1 where pidfds are not available) for
/// [`parent_alive`]. `launcher` is the pid of the process that spawned
/// this one.
pub(crate) fn split(
    creds: &Credentials,
    filter: Option<&[sock_filter]>,
    launcher: pid_t,
) -> std::io::Result<c_int> {
    // SAFETY: every call in this function: system calls on integers, on
    // sigset_t and sigaction values on this stack, and on the filter
    // prepared before the fork; the raw clone duplicates this
    // single-threaded process without running any fork handler.
    unsafe {
        let mut waited: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut waited);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGCHLD] {
            libc::sigaddset(&mut waited, sig);
        }
        let mut before: libc::sigset_t = std::mem::zeroed();
        if libc::sigprocmask(libc::SIG_BLOCK, &waited, &mut before) != 0
            || libc::unshare(libc::CLONE_NEWPID) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let me = libc::getpid();
        let me_fd = libc::syscall(libc::SYS_pidfd_open, me, 0) as c_int;
        let child = libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) as pid_t;
        if child < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if child == 0 {
            // The helper, PID 1 of the new namespace. Its parent-death
            // signal is set again after its change of credentials, which
            // clears it (the caller does, with parent_alive).
            libc::sigprocmask(libc::SIG_SETMASK, &before, std::ptr::null_mut());
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if !parent_alive(me_fd) {
                libc::_exit(1);
            }
            return Ok(me_fd);
        }
        monitor(child, creds, filter, launcher, &waited)
    }
}

/// Whether the process `pidfd` refers to still runs (true when there is no
/// pidfd: nothing to tell by).
pub(crate) fn parent_alive(pidfd: c_int) -> bool {
    if pidfd < 0 {
        return true;
    }
    let mut poll = libc::pollfd {
        fd: pidfd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll of one pollfd on this stack, zero timeout.
    unsafe { libc::poll(&mut poll, 1, 0) <= 0 }
}

/// The monitor's life, in the process `split` forked; never returns.
fn monitor(
    child: pid_t,
    creds: &Credentials,
    filter: Option<&[sock_filter]>,
    launcher: pid_t,
    waited: &libc::sigset_t,
) -> ! {
    let fail = |child: pid_t| -> ! {
        // SAFETY: kill and _exit on integers.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::_exit(1)
        }
    };
    // SAFETY: the rest: system calls on integers, on the name, sigaction
    // and status values on this stack, on the signal set and filter
    // prepared before the fork. This process is the single-threaded child
    // `split` made: closing every descriptor touches nothing it will use.
    unsafe {
        libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0);
        libc::prctl(libc::PR_SET_NAME, MONITOR_NAME.as_ptr());
        // SIGCHLD may have been ignored by the launcher (children would then
        // be reaped unseen): the default makes it wait to be taken.
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        libc::sigaction(libc::SIGCHLD, &default, std::ptr::null_mut());
        if creds.apply().is_err() {
            fail(child);
        }
        // After the change of credentials, which clears it.
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 || libc::getppid() != launcher {
            fail(child);
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            fail(child);
        }
        if let Some(program) = filter {
            if super::seccomp::install(program).is_err() {
                fail(child);
            }
        }
        loop {
            let sig = libc::sigtimedwait(waited, std::ptr::null_mut(), std::ptr::null());
            if sig < 0 {
                continue;
            }
            if sig != libc::SIGCHLD {
                libc::kill(child, libc::SIGKILL);
                continue;
            }
            let mut status: c_int = 0;
            if libc::waitpid(child, &mut status, libc::WNOHANG) == child {
                let code = if libc::WIFEXITED(status) {
                    libc::WEXITSTATUS(status)
                } else {
                    128 + libc::WTERMSIG(status)
                };
                libc::_exit(code);
            }
        }
    }
}
