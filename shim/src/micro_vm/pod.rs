//! [`MicroVmPod`]: the [`Pod`] of a micro-VM pod — one micro-VM per pod,
//! booted at its first container (or taken from the pool) and stopped
//! after its last, with the pod's network namespace, port-forward, host
//! cgroup and OOM score attached, and each container's files shared
//! through the pod's share tree.

use super::agent::VsockAgent;
use super::guest_spec::GuestSpec;
use super::pooled::{self, PodFit, PooledVm};
use super::running::{self, BootRequest, RunningVm};
use super::share::{ContainerShare, ShareTree};
use crate::task::error::TaskError;
use crate::task::pod::{ContainerPlan, Pod, PodTimeouts};
use anyhow::anyhow;
use async_trait::async_trait;
use containerd_shim_protos::api::CreateTaskRequest;
use husk_config::{Config, PoolShape};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A container of a micro-VM pod as planned: its spec for the guest and
/// the pod VM's size.
#[derive(Debug)]
pub struct MicroVmPlan {
    pub guest: GuestSpec,
    /// The pod VM's size (from the sandbox's annotations).
    pub vcpus: u32,
    pub memory_mib: u32,
}

impl ContainerPlan for MicroVmPlan {
    fn agent_spec(&self) -> &serde_json::Value {
        &self.guest.spec
    }
}

pub struct MicroVmPod {
    pod_id: String,
    /// The configuration and the pod's share tree under its runtime
    /// directory; every call fails with the error when it did not load.
    loaded: Result<(Config, ShareTree), Arc<husk_config::ConfigError>>,
    state: tokio::sync::Mutex<PodState>,
    /// A VM booted before the pod (the pool), until the pod's boot takes
    /// it.
    pooled: tokio::sync::Mutex<Option<PooledVm>>,
}

#[derive(Default)]
struct PodState {
    vm: Option<RunningVm>,
    /// What was shared for each container, and the bundle rootfs the shim
    /// mounted for it (None when the spec's own root was shared).
    shares: HashMap<String, (ContainerShare, Option<PathBuf>)>,
    /// The highest `oom_score_adj` a container of the pod asked for: the
    /// VM's processes have it.
    oom_score_adj: Option<i32>,
}

impl MicroVmPod {
    pub fn new(pod_id: String, config: Result<Config, husk_config::ConfigError>) -> Self {
        let loaded = config.map_err(Arc::new).map(|c| {
            let tree = ShareTree::new(&c.hypervisor.runtime_dir, &pod_id);
            (c, tree)
        });
        Self {
            pod_id,
            loaded,
            state: tokio::sync::Mutex::default(),
            pooled: tokio::sync::Mutex::default(),
        }
    }

    fn config(&self) -> Result<&Config, TaskError> {
        self.loaded
            .as_ref()
            .map(|(c, _)| c)
            .map_err(|e| TaskError::Config(e.clone()))
    }

    fn tree(&self) -> Result<&ShareTree, TaskError> {
        self.loaded
            .as_ref()
            .map(|(_, t)| t)
            .map_err(|e| TaskError::Config(e.clone()))
    }

    /// A pod whose VM of `shape` is booted before the pod exists, under
    /// the id `pool_id` (a pool member's).
    pub async fn preboot(
        pool_id: String,
        config: Config,
        shape: PoolShape,
    ) -> Result<Self, TaskError> {
        let pod = MicroVmPod::new(pool_id.clone(), Ok(config));
        let vm = pooled::preboot(&pool_id, pod.config()?, shape, pod.tree()?).await?;
        *pod.pooled.lock().await = Some(vm);
        Ok(pod)
    }

    /// Whether the pooled VM still runs.
    pub async fn pooled_vm_alive(&self) -> bool {
        self.pooled
            .lock()
            .await
            .as_mut()
            .is_some_and(PooledVm::alive)
    }

    /// The pod `pod_id` takes this pooled VM: the share tree is named for
    /// it, the VM's run and log directories take its id (nothing restarts).
    pub fn adopt(&mut self, pod_id: &str) -> Result<(), TaskError> {
        let Some(p) = self.pooled.get_mut().as_mut() else {
            return Err(TaskError::Host(anyhow!("no pooled VM to adopt")));
        };
        let Ok((_, tree)) = self.loaded.as_mut() else {
            return Err(TaskError::Host(anyhow!("no configuration")));
        };
        tree.adopt(pod_id).map_err(|e| {
            TaskError::Host(anyhow::Error::new(e).context("adopting the share tree"))
        })?;
        p.running
            .vm
            .rename(pod_id)
            .map_err(|e| TaskError::Host(anyhow::Error::new(e).context("adopting the VM")))?;
        tracing::info!(from = %self.pod_id, pod_id, "pool VM taken");
        self.pod_id = pod_id.to_owned();
        Ok(())
    }

    /// The pooled VM, when it fits `plan`, made the pod's; None when there
    /// is none or it does not fit (it is stopped then).
    async fn take_pooled(
        &self,
        plan: &MicroVmPlan,
    ) -> Option<Result<(RunningVm, VsockAgent), TaskError>> {
        let p = self.pooled.lock().await.take()?;
        let bundle = &plan.guest.bundle;
        let fit = PodFit {
            pod_id: &self.pod_id,
            vcpus: plan.vcpus,
            memory_mib: plan.memory_mib,
            netns: bundle.netns.clone(),
            cgroups_path: bundle.cgroups_path.as_deref(),
            oom_score_adj: bundle.oom_score_adj(),
            spec: &plan.guest.spec,
        };
        if !p.fits(&fit) {
            tracing::info!(pod_id = %self.pod_id, shape = %p.shape.name(), vcpus = plan.vcpus, memory_mib = plan.memory_mib, "the pooled VM does not fit the pod; booting cold");
            p.stop(&self.pod_id).await;
            return None;
        }
        Some(pooled::hand_out(p, &fit).await)
    }

    /// Raises the VM's OOM score to a later container's, when higher: the
    /// VM holds that container's memory too.
    fn raise_oom_score(&self, state: &mut PodState, score: Option<i32>) {
        let (Some(score), Some(running)) = (score, state.vm.as_mut()) else {
            return;
        };
        if state.oom_score_adj.is_some_and(|s| s >= score) {
            return;
        }
        match running.vm.set_oom_score_adj(score) {
            Ok(()) => state.oom_score_adj = Some(score),
            Err(e) => {
                tracing::warn!(pod_id = %self.pod_id, score, %e, "cannot raise the VM's OOM score")
            }
        }
    }
}

#[async_trait]
impl Pod for MicroVmPod {
    type Agent = VsockAgent;
    type Plan = MicroVmPlan;

    fn plan(&self, req: &CreateTaskRequest) -> Result<MicroVmPlan, TaskError> {
        let config = self.config()?;
        let guest = super::guest_spec::prepare(Path::new(&req.bundle), &req.id)
            .map_err(TaskError::Invalid)?;
        guest
            .bundle
            .refuse_host_network()
            .map_err(|e| TaskError::Invalid(e.into()))?;
        if let Some(p) = &guest.bundle.cgroups_path {
            crate::host::cgroup::host_path(p).map_err(|e| TaskError::Invalid(e.into()))?;
        }
        // The pod's VM size, from the sandbox's annotations; checked here so
        // that a bad one fails RunPodSandbox before anything is made.
        let (vcpus, memory_mib) = config
            .pod_size(&guest.bundle.annotations())
            .map_err(|e| TaskError::Invalid(e.into()))?;
        Ok(MicroVmPlan {
            guest,
            vcpus,
            memory_mib,
        })
    }

    async fn share(
        &self,
        container_id: &str,
        req: &CreateTaskRequest,
        plan: &MicroVmPlan,
    ) -> Result<(), TaskError> {
        let tree = self.tree()?.clone();
        let mut state = self.state.lock().await;
        let had_vm = state.vm.is_some();
        let (id, mounts, bundle) = (
            container_id.to_owned(),
            req.rootfs.clone(),
            PathBuf::from(&req.bundle),
        );
        let (host_root, binds) = (
            plan.guest.bundle.host_root.clone(),
            plan.guest.binds.clone(),
        );
        let is_sandbox = plan.guest.bundle.is_sandbox();
        let shared = tokio::task::spawn_blocking(move || {
            share_container(&tree, &id, &mounts, &bundle, &host_root, &binds, is_sandbox)
        })
        .await
        .map_err(|e| TaskError::Host(anyhow!(e)))?;
        match shared {
            Ok(record) => {
                state.shares.insert(container_id.to_owned(), record);
                self.raise_oom_score(&mut state, plan.guest.bundle.oom_score_adj());
                Ok(())
            }
            Err(e) => {
                if !had_vm && state.shares.is_empty() {
                    if let Ok(tree) = self.tree() {
                        tree.remove();
                    }
                }
                Err(TaskError::Invalid(e))
            }
        }
    }

    async fn unshare(&self, container_id: &str) {
        let Ok(tree) = self.tree().cloned() else {
            return;
        };
        let mut state = self.state.lock().await;
        let record = state.shares.remove(container_id);
        let last = state.shares.is_empty() && state.vm.is_none();
        let _ = tokio::task::spawn_blocking(move || {
            if let Some((share, mounted)) = record {
                tree.unshare(share);
                if let Some(m) = mounted {
                    crate::host::mounts::unmount(&m);
                }
            }
            if last {
                tree.remove();
            }
        })
        .await;
    }

    async fn boot(&self, plan: &MicroVmPlan) -> Result<VsockAgent, TaskError> {
        let mut config = self.config()?.clone();
        config.hypervisor.vcpus = plan.vcpus;
        config.hypervisor.memory_mib = plan.memory_mib;
        let score = plan.guest.bundle.oom_score_adj();
        if let Some(handed_out) = self.take_pooled(plan).await {
            let (mut running, agent) = handed_out?;
            running.metrics = running::serve_metrics(&config, &self.pod_id, &running.vm);
            let mut state = self.state.lock().await;
            state.vm = Some(running);
            state.oom_score_adj = score;
            return Ok(agent);
        }
        super::console::ask_guest_for_console(&mut config);
        let mut state = self.state.lock().await;
        let bundle = &plan.guest.bundle;
        let booted = running::boot(
            &config,
            BootRequest {
                vm_id: &self.pod_id,
                shared_dir: self.tree()?.shared_dir(),
                netns: bundle.netns.as_deref(),
                cgroups_path: bundle.cgroups_path.as_deref(),
                oom_score_adj: score,
            },
        )
        .await;
        let runtime_dir = &config.hypervisor.runtime_dir;
        crate::telemetry::node::record_boot(runtime_dir, &self.pod_id, booted.is_ok());
        let mut running = booted?;
        let client = match running.vm.agent().await {
            Ok(c) => c,
            Err(e) => {
                running.stop(&self.pod_id).await;
                return Err(TaskError::Host(
                    anyhow::Error::new(e).context("connecting to the agent"),
                ));
            }
        };
        running.metrics = running::serve_metrics(&config, &self.pod_id, &running.vm);
        state.vm = Some(running);
        state.oom_score_adj = score;
        Ok(VsockAgent::new(client))
    }

    async fn stop(&self) {
        if let Some(p) = self.pooled.lock().await.take() {
            p.stop(&self.pod_id).await;
        }
        let mut state = self.state.lock().await;
        if let Some(vm) = state.vm.take() {
            vm.stop(&self.pod_id).await;
        }
        if state.shares.is_empty() {
            if let Ok(tree) = self.tree().cloned() {
                let _ = tokio::task::spawn_blocking(move || tree.remove()).await;
            }
        }
    }

    fn timeouts(&self) -> PodTimeouts {
        PodTimeouts::of(self.loaded.as_ref().ok().map(|(c, _)| c))
    }
}

/// Mounts the container's rootfs and shares it and its binds with the
/// guest; refuses a containerDisk (a VM image) given to a micro-VM pod. On
/// error nothing of it is left.
fn share_container(
    tree: &ShareTree,
    id: &str,
    mounts: &[containerd_shim_protos::api::Mount],
    bundle: &Path,
    host_root: &Path,
    binds: &[super::guest_spec::HostBind],
    is_sandbox: bool,
) -> anyhow::Result<(ContainerShare, Option<PathBuf>)> {
    tree.create()?;
    let (rootfs, mounted) = crate::bundle::mount_rootfs(mounts, bundle, host_root)?;
    let undo = |e: anyhow::Error| {
        if let Some(m) = &mounted {
            crate::host::mounts::unmount(m);
        }
        e
    };
    if !is_sandbox && crate::bundle::container_disk::looks_like_container_disk(&rootfs) {
        return Err(undo(anyhow!(
            "the image is a KubeVirt containerDisk (a VM disk under /disk/ and nothing a \
             container can run): run it as a VM with runtimeClassName: husk-vm (containerd \
             runtime {})",
            crate::VM_RUNTIME_ID
        )));
    }
    match tree.share_container(id, &rootfs, binds) {
        Ok(share) => Ok((share, mounted)),
        Err(e) => Err(undo(e.into())),
    }
}

/// After a shim died (containerd runs `delete`): its VM processes died
/// with it (PDEATHSIG). Unmounts and removes what it left for container
/// `id` of pod `pod_id`: the whole pod's when `id` is the pod's own.
pub fn cleanup_after_crash(config: &Config, pod_id: &str, id: &str, bundle: &Path) {
    let runtime_dir = &config.hypervisor.runtime_dir;
    let tree = ShareTree::new(runtime_dir, pod_id);
    tree.remove_container(id);
    crate::host::mounts::unmount(&bundle.join("rootfs"));
    if id != pod_id {
        return;
    }
    tree.remove();
    let vm_dir = runtime_dir.join("vms").join(pod_id);
    if vm_dir.exists() && crate::host::mounts::mounts_under(&vm_dir).is_empty() {
        let _ = std::fs::remove_dir_all(&vm_dir);
    }
    // The pod cgroup the VM's processes were in, now empty.
    let cgroups_path = crate::bundle::BundleSpec::read(bundle)
        .ok()
        .and_then(|b| b.cgroups_path);
    if let Some(rel) = cgroups_path
        .as_deref()
        .and_then(|p| crate::host::cgroup::host_path(p).ok())
    {
        crate::host::cgroup::HostCgroup::existing(&rel).remove();
    }
}
