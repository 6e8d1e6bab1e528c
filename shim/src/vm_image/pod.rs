//! [`VmImagePod`]: the [`Pod`] of a VM-image pod. The sandbox is a
//! placeholder (the pod's network namespace is CNI's and needs no
//! process); the one app container is the VM, its image checked as a
//! containerDisk when it is shared, its VM made at create
//! ([`super::container`]).

use super::agent::VmAgent;
use super::context::PodContext;
use super::launch::Prepared;
use super::members::{live_vm_in, Member, Shared};
use crate::bundle::container_disk;
use crate::bundle::BundleSpec;
use crate::task::error::TaskError;
use crate::task::pod::{ContainerPlan, Pod, PodTimeouts};
use anyhow::anyhow;
use async_trait::async_trait;
use containerd_shim_protos::api::CreateTaskRequest;
use husk_config::Config;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A container of a VM-image pod as planned: its bundle, and the VM's
/// size (none for the sandbox).
#[derive(Debug)]
pub struct VmImagePlan {
    pub bundle: BundleSpec,
    pub vcpus: u32,
    pub memory_mib: u32,
}

impl ContainerPlan for VmImagePlan {
    fn agent_spec(&self) -> &serde_json::Value {
        &self.bundle.spec
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
        let ctx = config.map_err(Arc::new).map(|config| PodContext {
            pod_id: pod_id.clone(),
            accelerator: husk_hypervisor::resolve_accelerator(config.hypervisor.accelerator)
                .accelerator,
            timeouts: PodTimeouts::of(Some(&config)),
            config,
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

    fn live_vm(&self, except: &str) -> Option<String> {
        live_vm_in(&self.shared.members(), except)
    }

    #[cfg(test)]
    pub(super) fn shared(&self) -> &Shared {
        &self.shared
    }
}

fn one_vm(other: &str) -> TaskError {
    TaskError::Invalid(anyhow!(
        "a husk-vm pod runs one VM, and container {other} is this pod's VM: a second app \
         container cannot run beside it (run it in a pod of its own, or inside the VM)"
    ))
}

#[async_trait]
impl Pod for VmImagePod {
    type Agent = VmAgent;
    type Plan = VmImagePlan;

    fn plan(&self, req: &CreateTaskRequest) -> Result<VmImagePlan, TaskError> {
        let ctx = self.shared.ctx()?;
        let bundle =
            BundleSpec::read(Path::new(&req.bundle)).map_err(|e| TaskError::Invalid(e.into()))?;
        bundle
            .refuse_host_network()
            .map_err(|e| TaskError::Invalid(e.into()))?;
        if bundle.is_sandbox() {
            return Ok(VmImagePlan {
                bundle,
                vcpus: 0,
                memory_mib: 0,
            });
        }
        if let Some(other) = self.live_vm(&req.id) {
            return Err(one_vm(&other));
        }
        let (vcpus, memory_mib) = ctx
            .config
            .vm_size(&bundle.annotations(), bundle.limits())
            .map_err(|e| TaskError::Invalid(e.into()))?;
        Ok(VmImagePlan {
            bundle,
            vcpus,
            memory_mib,
        })
    }

    async fn share(
        &self,
        container_id: &str,
        req: &CreateTaskRequest,
        plan: &VmImagePlan,
    ) -> Result<(), TaskError> {
        if plan.bundle.is_sandbox() {
            *self.shared.pod_netns() = plan.bundle.netns.clone();
            self.shared
                .members()
                .insert(container_id.to_owned(), Member::PlannedSandbox);
            return Ok(());
        }
        let mut mounts = self.mounts.lock().await;
        let (rootfs_mounts, bundle, host_root) = (
            req.rootfs.clone(),
            PathBuf::from(&req.bundle),
            plan.bundle.host_root.clone(),
        );
        let checked = tokio::task::spawn_blocking(move || {
            let (rootfs, mounted) =
                crate::bundle::mount_rootfs(&rootfs_mounts, &bundle, &host_root)?;
            match container_disk::inspect(&rootfs) {
                Ok(disk) => Ok((rootfs, mounted, disk)),
                Err(e) => {
                    if let Some(m) = &mounted {
                        crate::host::mounts::unmount(m);
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
                crate::host::mounts::unmount(m);
            }
            return Err(one_vm(&other));
        }
        tracing::info!(pod_id = %self.pod_id, container_id, disk = %disk.disk.display(), format = disk.format.as_str(), virtual_size = disk.virtual_size, kernel_boot = disk.kernel.is_some(), "containerDisk checked");
        // The pod's network, where the pod has a sandbox; else the
        // container's own (ctr run).
        let netns = self
            .shared
            .pod_netns()
            .clone()
            .or_else(|| plan.bundle.netns.clone());
        members.insert(
            container_id.to_owned(),
            Member::Prepared(Box::new(Prepared {
                rootfs,
                disk,
                bundle: plan.bundle.clone(),
                netns,
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
            let _ =
                tokio::task::spawn_blocking(move || crate::host::mounts::unmount(&mounted)).await;
        }
    }

    async fn boot(&self, _plan: &VmImagePlan) -> Result<VmAgent, TaskError> {
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
            Err(_) => PodTimeouts::of(None),
        }
    }
}

/// After a husk-vm shim died (containerd runs `delete`): QEMU died with it
/// (PDEATHSIG). Removes the VM's files from the container's rootfs, its run
/// directory and the rootfs mount.
pub fn cleanup_after_crash(config: &Config, id: &str, bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    super::seed::remove_dir(&rootfs);
    crate::host::mounts::unmount(&rootfs);
    if husk_proto::is_safe_id(id, 128) {
        let run_dir = config.hypervisor.runtime_dir.join("vms").join(id);
        let _ = std::fs::remove_dir_all(run_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

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
        pod.shared()
            .members()
            .insert("vm1".into(), Member::Creating);
        let e = pod.plan(&request("vm2", &b)).unwrap_err().to_string();
        assert!(e.contains("one VM") && e.contains("vm1"), "{e}");
        let sandbox = bundle(
            json!({"root": {"path": "rootfs"}, "linux": {"namespaces": net},
            "annotations": {crate::bundle::CONTAINER_TYPE_ANNOTATION: "sandbox"}}),
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
