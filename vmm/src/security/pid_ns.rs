//! The VM's own PID namespace (`--new-pid-ns`), as Firecracker's jailer
//! gives one: the VM's process is PID 1 of a namespace with nothing else
//! in it, so it cannot name, signal or trace any host process by pid.
//!
//! `unshare(CLONE_NEWPID)` moves only the children made afterwards, and
//! the kernel refuses a new thread (CLONE_THREAD) once a process's
//! children would land in another PID namespace than its own; so
//! unsharing before the vCPU threads start is no way to do it. husk-vmm
//! forks instead, first thing, while it has one thread:
//!
//! - the child goes on as the VMM, PID 1 of the new namespace, killed by
//!   SIGKILL if its parent dies (PR_SET_PDEATHSIG);
//! - the parent stays in the launcher's namespace as the pid the launcher
//!   knows: it closes every inherited descriptor, drops every capability
//!   (and switches to the VM's identity, if any), installs the
//!   [`ThreadKind::Waiter`] filter, passes SIGTERM and SIGINT (and a
//!   template's SIGUSR1, its snapshot) on to the child, and exits with the
//!   child's status (128 + the signal when a signal ended it). Firecracker's jailer's parent exits at once
//!   instead; husk's launcher supervises the pid it spawned, so this one
//!   stays.
//!
//! The VMM, as PID 1, receives SIGTERM from the parent although PID 1
//! ignores signals it has no handler for: husk-vmm blocks SIGTERM and
//! takes it with sigwait, and a blocked signal is never ignored.

use super::identity::{self, IdentityError};
use super::seccomp::{self, HardeningError, SeccompMode, ThreadKind};
use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{kill, SigSet, SigmaskHow, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use std::os::fd::OwnedFd;

#[derive(Debug, thiserror::Error)]
pub enum PidNsError {
    #[error("--new-pid-ns: {what}: {errno} (husk-vmm needs CAP_SYS_ADMIN for a PID namespace)")]
    Sys {
        what: &'static str,
        #[source]
        errno: nix::Error,
    },
    #[error("--new-pid-ns: {0}")]
    Identity(#[source] IdentityError),
}

fn sys(what: &'static str) -> impl Fn(nix::Error) -> PidNsError {
    move |errno| PidNsError::Sys { what, errno }
}

/// Forks into a new PID namespace. Returns in the child, the VM's process,
/// with a pidfd of its parent (None where pidfds are not available); the
/// parent never returns. Call it while the process has one thread, after
/// [`identity::set`]. With `snapshot` (a template) the parent passes
/// SIGUSR1 on too.
pub fn enter(mode: SeccompMode, snapshot: bool) -> Result<Option<OwnedFd>, PidNsError> {
    // Taken before the fork: in the new namespace the child's getppid()
    // is 0, and it needs proof its parent still lives.
    // SAFETY: pidfd_open takes integers and returns a new fd we own.
    let me = unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, libc::getpid(), 0);
        (fd >= 0).then(|| std::os::fd::FromRawFd::from_raw_fd(fd as i32))
    };
    // Blocked before the fork, so that none arrives unseen in between.
    let mut waited = SigSet::empty();
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGCHLD] {
        waited.add(sig);
    }
    if snapshot {
        waited.add(Signal::SIGUSR1);
    }
    let mut before = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&waited), Some(&mut before))
        .map_err(sys("blocking signals"))?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(sys("unshare(CLONE_NEWPID)"))?;
    // SAFETY: the process has one thread (the caller's promise), so the
    // child may run any code.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            identity::restore_pdeathsig(libc::SIGKILL, me.as_ref())
                .map_err(PidNsError::Identity)?;
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&before), None)
                .map_err(sys("restoring the signal mask"))?;
            Ok(me)
        }
        ForkResult::Parent { child } => {
            drop(me);
            let code = match wait_for(child, waited, mode, snapshot) {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("husk-vmm: the PID namespace's parent: {e}");
                    // The VM must not outlive its supervisor.
                    let _ = kill(child, Signal::SIGKILL);
                    1
                }
            };
            // SAFETY: _exit ends the process; nothing is left to flush.
            unsafe { libc::_exit(code) }
        }
    }
}

/// The parent's life: confined, waiting for `child`, passing stop
/// signals on; the child's exit status.
fn wait_for(
    child: Pid,
    waited: SigSet,
    mode: SeccompMode,
    snapshot: bool,
) -> Result<i32, HardeningError> {
    let pdeathsig = identity::pdeathsig();
    // It needs no file: every descriptor (the TAP, the console) is the
    // child's alone.
    // SAFETY: close_range takes integers; no fd above 2 is owned by
    // anything in this process that will use it again.
    unsafe { libc::syscall(libc::SYS_close_range, 3, u32::MAX, 0) };
    let launcher = identity::parent_pidfd();
    if mode != SeccompMode::Off {
        seccomp::drop_capabilities()?;
    } else {
        identity::switch_thread()?;
    }
    identity::restore_pdeathsig(pdeathsig, launcher.as_ref())?;
    drop(launcher);
    seccomp::apply(
        ThreadKind::Waiter {
            child: child.as_raw(),
            snapshot,
        },
        mode,
    )?;
    tracing::info!(pid = child.as_raw(), "the VM runs in a new PID namespace");
    loop {
        let Ok(sig) = waited.wait() else { continue };
        if sig != Signal::SIGCHLD {
            let _ = kill(child, sig);
            continue;
        }
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                eprintln!("husk-vmm: the VM's process was killed by {sig}");
                return Ok(128 + sig as i32);
            }
            _ => {}
        }
    }
}
