//! Fails a VM fast when one of its device daemons dies. Neither VMM can
//! reconnect a vhost-user device to a restarted daemon (the daemon's ring
//! state and, for virtiofsd, every open file of the guest are gone), so a
//! guest whose virtiofsd or vsock daemon died would hang on its next
//! request. Kata stops the sandbox when virtiofsd quits; husk does the
//! same: the VMM gets SIGKILL, and the shim's usual "the VM died" path
//! fails the tasks and cleans up.
//!
//! Processes are watched through pidfds (readable once the process has
//! exited), opened before anything reaps them, so a reused pid can never
//! be signalled.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

/// How long the VMM may take to end on its own after a daemon exited:
/// virtiofsd, for one, exits because the VMM hung up at guest power-off.
const VMM_GRACE: Duration = Duration::from_millis(500);

/// A process, watched and signalled through its pidfd.
pub struct Pidfd(AsyncFd<OwnedFd>);

impl Pidfd {
    /// `pid` must be an unreaped child of this process. Needs a tokio
    /// runtime (the fd is registered with its reactor).
    pub fn open(pid: u32) -> std::io::Result<Self> {
        // SAFETY: pidfd_open takes a pid and flags, returns a new fd.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the fd was just returned to us and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // SAFETY: an OwnedFd stays open and names the same pidfd until the
        // AsyncFd that owns it is dropped.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(Pidfd(fd))
    }

    /// Resolves once the process has exited.
    pub async fn exited(&self) {
        // A pidfd only ever becomes readable by its process exiting; an
        // error from the reactor ends the wait too, as "cannot watch".
        let _ = self.0.readable().await;
    }

    /// SIGKILL; a process already gone is not an error.
    pub fn kill(&self) -> std::io::Result<()> {
        // SAFETY: pidfd_send_signal with a valid fd, no siginfo, no flags.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.0.get_ref().as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// Watches `daemons` for as long as the VMM runs; the first that exits
/// while the VMM keeps running gets the VMM killed. The VMM exiting while
/// watched is the VM dying (nothing asked it to), and is logged as such.
/// Abort the task before stopping the VM on purpose.
pub fn watch(vm_id: String, vmm: Pidfd, daemons: Vec<(&'static str, Pidfd)>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let any_daemon = async {
            if daemons.is_empty() {
                return std::future::pending().await;
            }
            let (name, _, _) =
                futures_util::future::select_all(daemons.iter().map(|(name, fd)| {
                    Box::pin(async move {
                        fd.exited().await;
                        *name
                    })
                }))
                .await;
            name
        };
        let daemon = tokio::select! {
            _ = vmm.exited() => {
                tracing::warn!(vm_id = %vm_id, "VM died: the VMM exited on its own (guest panic, power-off or a crash)");
                return;
            }
            name = any_daemon => name,
        };
        if tokio::time::timeout(VMM_GRACE, vmm.exited()).await.is_ok() {
            tracing::warn!(vm_id = %vm_id, daemon, "VM died: the VMM exited with its device daemon");
            return;
        }
        tracing::error!(
            vm_id = %vm_id,
            daemon,
            "device daemon exited while the VM ran; its device cannot come back: killing the VM"
        );
        if let Err(e) = vmm.kill() {
            tracing::error!(vm_id = %vm_id, "killing the VMM: {e}");
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sleeper() -> std::process::Child {
        Command::new("sleep").arg("60").spawn().unwrap()
    }

    #[tokio::test]
    async fn a_daemon_that_exits_gets_the_vmm_killed() {
        let (mut vmm, mut daemon, mut other) = (sleeper(), sleeper(), sleeper());
        let task = watch(
            "t".into(),
            Pidfd::open(vmm.id()).unwrap(),
            vec![
                ("fs", Pidfd::open(daemon.id()).unwrap()),
                ("vsock", Pidfd::open(other.id()).unwrap()),
            ],
        );
        daemon.kill().unwrap();
        daemon.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watcher acted")
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(vmm.wait().unwrap().signal(), Some(libc::SIGKILL));
        other.kill().unwrap();
        other.wait().unwrap();
    }

    #[tokio::test]
    async fn the_vmm_ending_first_ends_the_watch_quietly() {
        let (mut vmm, mut daemon) = (sleeper(), sleeper());
        let task = watch(
            "t".into(),
            Pidfd::open(vmm.id()).unwrap(),
            vec![("fs", Pidfd::open(daemon.id()).unwrap())],
        );
        vmm.kill().unwrap();
        vmm.wait().unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the watcher ended")
            .unwrap();
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the daemon was left alone"
        );
        daemon.kill().unwrap();
        daemon.wait().unwrap();
    }
}
