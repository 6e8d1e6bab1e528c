//! First: a clean signal state, the process's stdio on fds 0-2, and a
//! session of its own (a terminal, if any, becomes its controlling tty in
//! `console`).

use super::sys::{At, ChildFds};
use crate::failure::{Report, Step};
use nix::sys::signal::{signal, sigprocmask, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd;

pub(super) fn attach(fds: &ChildFds) -> Result<(), Report> {
    // The agent's runtime ignores SIGPIPE; a container must not inherit
    // that (exec keeps ignored signals ignored) or a blocked mask.
    // SAFETY: SIG_DFL installs no handler, so no code of ours can run in a
    // signal's context.
    unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) }.at(Step::Stdio, 0)?;
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None).at(Step::Stdio, 0)?;
    for (i, (fd, target)) in [(fds.stdin, 0), (fds.stdout, 1), (fds.stderr, 2)]
        .into_iter()
        .enumerate()
    {
        unistd::dup2(fd, target).at(Step::Stdio, i)?;
    }
    unistd::setsid().at(Step::Setsid, 0)?;
    Ok(())
}
