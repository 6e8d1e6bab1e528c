//! The plan: an OCI runtime spec turned into everything the cloned child
//! needs, prepared in advance as C strings and flags, because the child of
//! a multi-threaded process may only make system calls (no allocation, no
//! locks) until it execs. Pure: a spec in, a plan or a `SpecError` naming
//! the field out; nothing is changed on the system.
//!
//! One file per concern of the spec: namespaces, mounts (with the root and
//! masked paths), devices, sysctls, rlimits, capabilities, seccomp, cgroups
//! and the process (args, env, cwd, user, terminal).

mod capabilities;
mod cgroups;
mod devices;
mod error;
mod mounts;
mod namespaces;
mod process;
mod rlimits;
mod rootfs;
mod seccomp;
mod sysctls;

pub use cgroups::cgroup_limits;
pub use error::SpecError;

pub(crate) use capabilities::CapSets;
pub(crate) use devices::{DeviceNode, Devices};
pub(crate) use mounts::{Masks, MountOp, Root};
pub(crate) use namespaces::Namespaces;
pub(crate) use process::{ProcessPlan, User};
pub(crate) use rlimits::Rlimit;
pub(crate) use seccomp::SeccompProgram;
pub(crate) use sysctls::Sysctl;

use crate::Cgroup;
use cgroups::CgroupPlan;
use error::{bad, cstring, path_cstring};
use oci_spec::runtime::Spec;
use std::ffi::CString;

/// How to make one container process: an init (which makes the container)
/// or an exec (which enters a running one).
#[derive(Debug)]
pub struct Plan {
    pub(crate) namespaces: Namespaces,
    /// An exec process: it enters the init's namespaces and skips the
    /// container's setup (mounts, devices, pivot_root, masks, sysctls).
    pub(crate) exec: bool,
    pub(crate) root: Root,
    pub(crate) hostname: Option<CString>,
    pub(crate) mounts: Vec<MountOp>,
    pub(crate) devices: Devices,
    pub(crate) sysctls: Vec<Sysctl>,
    pub(crate) masks: Masks,
    pub(crate) rlimits: Vec<Rlimit>,
    /// None: the spec sets no capabilities and the process keeps its own.
    pub(crate) capabilities: Option<CapSets>,
    pub(crate) seccomp: Option<SeccompProgram>,
    pub(crate) cgroup: CgroupPlan,
    pub(crate) process: ProcessPlan,
}

impl Plan {
    /// The plan of a container's init.
    pub fn from_spec(spec: &Spec) -> Result<Self, SpecError> {
        let (root, rootfs) = Root::from_spec(spec.root().as_ref())?;
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| bad("process", "missing"))?;
        let linux = spec.linux().as_ref();
        let namespaces = Namespaces::from_spec(linux)?;
        Ok(Plan {
            capabilities: capabilities::from_spec(process.capabilities().as_ref())?,
            process: ProcessPlan::from_spec(process)?,
            mounts: mounts::from_spec(&rootfs, spec.mounts().as_ref())?,
            rlimits: rlimits::from_spec(process.rlimits().as_ref())?,
            devices: Devices::from_spec(&rootfs, linux.and_then(|l| l.devices().as_ref()))?,
            sysctls: sysctls::from_spec(
                linux.and_then(|l| l.sysctl().as_ref()),
                namespaces.kinds(),
            )?,
            seccomp: linux
                .and_then(|l| l.seccomp().as_ref())
                .map(seccomp::compile)
                .transpose()?,
            hostname: match spec.hostname() {
                Some(h) if !h.is_empty() => Some(cstring("hostname", h)?),
                _ => None,
            },
            masks: Masks::from_spec(linux)?,
            cgroup: CgroupPlan {
                limits: cgroup_limits(linux.and_then(|l| l.resources().as_ref()))?,
                procs: None,
            },
            namespaces,
            exec: false,
            root,
        })
    }

    /// The plan of an exec process in a running container: the container's
    /// `spec` with `process` in it, entering every namespace of the
    /// container's init `init_pid` rather than making any.
    pub fn for_exec(
        spec: &Spec,
        process: oci_spec::runtime::Process,
        init_pid: i32,
    ) -> Result<Self, SpecError> {
        let mut spec = spec.clone();
        spec.set_process(Some(process));
        let mut plan = Self::from_spec(&spec)?;
        plan.namespaces = plan.namespaces.of_init(init_pid);
        plan.exec = true;
        Ok(plan)
    }

    /// Places the container in `cgroup`: its init joins the cgroup itself
    /// (before it makes a cgroup namespace), and without a cgroup namespace
    /// its cgroup mounts bind the cgroup's directory.
    pub fn place_in(&mut self, cgroup: &Cgroup) -> Result<(), SpecError> {
        self.cgroup.procs = Some(path_cstring("cgroup", &cgroup.procs_path())?);
        if !self.namespaces.unshare_cgroup {
            mounts::bind_cgroup_mounts(&mut self.mounts, cgroup.path())?;
        }
        Ok(())
    }

    /// linux.resources as cgroup v2 (file, value) writes.
    pub fn cgroup_limits(&self) -> &[(&'static str, String)] {
        &self.cgroup.limits
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use nix::sched::CloneFlags;
    use std::path::Path;

    /// A minimal valid spec on `root`, with `extra` merged into it.
    pub(crate) fn spec(root: &Path, extra: serde_json::Value) -> Spec {
        let mut v = serde_json::json!({
            "ociVersion": "1.1.0",
            "root": {"path": root},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 1000, "gid": 1000, "additionalGids": [10]},
                        "env": ["PATH=/bin:/usr/bin"]},
            "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}]}
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
        if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
            for (k, v) in b {
                match a.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        a.insert(k, v);
                    }
                }
            }
        }
    }

    fn err(root: &Path, extra: serde_json::Value) -> SpecError {
        Plan::from_spec(&spec(root, extra)).unwrap_err()
    }

    #[test]
    fn every_concern_of_the_spec_reaches_the_plan() {
        let root = tempfile::tempdir().unwrap();
        let plan = Plan::from_spec(&spec(
            root.path(),
            serde_json::json!({
                "hostname": "box",
                "root": {"readonly": true},
                "mounts": [{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs"}],
                "process": {"rlimits": [{"type": "RLIMIT_NOFILE", "soft": 10, "hard": 20}],
                            "capabilities": {"bounding": ["CAP_KILL"]}, "noNewPrivileges": true},
                "linux": {
                    "namespaces": [{"type": "mount"}, {"type": "ipc"}],
                    "sysctl": {"kernel.shmmni": "1000"},
                    "maskedPaths": ["/proc/kcore"], "readonlyPaths": ["/proc/sys"],
                    "resources": {"pids": {"limit": 20}},
                    "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}
                }
            }),
        ))
        .unwrap();
        assert_eq!(plan.process.user.additional_gids, [10]);
        assert_eq!(plan.process.exec_candidates, [c"/bin/sh", c"/usr/bin/sh"]);
        assert!(plan.process.no_new_privileges && !plan.exec);
        assert_eq!(plan.hostname.as_deref(), Some(c"box"));
        assert!(plan.root.readonly);
        assert_eq!(plan.mounts.len(), 1);
        assert_eq!(plan.rlimits.len(), 1);
        assert_eq!(plan.capabilities.as_ref().map(|c| c.bounding), Some(1 << 5));
        assert_eq!(plan.sysctls[0].path.as_c_str(), c"/proc/sys/kernel/shmmni");
        assert_eq!(plan.masks.masked, [c"/proc/kcore"]);
        assert_eq!(plan.masks.readonly, [c"/proc/sys"]);
        assert_eq!(plan.cgroup_limits(), [("pids.max", "20".to_owned())]);
        assert!(plan.seccomp.is_some());
        assert_eq!(plan.devices.binds.len(), 6);
        assert_eq!(
            plan.namespaces.clone_flags,
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC
        );
    }

    /// A pod's sandbox joins its network namespace by path (in the guest:
    /// the guest's own, /proc/1/ns/net); its net.* sysctls go there, as
    /// runc writes them into the pod's namespace it joined.
    #[test]
    fn net_sysctls_are_allowed_in_a_joined_network_namespace() {
        let root = tempfile::tempdir().unwrap();
        let plan = Plan::from_spec(&spec(
            root.path(),
            serde_json::json!({"linux": {
                "namespaces": [{"type": "mount"}, {"type": "network", "path": "/proc/1/ns/net"}],
                "sysctl": {"net.ipv4.ip_unprivileged_port_start": "0"}
            }}),
        ))
        .unwrap();
        let paths: Vec<_> = plan.sysctls.iter().map(|s| s.path.as_c_str()).collect();
        assert_eq!(paths, [c"/proc/sys/net/ipv4/ip_unprivileged_port_start"]);
        assert!(!plan
            .namespaces
            .clone_flags
            .contains(CloneFlags::CLONE_NEWNET));
        // Without any network namespace, net.* stays refused.
        let e = err(
            root.path(),
            serde_json::json!({"linux": {"sysctl": {"net.ipv4.ip_forward": "1"}}}),
        );
        assert!(e.to_string().contains("network namespace"), "{e}");
    }

    #[test]
    fn an_exec_plan_enters_the_init_and_makes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let s = spec(root.path(), serde_json::json!({}));
        let process = serde_json::from_value(
            serde_json::json!({"args": ["ls"], "cwd": "/tmp", "user": {"uid": 0, "gid": 0}}),
        )
        .unwrap();
        let plan = Plan::for_exec(&s, process, 77).unwrap();
        assert!(plan.exec);
        assert_eq!(plan.process.program, "ls");
        assert!(plan.namespaces.clone_flags.is_empty());
        assert_eq!(
            plan.namespaces.enter,
            [(c"/proc/77/ns/mnt".to_owned(), CloneFlags::CLONE_NEWNS)]
        );
        assert_eq!(plan.namespaces.pid.as_deref(), Some("/proc/77/ns/pid"));
    }

    #[test]
    fn bad_specs_name_the_field() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let field = |extra| err(r, extra).field().to_owned();
        assert_eq!(
            field(serde_json::json!({"process": {"cwd": "rel"}})),
            "process.cwd"
        );
        assert_eq!(
            field(serde_json::json!({"root": {"path": "/nonexistent/rootfs"}})),
            "root.path"
        );
        let user_ns =
            serde_json::json!({"linux": {"namespaces": [{"type": "mount"}, {"type": "user"}]}});
        assert_eq!(field(user_ns), "linux.namespaces");
        let sysctl = serde_json::json!({"linux": {"sysctl": {"vm.swappiness": "1"}}});
        assert_eq!(field(sysctl), "linux.sysctl[vm.swappiness]");
        let device = serde_json::json!({"linux": {"devices": [{"path": "/etc/x", "type": "c", "major": 1, "minor": 3}]}});
        assert_eq!(field(device), "linux.devices[0].path");
        let notify =
            serde_json::json!({"linux": {"seccomp": {"defaultAction": "SCMP_ACT_NOTIFY"}}});
        assert_eq!(field(notify), "linux.seccomp.defaultAction");
    }
}
