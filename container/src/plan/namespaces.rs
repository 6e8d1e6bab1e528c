//! `linux.namespaces` (runtime-spec config-linux.md, "Namespaces"): the
//! namespaces an init makes with clone, the pod's it enters by path, and,
//! for an exec, every namespace of the container's init.

use super::error::{bad, path_cstring, SpecError};
use nix::sched::CloneFlags;
use oci_spec::runtime::{Linux, LinuxNamespaceType};
use std::ffi::CString;
use std::path::Path;

#[derive(Debug)]
pub(crate) struct Namespaces {
    /// Made by clone; none for an exec.
    pub clone_flags: CloneFlags,
    /// A cgroup namespace, made by unshare in the child once it has joined
    /// its cgroup, so that the namespace's root is that cgroup (as under
    /// runc), rather than by clone.
    pub unshare_cgroup: bool,
    /// Namespace files the child enters with setns, in order, before
    /// anything else: a pod's shared ones (named by path in the spec) for
    /// an init; the init's for an exec.
    pub enter: Vec<(CString, CloneFlags)>,
    /// A PID namespace file, entered by the thread that clones:
    /// setns(CLONE_NEWPID) only changes where that thread's children go.
    pub pid: Option<String>,
}

impl Namespaces {
    pub fn from_spec(linux: Option<&Linux>) -> Result<Self, SpecError> {
        let mut ns = Namespaces {
            clone_flags: CloneFlags::empty(),
            unshare_cgroup: false,
            enter: Vec::new(),
            pid: None,
        };
        for (i, n) in linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
            .enumerate()
        {
            match n.path() {
                Some(path) => ns.enter_by_path(i, n.typ(), path)?,
                None => ns.clone_flags |= clone_flag(n.typ())?,
            }
        }
        ns.unshare_cgroup = ns.clone_flags.contains(CloneFlags::CLONE_NEWCGROUP);
        ns.clone_flags.remove(CloneFlags::CLONE_NEWCGROUP);
        if !ns.clone_flags.contains(CloneFlags::CLONE_NEWNS) {
            return Err(bad("linux.namespaces", "a mount namespace is required"));
        }
        Ok(ns)
    }

    /// linux.namespaces[i] names an existing namespace by `path`: only
    /// another guest process's IPC, UTS, network or PID one.
    fn enter_by_path(
        &mut self,
        i: usize,
        typ: LinuxNamespaceType,
        path: &Path,
    ) -> Result<(), SpecError> {
        let field = format!("linux.namespaces[{i}].path");
        let (flag, name) = match typ {
            LinuxNamespaceType::Ipc => (CloneFlags::CLONE_NEWIPC, "ipc"),
            LinuxNamespaceType::Uts => (CloneFlags::CLONE_NEWUTS, "uts"),
            LinuxNamespaceType::Network => (CloneFlags::CLONE_NEWNET, "net"),
            LinuxNamespaceType::Pid => (CloneFlags::CLONE_NEWPID, "pid"),
            other => {
                return Err(bad(
                    field,
                    format!("joining an existing {other:?} namespace is not supported"),
                ))
            }
        };
        if !is_proc_ns_path(path, name) {
            return Err(bad(
                field,
                format!(
                    "{} is not /proc/<pid>/ns/{name} of a guest process",
                    path.display()
                ),
            ));
        }
        if flag == CloneFlags::CLONE_NEWPID {
            self.pid = Some(path.display().to_string());
        } else {
            self.enter.push((path_cstring(&field, path)?, flag));
        }
        Ok(())
    }

    /// Every kind of namespace the container has of its own, made or
    /// joined by path (not the PID one, which the cloning thread enters).
    /// As under runc, a namespace joined by path isolates a sysctl as a new
    /// one does: a pod's network namespace is joined by path, and in the
    /// guest that is the guest's own, which holds the pod's network.
    pub fn kinds(&self) -> CloneFlags {
        let mut kinds = self.clone_flags;
        kinds.set(CloneFlags::CLONE_NEWCGROUP, self.unshare_cgroup);
        // Namespaces the init entered by path are its namespaces too.
        for (_, flag) in &self.enter {
            kinds |= *flag;
        }
        kinds
    }

    /// An exec's namespaces: all of the init `init_pid`'s (these being the
    /// init's), entered through its /proc files, and none made.
    pub fn of_init(&self, init_pid: i32) -> Namespaces {
        let kinds = self.kinds();
        let files = [
            (CloneFlags::CLONE_NEWIPC, "ipc"),
            (CloneFlags::CLONE_NEWUTS, "uts"),
            (CloneFlags::CLONE_NEWNET, "net"),
            (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
            // Last: after it, /proc paths are the container's.
            (CloneFlags::CLONE_NEWNS, "mnt"),
        ];
        Namespaces {
            clone_flags: CloneFlags::empty(),
            unshare_cgroup: false,
            enter: files
                .into_iter()
                .filter(|(flag, _)| kinds.contains(*flag))
                .map(|(flag, name)| {
                    let path = format!("/proc/{init_pid}/ns/{name}");
                    (CString::new(path).expect("digits and letters only"), flag)
                })
                .collect(),
            pid: Some(format!("/proc/{init_pid}/ns/pid")),
        }
    }
}

/// A namespace to make, as a clone flag (cgroup's is taken out later).
fn clone_flag(typ: LinuxNamespaceType) -> Result<CloneFlags, SpecError> {
    Ok(match typ {
        LinuxNamespaceType::Pid => CloneFlags::CLONE_NEWPID,
        LinuxNamespaceType::Mount => CloneFlags::CLONE_NEWNS,
        LinuxNamespaceType::Ipc => CloneFlags::CLONE_NEWIPC,
        LinuxNamespaceType::Uts => CloneFlags::CLONE_NEWUTS,
        LinuxNamespaceType::Network => CloneFlags::CLONE_NEWNET,
        LinuxNamespaceType::Cgroup => CloneFlags::CLONE_NEWCGROUP,
        other => {
            return Err(bad(
                "linux.namespaces",
                format!("{other:?} namespaces are not supported in the guest"),
            ))
        }
    })
}

/// `/proc/<digits>/ns/<name>`, nothing else.
fn is_proc_ns_path(path: &Path, name: &str) -> bool {
    let parts: Vec<_> = path.components().map(|c| c.as_os_str()).collect();
    parts.len() == 5
        && parts[0] == "/"
        && parts[1] == "proc"
        && parts[2]
            .to_str()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[3] == "ns"
        && parts[4] == name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linux(v: serde_json::Value) -> Linux {
        serde_json::from_value(serde_json::json!({ "namespaces": v })).unwrap()
    }

    fn plan(v: serde_json::Value) -> Result<Namespaces, SpecError> {
        Namespaces::from_spec(Some(&linux(v)))
    }

    #[test]
    fn new_namespaces_are_cloned_and_the_cgroup_one_unshared() {
        let ns = plan(serde_json::json!([
            {"type": "mount"}, {"type": "pid"}, {"type": "network"}, {"type": "cgroup"}
        ]))
        .unwrap();
        assert_eq!(
            ns.clone_flags,
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNET
        );
        assert!(ns.unshare_cgroup);
        assert!(ns.enter.is_empty() && ns.pid.is_none());
    }

    #[test]
    fn a_pods_namespaces_are_entered_by_path() {
        let ns = plan(serde_json::json!([
            {"type": "mount"},
            {"type": "ipc", "path": "/proc/12/ns/ipc"},
            {"type": "uts", "path": "/proc/12/ns/uts"},
            {"type": "pid", "path": "/proc/12/ns/pid"}
        ]))
        .unwrap();
        assert_eq!(
            ns.enter,
            vec![
                (c"/proc/12/ns/ipc".to_owned(), CloneFlags::CLONE_NEWIPC),
                (c"/proc/12/ns/uts".to_owned(), CloneFlags::CLONE_NEWUTS)
            ]
        );
        assert_eq!(ns.pid.as_deref(), Some("/proc/12/ns/pid"));
        assert_eq!(ns.clone_flags, CloneFlags::CLONE_NEWNS);
        assert!(!is_proc_ns_path(Path::new("/proc/12/ns/../ns/ipc"), "ipc"));
        assert!(!is_proc_ns_path(Path::new("/proc/self/ns/ipc"), "ipc"));
    }

    #[test]
    fn an_exec_enters_every_namespace_of_the_init_mount_last() {
        let init = plan(serde_json::json!([
            {"type": "mount"}, {"type": "cgroup"}, {"type": "network"},
            {"type": "ipc", "path": "/proc/12/ns/ipc"}
        ]))
        .unwrap();
        let exec = init.of_init(40);
        let paths: Vec<_> = exec.enter.iter().map(|(p, _)| p.as_c_str()).collect();
        assert_eq!(
            paths,
            [
                c"/proc/40/ns/ipc",
                c"/proc/40/ns/net",
                c"/proc/40/ns/cgroup",
                c"/proc/40/ns/mnt"
            ]
        );
        assert_eq!(exec.pid.as_deref(), Some("/proc/40/ns/pid"));
        assert!(exec.clone_flags.is_empty() && !exec.unshare_cgroup);
    }

    #[test]
    fn unsupported_namespaces_name_the_field() {
        let user = plan(serde_json::json!([{"type": "mount"}, {"type": "user"}])).unwrap_err();
        assert_eq!(user.field(), "linux.namespaces");
        let no_mount = plan(serde_json::json!([{"type": "pid"}])).unwrap_err();
        assert!(no_mount.to_string().contains("mount namespace is required"));
        let netns = plan(serde_json::json!([
            {"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-1"}
        ]))
        .unwrap_err();
        assert_eq!(netns.field(), "linux.namespaces[1].path");
        let mnt =
            plan(serde_json::json!([{"type": "mount", "path": "/proc/7/ns/mnt"}])).unwrap_err();
        assert_eq!(mnt.field(), "linux.namespaces[0].path");
    }
}
