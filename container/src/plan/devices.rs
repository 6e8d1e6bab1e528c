//! /dev in the container: the default devices (runtime-spec
//! config-linux.md, "Default Devices"), bound from the guest's own nodes;
//! `linux.devices`, made with mknod; and the /dev symlinks runc makes.

use super::error::{bad, cstring, path_cstring, SpecError};
use super::rootfs::resolve_in_root;
use oci_spec::runtime::LinuxDevice;
use std::ffi::CString;
use std::path::Path;

const DEFAULT_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// (link target, link path inside the new root).
const LINKS: &[(&str, &str)] = &[
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
    ("pts/ptmx", "/dev/ptmx"),
];

#[derive(Debug)]
pub(crate) struct Devices {
    /// The default devices, bound from the agent's /dev over empty files:
    /// (source, target below the rootfs). A node of linux.devices at the
    /// same path replaces its default.
    pub binds: Vec<(CString, CString)>,
    /// linux.devices, made after the defaults.
    pub nodes: Vec<DeviceNode>,
    /// /dev symlinks: (link target, link path inside the new root).
    pub links: Vec<(CString, CString)>,
}

/// A device node from linux.devices, made with mknod below the rootfs.
#[derive(Debug)]
pub(crate) struct DeviceNode {
    /// As the spec writes it, for error messages.
    pub path: String,
    pub target: CString,
    /// File type bits (S_IFCHR, S_IFBLK, S_IFIFO) and permissions.
    pub mode: u32,
    pub major: u64,
    pub minor: u64,
    pub uid: u32,
    pub gid: u32,
}

impl Devices {
    pub fn from_spec(rootfs: &Path, devices: Option<&Vec<LinuxDevice>>) -> Result<Self, SpecError> {
        let nodes = devices
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, d)| device_node(rootfs, i, d))
            .collect::<Result<Vec<_>, _>>()?;
        let binds = DEFAULT_DEVICES
            .iter()
            .map(|d| format!("/dev/{d}"))
            .filter(|dev| !nodes.iter().any(|n| n.path == *dev))
            .map(|dev| {
                let target = resolve_in_root(rootfs, Path::new(&dev)).map_err(|source| {
                    SpecError::Resolve {
                        field: "devices".into(),
                        source,
                    }
                })?;
                Ok((cstring("devices", &dev)?, path_cstring("devices", &target)?))
            })
            .collect::<Result<_, SpecError>>()?;
        let links = LINKS
            .iter()
            .map(|(t, l)| Ok((cstring("devices", t)?, cstring("devices", l)?)))
            .collect::<Result<_, SpecError>>()?;
        Ok(Devices {
            binds,
            nodes,
            links,
        })
    }
}

/// One of linux.devices. Paths must be below /dev, as runc asks.
fn device_node(rootfs: &Path, i: usize, d: &LinuxDevice) -> Result<DeviceNode, SpecError> {
    use oci_spec::runtime::LinuxDeviceType as T;
    let field = format!("linux.devices[{i}]");
    let path = d.path();
    if !path.starts_with("/dev/") || path.components().any(|c| c.as_os_str() == "..") {
        return Err(bad(
            format!("{field}.path"),
            format!("{} is not below /dev", path.display()),
        ));
    }
    let kind = match d.typ() {
        T::C | T::U => nix::libc::S_IFCHR,
        T::B => nix::libc::S_IFBLK,
        T::P => nix::libc::S_IFIFO,
        T::A => {
            return Err(bad(
                format!("{field}.type"),
                "\"a\" is for device cgroup rules, not for a node",
            ))
        }
    };
    let perm = d.file_mode().unwrap_or(0o666) & 0o7777;
    let target = resolve_in_root(rootfs, path).map_err(|source| SpecError::Resolve {
        field: format!("{field}.path"),
        source,
    })?;
    Ok(DeviceNode {
        path: path.display().to_string(),
        target: path_cstring(&format!("{field}.path"), &target)?,
        mode: kind | perm,
        major: d.major().max(0) as u64,
        minor: d.minor().max(0) as u64,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn devices(root: &Path, v: serde_json::Value) -> Result<Devices, SpecError> {
        let list: Vec<LinuxDevice> = serde_json::from_value(v).unwrap();
        Devices::from_spec(root, Some(&list))
    }

    #[test]
    fn defaults_are_bound_and_a_spec_node_replaces_its_default() {
        let root = tempfile::tempdir().unwrap();
        let plan = devices(
            root.path(),
            serde_json::json!([
                {"path": "/dev/null", "type": "c", "major": 1, "minor": 3, "fileMode": 432, "uid": 5},
                {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}
            ]),
        )
        .unwrap();
        let node = &plan.nodes[0];
        assert_eq!(node.mode, nix::libc::S_IFCHR | 0o660);
        assert_eq!((node.major, node.minor, node.uid), (1, 3, 5));
        assert_eq!(plan.nodes[1].mode, nix::libc::S_IFCHR | 0o666);
        let sources: Vec<_> = plan.binds.iter().map(|(s, _)| s.as_c_str()).collect();
        assert_eq!(
            sources,
            [
                c"/dev/zero",
                c"/dev/full",
                c"/dev/random",
                c"/dev/urandom",
                c"/dev/tty"
            ]
        );
        assert_eq!(
            plan.binds[0].1.to_bytes(),
            root.path().join("dev/zero").as_os_str().as_encoded_bytes()
        );
        assert_eq!(plan.links.len(), LINKS.len());
    }

    #[test]
    fn a_symlinked_dev_in_the_image_stays_inside_the_rootfs() {
        let root = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("dev")).unwrap();
        let plan = devices(root.path(), serde_json::json!([])).unwrap();
        assert_eq!(
            plan.binds[0].1.to_bytes(),
            root.path().join("etc/null").as_os_str().as_encoded_bytes()
        );
    }

    #[test]
    fn nodes_outside_dev_and_cgroup_rules_are_refused() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let outside = devices(
            r,
            serde_json::json!([{"path": "/etc/x", "type": "c", "major": 1, "minor": 3}]),
        );
        assert_eq!(outside.unwrap_err().field(), "linux.devices[0].path");
        let up = devices(
            r,
            serde_json::json!([{"path": "/dev/../etc/x", "type": "c", "major": 1, "minor": 3}]),
        );
        assert_eq!(up.unwrap_err().field(), "linux.devices[0].path");
        let all = devices(
            r,
            serde_json::json!([{"path": "/dev/a", "type": "a", "major": 1, "minor": 3}]),
        );
        assert_eq!(all.unwrap_err().field(), "linux.devices[0].type");
    }
}
