//! Child processes of a VM (device daemons and the VMM itself): spawned with
//! their output in a log file, bound to die with their parent, and ended with
//! SIGTERM then SIGKILL.

use crate::Error;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// How often socket and exit polls look again.
const POLL: Duration = Duration::from_millis(5);

pub struct Daemon {
    pub name: &'static str,
    child: Child,
    pid: u32,
    pub log: PathBuf,
    exit: Option<ExitStatus>,
}

/// Most TAPs one VMM process takes.
pub const MAX_PASSED_FDS: usize = 16;

/// Makes `fds` the child's fds `first`, `first + 1`, ... (inherited
/// across exec). They are first copied out of the way, so a source that
/// already sits in the target range is not overwritten before it is used.
/// At most [`MAX_PASSED_FDS`]; the rest are not passed.
pub fn pass_fds(command: &mut Command, mut fds: Vec<std::os::fd::RawFd>, first: i32) {
    fds.truncate(MAX_PASSED_FDS);
    if fds.is_empty() {
        return;
    }
    // SAFETY: fcntl, dup2 and close are async-signal-safe, and the closure
    // reads the moved Vec and a stack array, allocating nothing.
    unsafe {
        command.pre_exec(move || {
            let mut parked = [-1; MAX_PASSED_FDS];
            for (slot, &fd) in parked.iter_mut().zip(&fds) {
                *slot = nix::libc::fcntl(fd, nix::libc::F_DUPFD, first + MAX_PASSED_FDS as i32);
                if *slot == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for (i, &fd) in parked.iter().take(fds.len()).enumerate() {
                if nix::libc::dup2(fd, first + i as i32) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                nix::libc::close(fd);
            }
            Ok(())
        });
    }
}

impl Daemon {
    /// Spawns `command` with stdin closed and stdout and stderr appended to
    /// `log`.
    pub fn spawn(name: &'static str, mut command: Command, log: &Path) -> Result<Self, Error> {
        let program = PathBuf::from(command.as_std().get_program());
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(format!("opening {}", log.display()), e))?;
        command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent. PDEATHSIG ends the child if the process that spawned it
        // dies, even by SIGKILL, so a killed shim leaves no VM behind.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = command.spawn().map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
        let pid = child.id().ok_or_else(|| Error::Spawn {
            program,
            source: std::io::Error::other("exited at once"),
        })?;
        tracing::debug!(daemon = name, pid, "spawned");
        Ok(Self {
            name,
            child,
            pid,
            log: log.to_owned(),
            exit: None,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The exit status if the process has ended; reaps it.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits for the process to end.
    pub async fn wait(&mut self) -> Result<ExitStatus, Error> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let status = self
            .child
            .wait()
            .await
            .map_err(|e| Error::io(format!("waiting for {}", self.name), e))?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Waits until `socket` exists; fails early if the daemon exits.
    pub async fn wait_for_socket(&mut self, socket: &Path, timeout: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if socket.exists() {
                return Ok(());
            }
            if let Some(status) = self.try_exit() {
                return Err(Error::DaemonExited {
                    daemon: self.name,
                    socket: socket.to_owned(),
                    status: status.to_string(),
                    log_tail: log_tail(&self.log),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::DaemonTimeout {
                    daemon: self.name,
                    socket: socket.to_owned(),
                    secs: timeout.as_secs(),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Always reaps.
    pub async fn terminate(&mut self, grace: Duration) {
        if self.try_exit().is_some() {
            return;
        }
        // The child is not reaped yet, so its pid cannot have been reused.
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        if tokio::time::timeout(grace, self.wait()).await.is_ok() {
            return;
        }
        tracing::warn!(
            daemon = self.name,
            pid = self.pid,
            "did not exit on SIGTERM, killing"
        );
        let _ = self.child.start_kill();
        let _ = self.wait().await;
    }
}

/// The last few KiB of a log file, for error messages.
pub fn log_tail(path: &Path) -> String {
    const TAIL: usize = 3000;
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(TAIL);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("<{}: {e}>", path.display()),
    }
}
