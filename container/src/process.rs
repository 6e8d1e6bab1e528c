//! A container process from the agent's side: cloned from a plan into its
//! namespaces (`Process::create`), waiting at "created" until it is
//! released to exec (`Start`), with the agent's ends of its stdio.
//!
//! An exec, or an init sharing a pod's PID namespace, is cloned from a
//! short-lived thread that first enters that PID namespace:
//! setns(CLONE_NEWPID) changes where the thread's *children* go, for good.

use crate::child::{self, ChildFds, ExecArgs};
use crate::failure::{ChildFailure, Report, Step, REPORT_LEN};
use crate::plan::Plan;
use crate::stdio::{self, Stdio, StdioError};
use crate::{Cgroup, CgroupError};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

/// Stack for the cloned child until it execs; it runs only system calls.
const CHILD_STACK_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("status pipe: {0}")]
    Pipe(#[source] Errno),
    #[error(transparent)]
    Stdio(#[from] StdioError),
    #[error("opening the PID namespace: {0}")]
    OpenPidNamespace(#[source] io::Error),
    #[error("entering the PID namespace: {0}")]
    EnterPidNamespace(#[source] Errno),
    #[error("the exec thread panicked")]
    ThreadPanicked,
    #[error("clone: {0}")]
    Clone(#[source] Errno),
    #[error("joining cgroup: {0}")]
    JoinCgroup(#[source] CgroupError),
    /// The child reported a failure: the user's message.
    #[error(transparent)]
    Failed(#[from] ChildFailure),
    #[error("the process died during setup")]
    DiedDuringSetup,
    #[error("the process sent a report of an unknown step")]
    UnknownReport,
    #[error("receiving the terminal: {0}")]
    ReceiveTerminal(#[source] StdioError),
    #[error("releasing the process: {0}")]
    Release(#[source] Errno),
    #[error("has no terminal")]
    NoTerminal,
}

/// A container process: its init or an exec.
pub struct Process {
    pid: i32,
    /// Until Start is asked for.
    start: Option<Start>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    /// A terminal's master end, for resizes.
    pty: Option<OwnedFd>,
}

/// What releasing a created process takes: the start pipe it waits on, and
/// the status pipe that reports its exec.
pub struct Start {
    plan: Arc<Plan>,
    start_w: OwnedFd,
    status_r: OwnedFd,
}

impl Process {
    /// Clones the process into `cgroup` as `plan` says and waits until it
    /// reports "created". `on_clone` runs with its pid as soon as it
    /// exists (the agent starts watching for its exit there) and its
    /// result is returned beside the process. Blocks: call it off the
    /// async runtime.
    pub fn create<T>(
        plan: Arc<Plan>,
        stdin: bool,
        cgroup: &Cgroup,
        on_clone: impl FnOnce(i32) -> T,
    ) -> Result<(Process, T), ProcessError> {
        let (status_r, status_w) = pipe()?;
        let (start_r, start_w) = pipe()?;
        let stdio = if plan.process.terminal {
            Stdio::terminal()?
        } else {
            Stdio::pipes(stdin)?
        };
        let fds = ChildFds {
            stdin: stdio.child[0].as_raw_fd(),
            stdout: stdio.child[1].as_raw_fd(),
            stderr: stdio.child[2].as_raw_fd(),
            status: status_w.as_raw_fd(),
            start: start_r.as_raw_fd(),
            console: stdio.console_child.as_ref().map_or(-1, |c| c.as_raw_fd()),
        };
        let pid = clone_in_pid_namespace(&plan, fds)?;
        let watch = on_clone(pid);
        // The child holds its ends now; ours would keep the output open.
        let Stdio {
            parent,
            child,
            console,
            console_child,
        } = stdio;
        drop((status_w, start_r, child, console_child));
        let status_r = joined_and_created(&plan, pid, cgroup, status_r)?;
        // A terminal's master was sent by the child before its report.
        let parent = match console {
            Some(socket) => stdio::receive_terminal(socket, plan.process.console_size, stdin)
                .map_err(|e| {
                    kill_child(pid);
                    ProcessError::ReceiveTerminal(e)
                })?,
            None => parent,
        };
        let process = Process {
            pid,
            start: Some(Start {
                plan,
                start_w,
                status_r,
            }),
            stdin: parent.stdin,
            stdout: parent.stdout,
            stderr: parent.stderr,
            pty: parent.pty,
        };
        Ok((process, watch))
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Whether Start has been asked for (whatever came of it).
    pub fn started(&self) -> bool {
        self.start.is_none()
    }

    /// What releasing the process takes; None once taken, so that a
    /// process is started once.
    pub fn take_start(&mut self) -> Option<Start> {
        self.start.take()
    }

    /// The agent's end of stdin, if the caller asked to feed it; once.
    pub fn take_stdin(&mut self) -> Option<OwnedFd> {
        self.stdin.take()
    }

    /// The read end of stdout (a terminal's output too); once.
    pub fn take_stdout(&mut self) -> Option<OwnedFd> {
        self.stdout.take()
    }

    /// The read end of stderr (none with a terminal); once.
    pub fn take_stderr(&mut self) -> Option<OwnedFd> {
        self.stderr.take()
    }

    /// Sets the window size of the process's terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), ProcessError> {
        let pty = self.pty.as_ref().ok_or(ProcessError::NoTerminal)?;
        Ok(stdio::set_window_size(pty, rows, cols)?)
    }
}

impl Start {
    /// Releases the process to exec and waits until it has (EOF on the
    /// status pipe) or has reported why not. Blocks.
    pub fn run(self) -> Result<(), ProcessError> {
        nix::unistd::write(&self.start_w, &[1]).map_err(ProcessError::Release)?;
        drop(self.start_w);
        match read_report(self.status_r)? {
            None => Ok(()),
            Some((report, _)) => Err(ChildFailure::new(&self.plan, report).into()),
        }
    }
}

/// Moves the new child into `cgroup` (killing it if it cannot) and waits
/// for its "created" report; returns the status pipe, which will report
/// its exec. A child that reports a failure has exited.
fn joined_and_created(
    plan: &Plan,
    pid: i32,
    cgroup: &Cgroup,
    status_r: OwnedFd,
) -> Result<OwnedFd, ProcessError> {
    cgroup.add(pid).map_err(|e| {
        kill_child(pid);
        ProcessError::JoinCgroup(e)
    })?;
    match read_report(status_r)? {
        Some((report, status_r)) if report.step == Step::Created => Ok(status_r),
        Some((report, _)) => Err(ChildFailure::new(plan, report).into()),
        None => Err(ProcessError::DiedDuringSetup),
    }
}

/// SIGKILL to a child that is set up only half.
fn kill_child(pid: i32) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// A close-on-exec pipe: (read end, write end).
fn pipe() -> Result<(OwnedFd, OwnedFd), ProcessError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(ProcessError::Pipe)
}

/// Clones the child in the PID namespace the plan names, if any, from a
/// thread of its own that ends after the clone.
fn clone_in_pid_namespace(plan: &Plan, fds: ChildFds) -> Result<i32, ProcessError> {
    let Some(path) = &plan.namespaces.pid else {
        return clone_child(plan, fds);
    };
    let ns = std::fs::File::open(path).map_err(ProcessError::OpenPidNamespace)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(&ns, CloneFlags::CLONE_NEWPID)
                .map_err(ProcessError::EnterPidNamespace)?;
            clone_child(plan, fds)
        })
        .join()
        .map_err(|_| ProcessError::ThreadPanicked)?
    })
}

/// Clones the child, which runs `child::main` and never returns here.
fn clone_child(plan: &Plan, fds: ChildFds) -> Result<i32, ProcessError> {
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    let exec_args = ExecArgs::new(&plan.process);
    // SAFETY: without CLONE_VM the child runs on a copy of this memory, in
    // which `plan`, `fds` and `exec_args` were made before the clone; it
    // only makes system calls on them (no allocation, no locks, see
    // `child`) and ends in execve or _exit.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(|| child::main(plan, &fds, &exec_args)),
            &mut stack,
            plan.namespaces.clone_flags,
            Some(Signal::SIGCHLD as i32),
        )
    }
    .map_err(ProcessError::Clone)?;
    Ok(pid.as_raw())
}

/// Reads one record from the child, with the pipe for any further one;
/// None at EOF (it exec'd, or died).
fn read_report(status_r: OwnedFd) -> Result<Option<(Report, OwnedFd)>, ProcessError> {
    let mut file = std::fs::File::from(status_r);
    let mut buf = [0u8; REPORT_LEN];
    if file.read_exact(&mut buf).is_err() {
        return Ok(None);
    }
    let report = Report::decode(&buf).ok_or(ProcessError::UnknownReport)?;
    Ok(Some((report, OwnedFd::from(file))))
}
