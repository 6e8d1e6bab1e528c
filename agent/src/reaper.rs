//! PID 1 reaps every child of the guest: container init processes, whose
//! exit statuses are routed to whoever registered for them, and orphans,
//! which are only logged.

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Exit statuses that arrived before anyone registered for them (a child
/// can die between clone and registration). Bounded: beyond this, the
/// oldest guess is that nobody will ask.
const MAX_UNCLAIMED: usize = 1024;

/// The exit status of a process once known: code, or 128 + signal.
pub type ExitWatch = watch::Receiver<Option<u32>>;

#[derive(Default)]
struct Table {
    waiting: HashMap<i32, watch::Sender<Option<u32>>>,
    unclaimed: HashMap<i32, u32>,
}

#[derive(Clone, Default)]
pub struct Reaper {
    table: Arc<Mutex<Table>>,
}

impl Reaper {
    /// Installs the SIGCHLD handler and starts reaping.
    pub fn start() -> std::io::Result<Self> {
        let reaper = Reaper::default();
        let mut sigchld = signal(SignalKind::child())?;
        let worker = reaper.clone();
        tokio::spawn(async move {
            loop {
                worker.reap_all();
                if sigchld.recv().await.is_none() {
                    return;
                }
            }
        });
        Ok(reaper)
    }

    /// A watch that will hold `pid`'s exit status.
    pub fn register(&self, pid: i32) -> ExitWatch {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let initial = table.unclaimed.remove(&pid);
        let (tx, rx) = watch::channel(initial);
        if initial.is_none() {
            table.waiting.insert(pid, tx);
        }
        rx
    }

    fn reap_all(&self) {
        loop {
            let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, code as u32),
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid, 128 + sig as u32),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    tracing::warn!(%err, "waitpid failed");
                    return;
                }
            };
            self.deliver(pid.as_raw(), status);
        }
    }

    fn deliver(&self, pid: i32, status: u32) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        match table.waiting.remove(&pid) {
            Some(tx) => {
                let _ = tx.send(Some(status));
            }
            None => {
                tracing::debug!(pid, status, "reaped a process nobody waits for");
                if table.unclaimed.len() >= MAX_UNCLAIMED {
                    table.unclaimed.clear();
                }
                table.unclaimed.insert(pid, status);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_delivered_before_registration_is_kept() {
        let reaper = Reaper::default();
        reaper.deliver(42, 3);
        assert_eq!(*reaper.register(42).borrow(), Some(3));
    }

    #[test]
    fn registered_watch_sees_the_status() {
        let reaper = Reaper::default();
        let rx = reaper.register(7);
        assert_eq!(*rx.borrow(), None);
        reaper.deliver(7, 137);
        assert_eq!(*rx.borrow(), Some(137));
    }

    // The reaper, not std's Child, collects these children: that is the test.
    #[allow(clippy::zombie_processes)]
    #[tokio::test]
    async fn real_child_exit_code_and_signal_are_reported() {
        let reaper = Reaper::start().unwrap();
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 5"])
            .spawn()
            .unwrap();
        let mut rx = reaper.register(child.id() as i32);
        let status = *rx.wait_for(Option::is_some).await.unwrap();
        assert_eq!(status, Some(5));

        let child = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        let mut rx = reaper.register(child.id() as i32);
        nix::sys::signal::kill(
            Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        assert_eq!(*rx.wait_for(Option::is_some).await.unwrap(), Some(137));
    }
}
