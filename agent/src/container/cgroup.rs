//! One cgroup v2 directory per container below /sys/fs/cgroup/husk.

use std::io;
use std::path::PathBuf;

const ROOT: &str = "/sys/fs/cgroup";
const CONTROLLERS: &str = "+cpu +memory +pids";

/// Delegates the controllers to the husk subtree; best effort, as a guest
/// kernel without one of them can still run containers.
pub fn enable_controllers() {
    let husk = PathBuf::from(ROOT).join("husk");
    let _ = std::fs::write(
        PathBuf::from(ROOT).join("cgroup.subtree_control"),
        CONTROLLERS,
    );
    if std::fs::create_dir_all(&husk).is_ok() {
        let _ = std::fs::write(husk.join("cgroup.subtree_control"), CONTROLLERS);
    }
}

pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn create(id: &str) -> io::Result<Self> {
        let path = PathBuf::from(ROOT).join("husk").join(id);
        std::fs::create_dir_all(&path)?;
        Ok(Self { path })
    }

    /// Writes (file, value) pairs such as ("memory.max", "67108864").
    pub fn apply(&self, limits: &[(&str, String)]) -> io::Result<()> {
        for (file, value) in limits {
            std::fs::write(self.path.join(file), value)
                .map_err(|e| io::Error::new(e.kind(), format!("{file} = {value}: {e}")))?;
        }
        Ok(())
    }

    pub fn procs_path(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    pub fn add(&self, pid: i32) -> io::Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }

    /// Freezes (true) or thaws the group and waits until the kernel says
    /// it is done: `frozen` in cgroup.events follows cgroup.freeze once
    /// every task has stopped.
    pub fn freeze(&self, frozen: bool) -> io::Result<()> {
        std::fs::write(
            self.path.join("cgroup.freeze"),
            if frozen { "1" } else { "0" },
        )?;
        let want = if frozen { "frozen 1" } else { "frozen 0" };
        for _ in 0..500 {
            let events = std::fs::read_to_string(self.path.join("cgroup.events"))?;
            if events.lines().any(|l| l.trim() == want) {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        Err(io::Error::other(format!(
            "cgroup did not reach '{want}' within 1 s"
        )))
    }

    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// rmdir succeeds only once the cgroup is empty; a leftover is logged.
    pub fn remove(&self) {
        if let Err(e) = std::fs::remove_dir(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), %e, "cannot remove cgroup");
            }
        }
    }
}
