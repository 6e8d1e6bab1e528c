//! The pod's cgroup on the host. Under runc a pod's processes live in the
//! cgroup the sandbox spec names (`linux.cgroupsPath`, below the pod cgroup
//! kubelet sizes with the RuntimeClass overhead); under husk the pod's
//! processes on the host are its VM: the VMM and its device daemons. They
//! are moved there, so the pod's limits and PodSandboxStats cover the VM.
//!
//! cgroup v2 (one hierarchy) and v1 (one per controller, as on this
//! project's build hosts) are both handled. Only `cgroupfs`-style paths
//! are understood; a systemd-style `slice:prefix:name` is left alone.

use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";
/// v1 controllers a process can join without setting anything first
/// (cpuset would need cpus and mems written).
const JOINABLE_V1: &[&str] = &["memory", "cpu", "cpuacct", "pids", "blkio"];

pub struct HostCgroup {
    /// Directories made for it: the leaf in each hierarchy.
    dirs: Vec<PathBuf>,
    /// Of those, the ones processes are moved into.
    joined: Vec<PathBuf>,
}

/// The cgroupfs path of a spec's `linux.cgroupsPath`; None for the
/// systemd form or an unsafe path.
pub fn cgroupfs_path(spec_path: &str) -> Option<PathBuf> {
    if spec_path.contains(':') || !spec_path.starts_with('/') {
        return None;
    }
    let p = Path::new(spec_path);
    if p.components().any(|c| c.as_os_str() == "..") {
        return None;
    }
    Some(p.strip_prefix("/").ok()?.to_owned())
}

impl HostCgroup {
    /// Makes the cgroup `rel` in every hierarchy (v1: every controller
    /// mounted, since containerd reads them all back).
    pub fn create(rel: &Path) -> std::io::Result<Self> {
        let root = Path::new(ROOT);
        let (dirs, joined) = if root.join("cgroup.controllers").exists() {
            let dir = root.join(rel);
            (vec![dir.clone()], vec![dir])
        } else {
            let mut dirs = Vec::new();
            let mut joined = Vec::new();
            for entry in std::fs::read_dir(root)?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let hierarchy = entry.path();
                // Controller hierarchies only (not systemd's or unified).
                if name == "systemd"
                    || name == "unified"
                    || !hierarchy.join("cgroup.procs").exists()
                {
                    continue;
                }
                let dir = hierarchy.join(rel);
                if JOINABLE_V1.contains(&name.as_str()) {
                    joined.push(dir.clone());
                }
                dirs.push(dir);
            }
            (dirs, joined)
        };
        for d in &dirs {
            std::fs::create_dir_all(d)?;
        }
        Ok(Self { dirs, joined })
    }

    /// The directories `create` would make for `rel`, without making
    /// them: what is left to remove after a crash.
    pub fn existing(rel: &Path) -> Self {
        let root = Path::new(ROOT);
        let dirs: Vec<PathBuf> = if root.join("cgroup.controllers").exists() {
            vec![root.join(rel)]
        } else {
            std::fs::read_dir(root)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join(rel))
                .filter(|d| d.is_dir())
                .collect()
        };
        Self {
            dirs,
            joined: Vec::new(),
        }
    }

    pub fn add(&self, pid: u32) -> std::io::Result<()> {
        for d in &self.joined {
            std::fs::write(d.join("cgroup.procs"), pid.to_string())?;
        }
        Ok(())
    }

    /// Removes the leaf directories (empty once the VM is gone); the
    /// parents belong to kubelet.
    pub fn remove(&self) {
        for d in &self.dirs {
            if let Err(e) = std::fs::remove_dir(d) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(cgroup = %d.display(), %e, "cannot remove the pod cgroup");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cgroupfs_paths_are_taken() {
        assert_eq!(
            cgroupfs_path("/kubepods/pod1/abc"),
            Some(PathBuf::from("kubepods/pod1/abc"))
        );
        assert_eq!(cgroupfs_path("kubepods.slice:cri-containerd:abc"), None);
        assert_eq!(cgroupfs_path("/a/../../etc"), None);
        assert_eq!(cgroupfs_path("relative"), None);
    }
}
