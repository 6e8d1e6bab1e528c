//! husk-vm: a VM image (a KubeVirt containerDisk) booted as a pod, its own
//! kernel and OS, through the same shim and container manager as husk's
//! container pods (docs/vm-pods.md). [`VmImagePod`] is the [`Pod`] and
//! [`VmAgent`] the [`crate::agent::AgentApi`] of that mode:
//!
//! - the pod sandbox (pause) container is a placeholder that runs until it
//!   is signalled, as pause does: the pod's network namespace is CNI's and
//!   needs no process;
//! - the one app container is the VM ([`vm::VmContainer`]): its image is
//!   checked as a containerDisk when it is shared ([`container_disk`]), its
//!   create makes the overlay and the cloud-init seed ([`seed`],
//!   [`cloud_init`]) and spawns QEMU paused, its start runs the vCPUs;
//! - exec goes through the QEMU guest agent ([`exec`]);
//! - a DHCP server on the pod's TAP answers a guest that asks ([`dhcp`]).
//!
//! The manager gives containerd every task semantic on top (events, Wait,
//! Delete, deadlines, the kill grace).

mod agent;
pub mod cloud_init;
pub mod container_disk;
mod dhcp;
mod exec;
pub mod seed;
mod vm;

pub use agent::VmAgent;
pub use vm::{FIRMWARE_ANNOTATION, KERNEL_ARGS_ANNOTATION, PANICKED};

use crate::error::TaskError;
use crate::pod::{ContainerPlan, Pod, PodTimeouts};
use anyhow::anyhow;
use async_trait::async_trait;
use containerd_shim_protos::api::CreateTaskRequest;
use husk_config::{Config, VmLimits};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use vm::{Prepared, VmContainer};

/// An error and its causes on one line, for a message to containerd.
pub(crate) fn chain(e: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::new(e))
}

/// The annotation containerd's CRI puts on the pod sandbox container.
const CONTAINER_TYPE_ANNOTATION: &str = "io.kubernetes.cri.container-type";

/// What the pod's containers share: the configuration and the members.
pub struct VmPodContext {
    pub pod_id: String,
    pub config: Config,
    pub accelerator: husk_hypervisor::Accelerator,
    pub timeouts: PodTimeouts,
}

/// A container of the pod as the host side knows it.
enum Member {
    /// The sandbox, between share and create.
    PlannedSandbox,
    Sandbox(Arc<Placeholder>),
    /// The VM container, between share and create.
    Prepared(Box<Prepared>),
    /// The VM container while its create runs.
    Creating,
    Vm(Arc<VmContainer>),
}

struct Shared {
    ctx: Result<VmPodContext, Arc<husk_config::ConfigError>>,
    members: Mutex<HashMap<String, Member>>,
    /// The pod's network namespace (CNI's), from the sandbox's spec. The
    /// app containers' specs name the sandbox task's instead
    /// (`/proc/<pid>/ns/net`), and no process stands for the sandbox.
    pod_netns: Mutex<Option<PathBuf>>,
}

impl Shared {
    fn members(&self) -> std::sync::MutexGuard<'_, HashMap<String, Member>> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ctx(&self) -> Result<&VmPodContext, TaskError> {
        self.ctx.as_ref().map_err(|e| TaskError::Config(e.clone()))
    }
}

/// The pod sandbox's stand-in: a process that is not there, which ends as
/// pause does — 0 on SIGTERM or SIGINT, 137 on SIGKILL, other signals
/// ignored.
pub struct Placeholder {
    exit: watch::Sender<Option<u32>>,
}

impl Placeholder {
    fn new() -> Self {
        Self {
            exit: watch::channel(None).0,
        }
    }

    fn signal(&self, signal: u32) {
        let status = match signal {
            9 => crate::manager::KILLED,
            2 | 15 => 0,
            _ => return,
        };
        self.exit.send_if_modified(|s| {
            let unset = s.is_none();
            if unset {
                *s = Some(status);
            }
            unset
        });
    }

    async fn wait(&self) -> u32 {
        let mut rx = self.exit.subscribe();
        let status = rx
            .wait_for(Option::is_some)
            .await
            .map(|s| s.unwrap_or(crate::manager::KILLED));
        status.unwrap_or(crate::manager::KILLED)
    }
}

pub struct VmImagePod {
    pod_id: String,
    shared: Arc<Shared>,
    /// The rootfs mounted for each VM container (None: the spec's own).
    mounts: tokio::sync::Mutex<HashMap<String, Option<PathBuf>>>,
}

impl VmImagePod {
    pub fn new(pod_id: String, config: Result<Config, husk_config::ConfigError>) -> Self {
        let ctx = config.map_err(Arc::new).map(|config| {
            let accelerator =
                husk_hypervisor::resolve_accelerator(config.hypervisor.accelerator).accelerator;
            let t = match accelerator {
                husk_hypervisor::Accelerator::Kvm => config.timeouts.kvm,
                husk_hypervisor::Accelerator::Tcg => config.timeouts.tcg,
            };
            VmPodContext {
                pod_id: pod_id.clone(),
                config,
                accelerator,
                timeouts: PodTimeouts {
                    agent_call: Duration::from_secs(t.agent_call_secs),
                    kill_grace: Duration::from_secs(t.kill_grace_secs),
                },
            }
        });
        Self {
            pod_id,
            shared: Arc::new(Shared {
                ctx,
                members: Mutex::default(),
                pod_netns: Mutex::default(),
            }),
            mounts: tokio::sync::Mutex::default(),
        }
    }
}

fn is_sandbox(spec: &Value) -> bool {
    spec.pointer("/annotations")
        .and_then(|a| a.get(CONTAINER_TYPE_ANNOTATION))
        .and_then(Value::as_str)
        == Some("sandbox")
}

/// The container's CPU and memory limits from its spec.
fn limits_of(spec: &Value) -> VmLimits {
    let num = |p: &str| spec.pointer(p).and_then(Value::as_u64);
    VmLimits {
        cpu_quota: spec
            .pointer("/linux/resources/cpu/quota")
            .and_then(Value::as_i64)
            .filter(|&q| q > 0)
            .map(|q| q as u64),
        cpu_period: num("/linux/resources/cpu/period"),
        memory_bytes: spec
            .pointer("/linux/resources/memory/limit")
            .and_then(Value::as_i64)
            .filter(|&m| m > 0)
            .map(|m| m as u64),
    }
}

fn annotations_of(spec: &Value) -> HashMap<String, String> {
    spec.get("annotations")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default()
}

fn read_spec(bundle: &Path) -> Result<Value, TaskError> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path)
        .map_err(|e| TaskError::Invalid(anyhow!("reading {}: {e}", path.display())))?;
    serde_json::from_slice(&text)
        .map_err(|e| TaskError::Invalid(anyhow!("parsing {}: {e}", path.display())))
}

#[async_trait]
impl Pod for VmImagePod {
    type Agent = VmAgent;

    fn plan(&self, req: &CreateTaskRequest) -> Result<ContainerPlan, TaskError> {
        let ctx = self.shared.ctx()?;
        let bundle = Path::new(&req.bundle);
        let spec = read_spec(bundle)?;
        let netns = spec
            .pointer("/linux/namespaces")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|n| n.get("type").and_then(Value::as_str) == Some("network"))
            .and_then(|n| n.get("path")?.as_str())
            .map(PathBuf::from);
        let host_root = bundle.join(
            spec.pointer("/root/path")
                .and_then(Value::as_str)
                .unwrap_or("rootfs"),
        );
        let guest = crate::spec::GuestSpec {
            netns,
            cgroups_path: spec
                .pointer("/linux/cgroupsPath")
                .and_then(Value::as_str)
                .map(str::to_owned),
            host_root,
            binds: Vec::new(),
            spec,
        };
        crate::sandbox::refuse_host_network(&guest)?;
        if is_sandbox(&guest.spec) {
            return Ok(ContainerPlan {
                guest,
                vcpus: 0,
                memory_mib: 0,
            });
        }
        if let Some(other) = self.live_vm(&req.id) {
            return Err(TaskError::Invalid(anyhow!(
                "a husk-vm pod runs one VM, and container {other} is this pod's VM: a second \
                 app container cannot run beside it (run it in a pod of its own, or inside \
                 the VM)"
            )));
        }
        let (vcpus, memory_mib) = ctx
            .config
            .vm_size(&annotations_of(&guest.spec), limits_of(&guest.spec))
            .map_err(|e| TaskError::Invalid(e.into()))?;
        Ok(ContainerPlan {
            guest,
            vcpus,
            memory_mib,
        })
    }

    async fn share(
        &self,
        container_id: &str,
        req: &CreateTaskRequest,
        plan: &ContainerPlan,
    ) -> Result<(), TaskError> {
        if is_sandbox(&plan.guest.spec) {
            *self
                .shared
                .pod_netns
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = plan.guest.netns.clone();
            self.shared
                .members()
                .insert(container_id.to_owned(), Member::PlannedSandbox);
            return Ok(());
        }
        let mut mounts = self.mounts.lock().await;
        let (rootfs_mounts, bundle, host_root) = (
            req.rootfs.clone(),
            PathBuf::from(&req.bundle),
            plan.guest.host_root.clone(),
        );
        let checked = tokio::task::spawn_blocking(move || {
            let (rootfs, mounted) =
                crate::sandbox::mount_bundle_rootfs(&rootfs_mounts, &bundle, &host_root)?;
            match container_disk::inspect(&rootfs) {
                Ok(disk) => Ok((rootfs, mounted, disk)),
                Err(e) => {
                    if let Some(m) = &mounted {
                        crate::share::unmount(m);
                    }
                    Err(anyhow::Error::new(e))
                }
            }
        })
        .await
        .map_err(|e| TaskError::Host(anyhow!(e)))?;
        let (rootfs, mounted, disk) = checked.map_err(TaskError::Invalid)?;
        // Checked again now that the pod's state is held: two creates at
        // once must not both become its VM.
        let mut members = self.shared.members();
        if let Some(other) = live_vm_in(&members, container_id) {
            drop(members);
            if let Some(m) = &mounted {
                crate::share::unmount(m);
            }
            return Err(TaskError::Invalid(anyhow!(
                "a husk-vm pod runs one VM, and container {other} is this pod's VM"
            )));
        }
        tracing::info!(pod_id = %self.pod_id, container_id, disk = %disk.disk.display(), format = disk.format.as_str(), kernel_boot = disk.kernel.is_some(), "containerDisk checked");
        members.insert(
            container_id.to_owned(),
            Member::Prepared(Box::new(Prepared {
                rootfs,
                disk,
                spec: plan.guest.spec.clone(),
                // The pod's, where the pod has a sandbox; else the
                // container's own (ctr run).
                netns: self
                    .shared
                    .pod_netns
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone()
                    .or_else(|| plan.guest.netns.clone()),
                cgroups_path: plan.guest.cgroups_path.clone(),
                vcpus: plan.vcpus,
                memory_mib: plan.memory_mib,
            })),
        );
        mounts.insert(container_id.to_owned(), mounted);
        Ok(())
    }

    async fn unshare(&self, container_id: &str) {
        let member = self.shared.members().remove(container_id);
        if let Some(Member::Vm(vm)) = member {
            vm.remove().await;
        }
        if let Some(Some(mounted)) = self.mounts.lock().await.remove(container_id) {
            let _ = tokio::task::spawn_blocking(move || crate::share::unmount(&mounted)).await;
        }
    }

    async fn boot(&self, _plan: &ContainerPlan) -> Result<VmAgent, TaskError> {
        self.shared.ctx()?;
        Ok(VmAgent::new(self.shared.clone()))
    }

    /// Ends every VM and placeholder of the pod; what they left is removed
    /// when their containers are deleted.
    async fn stop(&self) {
        let (vms, placeholders): (Vec<_>, Vec<_>) = {
            let members = self.shared.members();
            let vms = members
                .values()
                .filter_map(|m| match m {
                    Member::Vm(v) => Some(v.clone()),
                    _ => None,
                })
                .collect();
            let placeholders = members
                .values()
                .filter_map(|m| match m {
                    Member::Sandbox(p) => Some(p.clone()),
                    _ => None,
                })
                .collect();
            (vms, placeholders)
        };
        for p in placeholders {
            p.signal(9);
        }
        for vm in vms {
            vm.kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), vm.wait()).await;
        }
    }

    fn timeouts(&self) -> PodTimeouts {
        match &self.shared.ctx {
            Ok(c) => c.timeouts,
            Err(_) => {
                let t = husk_config::Timeouts::default().tcg;
                PodTimeouts {
                    agent_call: Duration::from_secs(t.agent_call_secs),
                    kill_grace: Duration::from_secs(t.kill_grace_secs),
                }
            }
        }
    }
}

impl VmImagePod {
    fn live_vm(&self, except: &str) -> Option<String> {
        live_vm_in(&self.shared.members(), except)
    }
}

/// A VM container of the pod other than `except` that is being made or
/// still runs (one that exited may stay until kubelet removes it, and a
/// restart is created before that).
fn live_vm_in(members: &HashMap<String, Member>, except: &str) -> Option<String> {
    members.iter().find_map(|(id, m)| {
        let live = match m {
            Member::Prepared(_) | Member::Creating => true,
            Member::Vm(vm) => !vm.exited(),
            Member::PlannedSandbox | Member::Sandbox(_) => false,
        };
        (live && id != except).then(|| id.clone())
    })
}

/// After a husk-vm shim died (containerd runs `delete`): QEMU died with it
/// (PDEATHSIG). Removes the VM's files from the container's rootfs, its run
/// directory and the rootfs mount.
pub fn cleanup_after_crash(config: &Config, id: &str, bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    seed::remove_dir(&rootfs);
    crate::share::unmount(&rootfs);
    if husk_proto::is_safe_id(id, 128) {
        let run_dir = config.hypervisor.runtime_dir.join("vms").join(id);
        let _ = std::fs::remove_dir_all(run_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn the_placeholder_ends_as_pause_does() {
        let p = Placeholder::new();
        p.signal(1);
        assert!(p.exit.borrow().is_none(), "SIGHUP is ignored");
        p.signal(15);
        p.signal(9);
        assert_eq!(p.wait().await, 0);
        let k = Placeholder::new();
        k.signal(9);
        assert_eq!(k.wait().await, 137);
    }

    #[test]
    fn limits_come_from_the_spec() {
        let spec = json!({"linux": {"resources": {
            "cpu": {"quota": 200000, "period": 100000},
            "memory": {"limit": 2147483648i64}
        }}});
        assert_eq!(
            limits_of(&spec),
            VmLimits {
                cpu_quota: Some(200000),
                cpu_period: Some(100000),
                memory_bytes: Some(2 << 30)
            }
        );
        let unlimited =
            json!({"linux": {"resources": {"cpu": {"quota": -1}, "memory": {"limit": -1}}}});
        assert_eq!(limits_of(&unlimited), VmLimits::default());
    }

    fn bundle(spec: Value) -> tempfile::TempDir {
        let b = tempfile::tempdir().unwrap();
        std::fs::write(b.path().join("config.json"), spec.to_string()).unwrap();
        b
    }

    fn request(id: &str, b: &tempfile::TempDir) -> CreateTaskRequest {
        CreateTaskRequest {
            id: id.into(),
            bundle: b.path().display().to_string(),
            ..Default::default()
        }
    }

    #[test]
    fn a_second_vm_container_is_refused_and_an_exited_one_does_not_count() {
        let pod = VmImagePod::new("pod".into(), Ok(Config::default()));
        let net = json!([{"type": "network", "path": "/var/run/netns/cni-1"}]);
        let b = bundle(json!({"root": {"path": "rootfs"}, "linux": {"namespaces": net}}));
        pod.plan(&request("vm1", &b)).unwrap();
        pod.shared.members().insert("vm1".into(), Member::Creating);
        let e = pod.plan(&request("vm2", &b)).unwrap_err().to_string();
        assert!(e.contains("one VM") && e.contains("vm1"), "{e}");
        let sandbox = bundle(
            json!({"root": {"path": "rootfs"}, "linux": {"namespaces": net},
            "annotations": {CONTAINER_TYPE_ANNOTATION: "sandbox"}}),
        );
        pod.plan(&request("pod", &sandbox)).unwrap();
    }

    #[test]
    fn host_network_vm_pods_are_refused() {
        let pod = VmImagePod::new("pod".into(), Ok(Config::default()));
        let b =
            bundle(json!({"root": {"path": "rootfs"}, "linux": {"namespaces": [{"type": "pid"}]}}));
        let e = pod.plan(&request("vm1", &b)).unwrap_err().to_string();
        assert!(e.contains("hostNetwork"), "{e}");
    }
}
