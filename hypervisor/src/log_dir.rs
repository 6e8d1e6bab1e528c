//! Where a VM's logs live and how long: `<logs.dir>/<vm id>/` (0700, files
//! 0600) holds `console.log`, `vmm.log`, `virtiofsd.log` and
//! `vhost-device-vsock.log`, each a [`RotatingFile`] written by a
//! [`LogPump`](crate::log_pump::LogPump). They are on the log directory's
//! disk, not in the VM's run directory (`/run`, memory), and outlive the
//! run directory:
//!
//! - a VM that failed to boot, or whose VMM ended on its own (a guest
//!   panic, power-off or crash), **keeps** its logs: that is when an
//!   operator needs them (`husk logs POD`);
//! - a VM stopped by the host **removes** them, unless
//!   `logs.keep_after_stop`;
//! - a shim that died leaves them (nothing is left to decide).
//!
//! Whenever logs are kept, the kept directories beyond the newest
//! `logs.max_kept_pods` are removed: a directory counts as kept when no
//! VM of that id has a run directory, so a running VM's logs are never
//! pruned. So the logs take at most eight files of `logs.max_file_kib`
//! per running VM plus as much per kept pod.

use crate::log_pump::{LogLimits, RotatingFile};
use crate::Error;
use husk_config::LogsConfig;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// Log file names in a VM's log directory.
pub const CONSOLE_LOG: &str = "console.log";
pub const VMM_LOG: &str = "vmm.log";

/// How a VM ended, which decides whether its logs stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `MicroVm::start` failed.
    BootFailed,
    /// The VMM exited before the host asked it to.
    Died,
    /// The host stopped it.
    Stopped,
}

/// One VM's log directory.
#[derive(Debug)]
pub struct VmLogDir {
    dir: PathBuf,
    root: PathBuf,
    limits: LogLimits,
    keep_after_stop: bool,
    max_kept: u32,
}

impl VmLogDir {
    /// Makes `<logs.dir>/<id>` afresh (an earlier VM's logs of the same id
    /// are removed). `id` is a checked VM id.
    pub fn create(logs: &LogsConfig, id: &str) -> Result<Self, Error> {
        let root = logs.dir.clone();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)
            .map_err(|e| Error::io(format!("creating the log directory {}", root.display()), e))?;
        let dir = root.join(id);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(format!("removing old logs {}", dir.display()), e))
            }
            _ => {}
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        Ok(Self {
            dir,
            root,
            limits: LogLimits::from_config(logs),
            keep_after_stop: logs.keep_after_stop,
            max_kept: logs.max_kept_pods,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn limits(&self) -> LogLimits {
        self.limits
    }

    /// A new bounded log `name` in the directory.
    pub fn file(&self, name: &str) -> Result<RotatingFile, Error> {
        let path = self.dir.join(name);
        RotatingFile::create(&path, self.limits.max_file)
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))
    }

    /// Keeps or removes the logs after the VM ended `how`; `vms` is the
    /// directory of the VMs' run directories (`<runtime_dir>/vms`).
    pub fn close(&self, vm_id: &str, how: Ending, vms: &Path) {
        if how == Ending::Stopped && !self.keep_after_stop {
            if let Err(e) = std::fs::remove_dir_all(&self.dir) {
                tracing::warn!(vm_id, dir = %self.dir.display(), %e, "cannot remove the VM's logs");
            }
            return;
        }
        tracing::info!(vm_id, ending = ?how, dir = %self.dir.display(), "VM logs kept");
        prune(&self.root, self.max_kept as usize, |name| {
            vms.join(name).exists()
        });
    }
}

/// Removes all but the newest `keep` directories of `root` whose VM does
/// not run (`running` says whether one of that name does).
pub fn prune(root: &Path, keep: usize, running: impl Fn(&std::ffi::OsStr) -> bool) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    let mut ended: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()) && !running(&e.file_name()))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    ended.sort_by_key(|e| std::cmp::Reverse(e.0));
    for (_, dir) in ended.into_iter().skip(keep) {
        tracing::info!(dir = %dir.display(), "removing old VM logs");
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), %e, "cannot remove old VM logs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(root: &Path) -> LogsConfig {
        LogsConfig {
            dir: root.join("logs"),
            max_kept_pods: 2,
            ..LogsConfig::default()
        }
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_directory_is_private_and_starts_empty() {
        let t = tempfile::tempdir().unwrap();
        let c = config(t.path());
        let old = c.dir.join("pod1");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("console.log.1"), "an earlier VM").unwrap();
        let logs = VmLogDir::create(&c, "pod1").unwrap();
        assert_eq!(std::fs::read_dir(logs.path()).unwrap().count(), 0);
        assert_eq!(mode(logs.path()), 0o700);
        logs.file(CONSOLE_LOG).unwrap();
        assert_eq!(mode(&logs.path().join(CONSOLE_LOG)), 0o600);
        let fresh = config(&t.path().join("new"));
        VmLogDir::create(&fresh, "p").unwrap();
        assert_eq!(mode(&fresh.dir), 0o700);
    }

    #[test]
    fn a_clean_stop_removes_the_logs_and_a_failure_keeps_them() {
        let t = tempfile::tempdir().unwrap();
        let vms = t.path().join("vms");
        let c = config(t.path());
        let logs = VmLogDir::create(&c, "stopped").unwrap();
        logs.close("stopped", Ending::Stopped, &vms);
        assert!(!logs.path().exists());
        for (id, how) in [("failed", Ending::BootFailed), ("died", Ending::Died)] {
            let logs = VmLogDir::create(&c, id).unwrap();
            logs.close(id, how, &vms);
            assert!(logs.path().is_dir(), "{id}");
        }
        let keep = LogsConfig {
            keep_after_stop: true,
            ..c.clone()
        };
        let logs = VmLogDir::create(&keep, "kept").unwrap();
        logs.close("kept", Ending::Stopped, &vms);
        assert!(logs.path().is_dir());
    }

    #[test]
    fn only_the_newest_ended_vms_keep_logs_and_running_ones_are_left() {
        let t = tempfile::tempdir().unwrap();
        let vms = t.path().join("vms");
        let c = config(t.path());
        std::fs::create_dir_all(vms.join("running")).unwrap();
        VmLogDir::create(&c, "running").unwrap();
        for id in ["a", "b", "c", "d"] {
            let logs = VmLogDir::create(&c, id).unwrap();
            // Distinct modification times, oldest first.
            std::thread::sleep(std::time::Duration::from_millis(20));
            logs.close(id, Ending::Died, &vms);
        }
        let mut left: Vec<String> = std::fs::read_dir(&c.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["c", "d", "running"]);
    }
}
