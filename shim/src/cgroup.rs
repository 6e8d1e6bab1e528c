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

/// The cgroup directories `rel` has, or would have: (dir, whether
/// processes are moved into it). v2: one; v1: one per controller
/// hierarchy (not systemd's or the unified one).
fn layout(rel: &Path) -> std::io::Result<Vec<(PathBuf, bool)>> {
    let root = Path::new(ROOT);
    if root.join("cgroup.controllers").exists() {
        return Ok(vec![(root.join(rel), true)]);
    }
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(root)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let hierarchy = entry.path();
        if name == "systemd" || name == "unified" || !hierarchy.join("cgroup.procs").exists() {
            continue;
        }
        dirs.push((hierarchy.join(rel), JOINABLE_V1.contains(&name.as_str())));
    }
    Ok(dirs)
}

impl HostCgroup {
    /// Makes the cgroup `rel` in every hierarchy (v1: every controller
    /// mounted, since containerd reads them all back).
    pub fn create(rel: &Path) -> std::io::Result<Self> {
        let layout = layout(rel)?;
        for (d, _) in &layout {
            std::fs::create_dir_all(d)?;
        }
        Ok(Self {
            joined: layout
                .iter()
                .filter(|(_, j)| *j)
                .map(|(d, _)| d.clone())
                .collect(),
            dirs: layout.into_iter().map(|(d, _)| d).collect(),
        })
    }

    /// The directories `create` would make for `rel` that exist, without
    /// making any: what is left to remove after a crash.
    pub fn existing(rel: &Path) -> Self {
        let dirs = layout(rel)
            .unwrap_or_default()
            .into_iter()
            .map(|(d, _)| d)
            .filter(|d| d.is_dir())
            .collect();
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
