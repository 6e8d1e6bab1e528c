//! The pod's cgroup on the host. Under runc a pod's processes live in the
//! cgroup the sandbox spec names (`linux.cgroupsPath`, below the pod cgroup
//! kubelet sizes with the RuntimeClass overhead); under husk the pod's
//! processes on the host are its VM: the VMM and its device daemons. They
//! start there (husk-hypervisor writes them into `cgroup.procs` between
//! fork and exec), so the pod's limits and PodSandboxStats cover the VM
//! from its first byte.
//!
//! cgroup v2 (one hierarchy) and v1 (one per controller, as on this
//! project's build hosts) are both handled, and both forms of
//! `cgroupsPath` ([`host_path`]): a cgroupfs path (`/kubepods/pod1/abc`,
//! the cgroupfs driver) and systemd's `slice:prefix:name` (kubeadm's
//! default driver), laid out as runc's systemd driver lays it out. The
//! systemd form's cgroup is made directly in the cgroup file system, not
//! as a transient unit over D-Bus (systemd leaves a sub-cgroup it did not
//! make alone; its parent slice is kubelet's).

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

/// A `cgroupsPath` that names no cgroup husk will make.
#[derive(Debug, thiserror::Error)]
#[error("linux.cgroupsPath {path:?}: {problem}")]
pub struct CgroupPathError {
    path: String,
    problem: &'static str,
}

/// The cgroup a spec's `linux.cgroupsPath` names, relative to a
/// hierarchy's root: a cgroupfs path as it is; systemd's
/// `slice:prefix:name` as runc's systemd driver makes it, the slice
/// expanded into its parents and the name a scope
/// (`kubepods-burstable-pod1.slice:cri-containerd:abc` ->
/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope`).
pub fn host_path(spec_path: &str) -> Result<PathBuf, CgroupPathError> {
    let err = |problem| CgroupPathError {
        path: spec_path.to_owned(),
        problem,
    };
    if spec_path.contains(':') {
        let [slice, prefix, name] = spec_path.split(':').collect::<Vec<_>>()[..] else {
            return Err(err("a systemd cgroup path is slice:prefix:name"));
        };
        let plain = |s: &str| !s.contains('/') && s != "." && s != "..";
        if name.is_empty() || !plain(name) || !plain(prefix) {
            return Err(err("the systemd name and prefix must be plain names"));
        }
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        let mut path = expand_slice(slice).ok_or_else(|| err("not a valid systemd slice name"))?;
        path.push(match name.ends_with(".slice") {
            true => name.to_owned(),
            false => format!("{prefix}-{name}.scope"),
        });
        return Ok(path);
    }
    let p = Path::new(spec_path);
    if !p.is_absolute() {
        return Err(err("a cgroupfs path must be absolute"));
    }
    if p.components().any(|c| c.as_os_str() == "..") {
        return Err(err("must not contain .."));
    }
    let rel = p.strip_prefix("/").map_err(|_| err("must be absolute"))?;
    if rel.as_os_str().is_empty() {
        return Err(err("is the root cgroup"));
    }
    Ok(rel.to_owned())
}

/// systemd's slice hierarchy of `slice` (runc's `ExpandSlice`):
/// `a-b-c.slice` -> `a.slice/a-b.slice/a-b-c.slice`; `-.slice` is the
/// root. None for a name systemd would refuse.
fn expand_slice(slice: &str) -> Option<PathBuf> {
    let name = slice.strip_suffix(".slice")?;
    if slice.contains('/') || name.is_empty() {
        return None;
    }
    let mut path = PathBuf::new();
    if name == "-" {
        return Some(path);
    }
    let mut prefix = String::new();
    for component in name.split('-') {
        if component.is_empty() || component == "." || component == ".." {
            return None;
        }
        path.push(format!("{prefix}{component}.slice"));
        prefix.push_str(component);
        prefix.push('-');
    }
    Some(path)
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

    /// The `cgroup.procs` files the VM's processes are written into.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.joined.iter().map(|d| d.join("cgroup.procs")).collect()
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
    fn cgroupfs_paths_are_taken_as_they_are() {
        assert_eq!(
            host_path("/kubepods/pod1/abc").unwrap(),
            PathBuf::from("kubepods/pod1/abc")
        );
        for (bad, problem) in [
            ("/a/../../etc", ".."),
            ("relative", "absolute"),
            ("/", "root"),
        ] {
            let e = host_path(bad).unwrap_err().to_string();
            assert!(e.contains(problem) && e.contains(bad), "{e}");
        }
    }

    /// As runc and containerd lay out systemd's `slice:prefix:name`.
    #[test]
    fn systemd_paths_become_the_slices_and_scope_runc_makes() {
        for (spec, path) in [
            (
                "kubepods-burstable-pod123.slice:cri-containerd:abc",
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod123.slice/cri-containerd-abc.scope",
            ),
            ("kubepods.slice:cri-containerd:abc", "kubepods.slice/cri-containerd-abc.scope"),
            (":cri-containerd:abc", "system.slice/cri-containerd-abc.scope"),
            ("-.slice:p:n", "p-n.scope"),
            ("a-b.slice:p:c.slice", "a.slice/a-b.slice/c.slice"),
        ] {
            assert_eq!(host_path(spec).unwrap(), PathBuf::from(path), "{spec}");
        }
        for bad in [
            "kubepods.slice:cri-containerd",
            "a:b:c:d",
            "kubepods:cri-containerd:abc",
            "a--b.slice:p:n",
            "-a.slice:p:n",
            ".slice:p:n",
            "a.slice:p:",
            "a.slice:p:../../etc",
            "a.slice:..:n",
            "a/b.slice:p:n",
        ] {
            let e = host_path(bad).unwrap_err().to_string();
            assert!(e.contains("linux.cgroupsPath"), "{bad}: {e}");
        }
    }
}
