//! The bundle's config.json as the guest must see it, checked before a VM
//! is booted for it.
//!
//! - What only the host can check (a bind mount's source exists) and what
//!   would otherwise fail only inside the guest after a boot (unknown
//!   capability names, a negative memory limit) is refused here, naming
//!   the field, so a bad spec costs no VM.
//! - Paths are rewritten to the guest's view: `root.path` to the rootfs in
//!   the shared directory, and each bind mount's source to its own share
//!   point, `<container dir>/mounts/<i>` (see `rootfs::mount_binds`).
//! - A network namespace named by path (a pod's, from CNI, or another
//!   container's) becomes the guest's own network namespace, which holds
//!   the pod's network (the VM's NIC): the container joins it by path, as
//!   under runc it joins the pod's. So `net.*` sysctls (containerd 2.x puts
//!   `net.ipv4.ip_unprivileged_port_start` into every sandbox) are written
//!   where the pod's network is, and stay refused by the agent where the
//!   spec has no network namespace at all, as runc refuses them.

use crate::bundle::BundleSpec;
use anyhow::{bail, Context as _};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The guest's own network namespace, where the pod's network is: that of
/// the agent, PID 1 in the guest.
pub const GUEST_NETNS: &str = "/proc/1/ns/net";

/// A host path bind-mounted into the container through the shared
/// directory.
#[derive(Debug, Clone, PartialEq)]
pub struct HostBind {
    pub source: PathBuf,
    /// Index of the mount in config.json; names its share point.
    pub index: usize,
    pub read_only: bool,
    pub is_file: bool,
}

#[derive(Debug)]
pub struct GuestSpec {
    /// The bundle as read: its root, network namespace (a pod's, from
    /// CNI: the VM's network is connected to it), cgroup, annotations.
    pub bundle: BundleSpec,
    /// The spec as the guest's agent gets it.
    pub spec: Value,
    pub binds: Vec<HostBind>,
}

/// Where the container's rootfs is in the guest (its share point).
pub fn guest_rootfs(container_id: &str) -> String {
    format!("{}/{container_id}/rootfs", husk_proto::GUEST_SHARED_DIR)
}

/// Where host bind `index` of the container is in the guest.
fn guest_bind(container_id: &str, index: usize) -> String {
    format!(
        "{}/{container_id}/mounts/{index}",
        husk_proto::GUEST_SHARED_DIR
    )
}

/// Reads `<bundle>/config.json`, checks it and rewrites it for the guest.
pub fn prepare(bundle: &Path, id: &str) -> anyhow::Result<GuestSpec> {
    for_guest(BundleSpec::read(bundle)?, id).context("config.json")
}

fn for_guest(bundle: BundleSpec, id: &str) -> anyhow::Result<GuestSpec> {
    let mut spec = bundle.spec.clone();
    check_capabilities(&spec)?;
    check_memory_limit(&spec)?;
    // The VM is the pod, and its network namespace is the pod's network:
    // a network namespace named by a path (CNI's, for a pod) means the
    // guest's own; one without a path stays a new, empty one.
    for ns in spec
        .pointer_mut("/linux/namespaces")
        .and_then(|n| n.as_array_mut())
        .into_iter()
        .flatten()
    {
        let path = ns.get("path").and_then(|p| p.as_str());
        if let (Some("network"), Some(_)) = (ns.get("type").and_then(|t| t.as_str()), path) {
            ns["path"] = GUEST_NETNS.into();
        }
    }
    spec["root"]["path"] = guest_rootfs(id).into();

    let mut binds = Vec::new();
    for (i, m) in spec
        .get_mut("mounts")
        .and_then(|m| m.as_array_mut())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let options: Vec<&str> = m
            .get("options")
            .and_then(|o| o.as_array())
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str())
            .collect();
        let is_bind = m.get("type").and_then(|t| t.as_str()) == Some("bind")
            || options.iter().any(|o| *o == "bind" || *o == "rbind");
        if !is_bind {
            continue;
        }
        if m.get("destination").and_then(|d| d.as_str()) == Some("/dev/shm") {
            m["source"] = husk_proto::GUEST_POD_SHM.into();
            continue;
        }
        let Some(source) = m.get("source").and_then(|s| s.as_str()) else {
            bail!("mounts[{i}].source: a bind mount needs a source");
        };
        let source = PathBuf::from(source);
        if !source.is_absolute() {
            bail!("mounts[{i}].source: {} is not absolute", source.display());
        }
        let meta = std::fs::metadata(&source)
            .map_err(|e| anyhow::anyhow!("mounts[{i}].source: {}: {e}", source.display()))?;
        let read_only = options.contains(&"ro");
        binds.push(HostBind {
            source,
            index: i,
            read_only,
            is_file: !meta.is_dir(),
        });
        m["source"] = guest_bind(id, i).into();
    }
    Ok(GuestSpec {
        bundle,
        spec,
        binds,
    })
}

fn check_capabilities(spec: &Value) -> anyhow::Result<()> {
    let Some(caps) = spec.pointer("/process/capabilities") else {
        return Ok(());
    };
    for set in [
        "bounding",
        "effective",
        "permitted",
        "inheritable",
        "ambient",
    ] {
        for (j, name) in caps
            .get(set)
            .and_then(|s| s.as_array())
            .into_iter()
            .flatten()
            .enumerate()
        {
            let name = name.as_str().unwrap_or("");
            if !husk_proto::CAPABILITY_NAMES.contains(&name) {
                bail!("process.capabilities.{set}[{j}]: unknown capability {name:?}");
            }
        }
    }
    Ok(())
}

fn check_memory_limit(spec: &Value) -> anyhow::Result<()> {
    match spec.pointer("/linux/resources/memory/limit") {
        None | Some(Value::Null) => Ok(()),
        Some(v) => match v.as_i64() {
            Some(l) if l >= -1 => Ok(()),
            _ => bail!("linux.resources.memory.limit: must be positive or -1 (unlimited), got {v}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(extra: Value) -> Value {
        let mut v = json!({"root": {"path": "rootfs"}, "process": {"args": ["sh"]}});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v
    }

    /// The guest spec of `spec` in bundle /b.
    fn for_guest(spec: Value, bundle: &Path, id: &str) -> anyhow::Result<GuestSpec> {
        super::for_guest(BundleSpec::of(spec, bundle)?, id)
    }

    #[test]
    fn root_and_bind_sources_point_into_the_share() {
        let host = tempfile::tempdir().unwrap();
        let file = host.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let g = for_guest(
            spec(json!({"mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/data", "type": "bind", "source": host.path(), "options": ["rbind", "ro"]},
                {"destination": "/etc/f", "source": file, "options": ["bind"]}
            ]})),
            Path::new("/b"),
            "c1",
        )
        .unwrap();
        assert_eq!(g.bundle.host_root, Path::new("/b/rootfs"));
        assert_eq!(g.spec["root"]["path"], "/run/husk/shared/c1/rootfs");
        assert_eq!(g.spec["mounts"][0]["source"], "proc");
        assert_eq!(
            g.spec["mounts"][1]["source"],
            "/run/husk/shared/c1/mounts/1"
        );
        assert_eq!(
            g.spec["mounts"][2]["source"],
            "/run/husk/shared/c1/mounts/2"
        );
        assert_eq!(
            g.binds,
            vec![
                HostBind {
                    source: host.path().into(),
                    index: 1,
                    read_only: true,
                    is_file: false
                },
                HostBind {
                    source: file,
                    index: 2,
                    read_only: false,
                    is_file: true
                }
            ]
        );
    }

    #[test]
    fn a_host_network_namespace_becomes_the_guests() {
        let g = for_guest(
            spec(json!({"linux": {"namespaces": [
                {"type": "network", "path": "/var/run/netns/cni-1234"},
                {"type": "ipc", "path": "/proc/7/ns/ipc"},
                {"type": "mount"}
            ]}})),
            Path::new("/b"),
            "c1",
        )
        .unwrap();
        assert_eq!(
            g.spec["linux"]["namespaces"],
            json!([
                {"type": "network", "path": "/proc/1/ns/net"},
                {"type": "ipc", "path": "/proc/7/ns/ipc"},
                {"type": "mount"}
            ])
        );
        assert_eq!(
            g.bundle.netns.as_deref(),
            Some(Path::new("/var/run/netns/cni-1234"))
        );
    }

    /// containerd 2.x's sandbox spec: the CNI namespace by path and
    /// `net.ipv4.ip_unprivileged_port_start`. The guest spec joins the
    /// guest's network by path, so the sysctl has a network namespace
    /// (the pod's) to go to; without any network namespace, or with a new
    /// one, nothing changes.
    #[test]
    fn net_sysctls_go_to_the_guests_network() {
        let sysctl = json!({"net.ipv4.ip_unprivileged_port_start": "0"});
        let g = for_guest(
            spec(json!({"linux": {
                "namespaces": [{"type": "mount"}, {"type": "network", "path": "/run/netns/cni-1"}],
                "sysctl": sysctl
            }})),
            Path::new("/b"),
            "pause",
        )
        .unwrap();
        assert_eq!(g.spec["linux"]["sysctl"], sysctl);
        assert_eq!(
            g.spec["linux"]["namespaces"][1],
            json!({"type": "network", "path": GUEST_NETNS})
        );
        for namespaces in [
            json!([{"type": "mount"}, {"type": "network"}]),
            json!([{"type": "mount"}]),
        ] {
            let g = for_guest(
                spec(json!({"linux": {"namespaces": namespaces, "sysctl": sysctl}})),
                Path::new("/b"),
                "c1",
            )
            .unwrap();
            assert_eq!(g.spec["linux"]["namespaces"], namespaces);
            assert_eq!(g.bundle.netns, None);
        }
    }

    #[test]
    fn bad_fields_are_named_before_any_vm() {
        let err = |extra: Value| {
            format!(
                "{:#}",
                for_guest(spec(extra), Path::new("/b"), "c1").unwrap_err()
            )
        };
        let e = err(
            json!({"mounts": [{"destination": "/x", "type": "bind", "source": "/nonexistent/husk", "options": ["rbind"]}]}),
        );
        assert!(e.starts_with("mounts[0].source: /nonexistent/husk"), "{e}");
        let e = err(json!({"process": {"capabilities": {"bounding": ["CAP_CHOWN", "CAP_BOGUS"]}}}));
        assert!(e.starts_with("process.capabilities.bounding[1]"), "{e}");
        assert!(e.contains("CAP_BOGUS"), "{e}");
        let e = err(json!({"linux": {"resources": {"memory": {"limit": -5}}}}));
        assert!(e.starts_with("linux.resources.memory.limit"), "{e}");
        assert!(e.contains("-5"), "{e}");
        let e = err(json!({"root": {}}));
        assert!(e.contains("root.path"), "{e}");
    }
}
