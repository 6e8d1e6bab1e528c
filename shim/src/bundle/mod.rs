//! What both pod kinds read from a container's bundle (the OCI runtime
//! spec's `config.json`, runtime-spec config.md and config-linux.md, and
//! the rootfs containerd mounts): [`BundleSpec`] holds the spec as read
//! with the fields the shim acts on (root, network namespace, cgroup
//! path, annotations, resources), and [`mount_rootfs`] mounts containerd's
//! rootfs mounts at `<bundle>/rootfs` as runc's shim does.
//!
//! Nothing here rewrites the spec for a guest: that is each pod kind's
//! (the micro-VM pod's `guest_spec`).

pub mod container_disk;

use containerd_shim_protos::api::Mount;
use husk_config::VmLimits;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The annotation containerd's CRI puts on every container of a pod:
/// `sandbox` on the pod sandbox (pause) container, `container` on others.
pub const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("config.json: {field}: {message}")]
    Field {
        field: &'static str,
        message: String,
    },
    #[error(
        "linux.namespaces: no network namespace, so the host's network is asked for \
         (hostNetwork: true or --net-host); husk runs the pod in a VM, which cannot \
         share the host's network namespace: run host-network pods with runc"
    )]
    HostNetwork,
    #[error("mounting the rootfs at {rootfs}: {message}")]
    Rootfs { rootfs: PathBuf, message: String },
}

/// A container's `config.json`, as read, and what the shim acts on.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    pub spec: Value,
    /// The rootfs on the host: `root.path` against the bundle.
    pub host_root: PathBuf,
    /// The network namespace the spec names by path (a pod's, from CNI;
    /// an app container's names its sandbox task's).
    pub netns: Option<PathBuf>,
    /// `linux.cgroupsPath`: where the pod's VM goes on the host.
    pub cgroups_path: Option<String>,
}

impl BundleSpec {
    /// Reads `<bundle>/config.json`.
    pub fn read(bundle: &Path) -> Result<Self, BundleError> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|source| BundleError::Read {
            path: path.clone(),
            source,
        })?;
        let spec: Value =
            serde_json::from_slice(&text).map_err(|source| BundleError::Parse { path, source })?;
        Self::of(spec, bundle)
    }

    /// `spec` as the bundle at `bundle` holds it.
    pub fn of(spec: Value, bundle: &Path) -> Result<Self, BundleError> {
        let host_root = match spec.pointer("/root/path") {
            Some(Value::String(p)) => bundle.join(p),
            _ => {
                return Err(BundleError::Field {
                    field: "root.path",
                    message: "missing".into(),
                })
            }
        };
        let netns = namespace(&spec, "network")
            .and_then(|n| n.get("path")?.as_str())
            .map(PathBuf::from);
        let cgroups_path = spec
            .pointer("/linux/cgroupsPath")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Self {
            spec,
            host_root,
            netns,
            cgroups_path,
        })
    }

    /// The spec's annotations (those that are strings).
    pub fn annotations(&self) -> HashMap<String, String> {
        self.spec
            .get("annotations")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect()
    }

    /// One annotation, when it is a string.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.spec.get("annotations")?.get(key)?.as_str()
    }

    /// Whether this is a CRI pod's sandbox (pause) container.
    pub fn is_sandbox(&self) -> bool {
        self.annotation(CONTAINER_TYPE_ANNOTATION) == Some("sandbox")
    }

    /// The container's CPU and memory limits (`linux.resources`).
    pub fn limits(&self) -> VmLimits {
        let positive = |p: &str| {
            self.spec
                .pointer(p)
                .and_then(Value::as_i64)
                .filter(|&v| v > 0)
                .map(|v| v as u64)
        };
        VmLimits {
            cpu_quota: positive("/linux/resources/cpu/quota"),
            cpu_period: self
                .spec
                .pointer("/linux/resources/cpu/period")
                .and_then(Value::as_u64),
            memory_bytes: positive("/linux/resources/memory/limit"),
        }
    }

    /// `process.oomScoreAdj`: the score runc gives the container's process
    /// (containerd's CRI sets it from the pod's QoS class).
    pub fn oom_score_adj(&self) -> Option<i32> {
        self.spec
            .pointer("/process/oomScoreAdj")
            .and_then(Value::as_i64)
            .and_then(|v| i32::try_from(v).ok())
    }

    /// A spec without a network namespace asks for the host's network
    /// (`hostNetwork: true`, `ctr run --net-host`). A VM cannot join the
    /// host's network namespace, and a workload silently given a private
    /// one would not be reachable where it expects: refused, as other VM
    /// runtimes do.
    pub fn refuse_host_network(&self) -> Result<(), BundleError> {
        match namespace(&self.spec, "network") {
            Some(_) => Ok(()),
            None => Err(BundleError::HostNetwork),
        }
    }
}

/// The spec's `linux.namespaces` entry of `kind`.
fn namespace<'s>(spec: &'s Value, kind: &str) -> Option<&'s Value> {
    spec.pointer("/linux/namespaces")?
        .as_array()?
        .iter()
        .find(|n| n.get("type").and_then(Value::as_str) == Some(kind))
}

/// Mounts containerd's rootfs mounts at `<bundle>/rootfs` as runc's shim
/// does; with none, the spec's own root (`ctr run --rootfs`) is used as it
/// is. Returns the rootfs directory and what was mounted (to unmount).
pub fn mount_rootfs(
    mounts: &[Mount],
    bundle: &Path,
    host_root: &Path,
) -> Result<(PathBuf, Option<PathBuf>), BundleError> {
    if mounts.is_empty() {
        return Ok((host_root.to_owned(), None));
    }
    let rootfs = bundle.join("rootfs");
    let fail = |message: String| BundleError::Rootfs {
        rootfs: rootfs.clone(),
        message,
    };
    std::fs::create_dir_all(&rootfs).map_err(|e| fail(format!("creating it: {e}")))?;
    for m in mounts {
        let fstype = Some(m.type_.as_str()).filter(|s| !s.is_empty());
        let source = Some(m.source.as_str()).filter(|s| !s.is_empty());
        if let Err(e) = containerd_shim::mount::mount_rootfs(fstype, source, &m.options, &rootfs) {
            crate::host::mounts::unmount(&rootfs);
            return Err(fail(e.to_string()));
        }
    }
    Ok((rootfs.clone(), Some(rootfs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(namespaces: Value) -> BundleSpec {
        BundleSpec::of(
            json!({"root": {"path": "rootfs"}, "linux": {"namespaces": namespaces}}),
            Path::new("/b"),
        )
        .unwrap()
    }

    #[test]
    fn host_network_pods_are_refused_with_the_reason() {
        let host = spec(json!([{"type": "pid"}, {"type": "mount"}]));
        let text = host.refuse_host_network().unwrap_err().to_string();
        assert!(
            text.contains("hostNetwork") && text.contains("runc"),
            "{text}"
        );
        // A pod's CNI namespace, and a new one (ctr run), are the guest's.
        let cni = spec(json!([{"type": "network", "path": "/var/run/netns/cni-1"}]));
        cni.refuse_host_network().unwrap();
        assert_eq!(cni.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        spec(json!([{"type": "network"}]))
            .refuse_host_network()
            .unwrap();
    }

    #[test]
    fn limits_and_scores_come_from_the_spec() {
        let b = BundleSpec::of(
            json!({"root": {"path": "r"}, "process": {"oomScoreAdj": -997},
                   "linux": {"cgroupsPath": "/kubepods/p/c", "resources": {
                "cpu": {"quota": 200000, "period": 100000},
                "memory": {"limit": 2147483648i64}
            }}}),
            Path::new("/b"),
        )
        .unwrap();
        assert_eq!(
            b.limits(),
            VmLimits {
                cpu_quota: Some(200000),
                cpu_period: Some(100000),
                memory_bytes: Some(2 << 30)
            }
        );
        assert_eq!(b.oom_score_adj(), Some(-997));
        assert_eq!(b.cgroups_path.as_deref(), Some("/kubepods/p/c"));
        assert_eq!(b.host_root, PathBuf::from("/b/r"));
        let unlimited = BundleSpec::of(
            json!({"root": {"path": "r"}, "linux": {"resources": {"cpu": {"quota": -1}, "memory": {"limit": -1}}}}),
            Path::new("/b"),
        )
        .unwrap();
        assert_eq!(unlimited.limits(), VmLimits::default());
        assert_eq!(unlimited.oom_score_adj(), None);
    }

    #[test]
    fn a_bundle_without_a_root_or_json_is_refused_by_name() {
        let e = BundleSpec::of(json!({}), Path::new("/b")).unwrap_err();
        assert!(e.to_string().contains("root.path"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), "{").unwrap();
        let e = BundleSpec::read(dir.path()).unwrap_err();
        assert!(e.to_string().contains("parsing"), "{e}");
    }

    #[test]
    fn cri_marks_the_sandbox() {
        let b = BundleSpec::of(
            json!({"root": {"path": "r"}, "annotations": {CONTAINER_TYPE_ANNOTATION: "sandbox", "n": 5}}),
            Path::new("/b"),
        )
        .unwrap();
        assert!(b.is_sandbox());
        assert_eq!(b.annotations().len(), 1);
    }
}
