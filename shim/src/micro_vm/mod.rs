//! [`VmPod`]: the [`Pod`] the shim runs — one micro-VM per pod, booted at
//! its first container and stopped after its last, with the pod's network
//! namespace, port-forward and host cgroup attached, and each container's
//! files shared through the pod's share tree (`share`).

use crate::agent::VsockAgent;
use crate::error::TaskError;
use crate::network::PodNetwork;
use crate::pod::{ContainerPlan, Pod, PodTimeouts};
use crate::share::{ContainerShare, ShareTree};
use anyhow::{anyhow, Context};
use async_trait::async_trait;
use containerd_shim_protos::api::{CreateTaskRequest, Mount};
use husk_config::Config;
use husk_hypervisor::{MicroVm, NetDevice, VmSpec};
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct VmPod {
    pod_id: String,
    /// The configuration and the pod's share tree under its runtime
    /// directory; every call fails with the error when it did not load.
    loaded: Result<(Config, ShareTree), Arc<husk_config::ConfigError>>,
    state: tokio::sync::Mutex<PodState>,
    /// A VM booted before the pod (the pool), until the pod's boot takes
    /// it (`sandbox_pool`).
    pooled: tokio::sync::Mutex<Option<pool::PooledVm>>,
}

#[path = "sandbox_pool.rs"]
mod pool;

#[derive(Default)]
struct PodState {
    vm: Option<RunningVm>,
    /// What was shared for each container, and the bundle rootfs the shim
    /// mounted for it (None when the spec's own root was shared).
    shares: HashMap<String, (ContainerShare, Option<PathBuf>)>,
}

/// A booted VM and what is attached to it.
struct RunningVm {
    vm: MicroVm,
    network: Option<PodNetwork>,
    /// The namespace's localhost carried into the guest (port-forward).
    forward: Option<crate::portforward::LocalForward>,
    /// The pod's cgroup on the host, holding the VM's processes.
    cgroup: Option<crate::cgroup::HostCgroup>,
    /// The pod's metrics socket (`telemetry::pod`).
    metrics: Option<crate::telemetry::pod::PodMetricsServer>,
}

impl VmPod {
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
}

#[async_trait]
impl Pod for VmPod {
    type Agent = VsockAgent;

    fn plan(&self, req: &CreateTaskRequest) -> Result<ContainerPlan, TaskError> {
        let config = self.config()?;
        let guest =
            crate::spec::prepare(Path::new(&req.bundle), &req.id).map_err(TaskError::Invalid)?;
        refuse_host_network(&guest)?;
        if let Some(p) = &guest.cgroups_path {
            crate::cgroup::host_path(p).map_err(|e| TaskError::Invalid(e.into()))?;
        }
        // The pod's VM size, from the sandbox's annotations; checked here so
        // that a bad one fails RunPodSandbox before anything is made.
        let annotations: HashMap<String, String> = guest
            .spec
            .get("annotations")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        let (vcpus, memory_mib) = config
            .pod_size(&annotations)
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
        let tree = self.tree()?.clone();
        let mut state = self.state.lock().await;
        let (id, mounts, bundle) = (
            container_id.to_owned(),
            req.rootfs.clone(),
            PathBuf::from(&req.bundle),
        );
        let (host_root, binds) = (plan.guest.host_root.clone(), plan.guest.binds.clone());
        let had_vm = state.vm.is_some();
        let is_sandbox = plan
            .guest
            .spec
            .pointer("/annotations/io.kubernetes.cri.container-type")
            .and_then(|t| t.as_str())
            == Some("sandbox");
        let shared = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            tree.create()?;
            let (rootfs, mounted) = mount_bundle_rootfs(&mounts, &bundle, &host_root)?;
            if !is_sandbox && crate::vmpod::container_disk::looks_like_container_disk(&rootfs) {
                if let Some(m) = &mounted {
                    crate::share::unmount(m);
                }
                return Err(anyhow!(
                    "the image is a KubeVirt containerDisk (a VM disk under /disk/ and nothing a \
                     container can run): run it as a VM with runtimeClassName: husk-vm (containerd \
                     runtime {})",
                    crate::VM_RUNTIME_ID
                ));
            }
            match tree.share_container(&id, &rootfs, &binds) {
                Ok(share) => Ok((share, mounted)),
                Err(e) => {
                    if let Some(m) = &mounted {
                        crate::share::unmount(m);
                    }
                    Err(e.into())
                }
            }
        })
        .await
        .map_err(|e| TaskError::Host(anyhow!(e)))?;
        match shared {
            Ok(record) => {
                state.shares.insert(container_id.to_owned(), record);
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
                    crate::share::unmount(&m);
                }
            }
            if last {
                tree.remove();
            }
        })
        .await;
    }

    async fn boot(&self, plan: &ContainerPlan) -> Result<VsockAgent, TaskError> {
        if let Some(handed_out) = self.take_pooled(plan).await {
            let (mut running, agent) = handed_out?;
            let mut config = self.config()?.clone();
            config.hypervisor.vcpus = plan.vcpus;
            config.hypervisor.memory_mib = plan.memory_mib;
            running.metrics = serve_metrics(&config, &self.pod_id, &running.vm);
            self.state.lock().await.vm = Some(running);
            return Ok(agent);
        }
        let mut config = self.config()?.clone();
        config.hypervisor.vcpus = plan.vcpus;
        config.hypervisor.memory_mib = plan.memory_mib;
        crate::console::ask_guest_for_console(&mut config);
        let shared_dir = self.tree()?.shared_dir();
        let mut state = self.state.lock().await;
        let booted = boot(
            &config,
            &self.pod_id,
            shared_dir,
            plan.guest.netns.as_deref(),
            plan.guest.cgroups_path.as_deref(),
        )
        .await;
        let runtime_dir = &config.hypervisor.runtime_dir;
        crate::telemetry::node::record_boot(runtime_dir, &self.pod_id, booted.is_ok());
        let mut running = booted?;
        let client =
            running.vm.agent().await.map_err(|e| {
                TaskError::Host(anyhow::Error::new(e).context("connecting to the agent"))
            });
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                running.stop(&self.pod_id).await;
                return Err(e);
            }
        };
        running.metrics = serve_metrics(&config, &self.pod_id, &running.vm);
        state.vm = Some(running);
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
        let t = match &self.loaded {
            Ok((c, _)) => {
                match husk_hypervisor::resolve_accelerator(c.hypervisor.accelerator).accelerator {
                    husk_hypervisor::Accelerator::Kvm => c.timeouts.kvm,
                    husk_hypervisor::Accelerator::Tcg => c.timeouts.tcg,
                }
            }
            Err(_) => husk_config::Timeouts::default().tcg,
        };
        PodTimeouts {
            agent_call: Duration::from_secs(t.agent_call_secs),
            kill_grace: Duration::from_secs(t.kill_grace_secs),
        }
    }
}

/// A spec without a network namespace asks for the host's network
/// (`hostNetwork: true`, `ctr run --net-host`). A VM cannot join the
/// host's network namespace, and a workload silently given a private one
/// would not be reachable where it expects: refused, as other VM runtimes
/// do.
pub(crate) fn refuse_host_network(guest: &crate::spec::GuestSpec) -> Result<(), TaskError> {
    let has_network = guest
        .spec
        .pointer("/linux/namespaces")
        .and_then(|n| n.as_array())
        .is_some_and(|n| {
            n.iter()
                .any(|ns| ns.get("type").and_then(|t| t.as_str()) == Some("network"))
        });
    if guest.netns.is_some() || has_network {
        return Ok(());
    }
    Err(TaskError::Invalid(anyhow!(
        "linux.namespaces: no network namespace, so the host's network is asked for \
         (hostNetwork: true or --net-host); husk runs the pod in a VM, which cannot \
         share the host's network namespace: run host-network pods with runc"
    )))
}

/// Mounts containerd's rootfs mounts at `<bundle>/rootfs` as runc's shim
/// does; with none, the spec's own root (`ctr run --rootfs`) is shared as
/// it is. Returns the directory to share and what was mounted.
pub(crate) fn mount_bundle_rootfs(
    mounts: &[Mount],
    bundle: &Path,
    host_root: &Path,
) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    if mounts.is_empty() {
        return Ok((host_root.to_owned(), None));
    }
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
    for m in mounts {
        let fstype = Some(m.type_.as_str()).filter(|s| !s.is_empty());
        let source = Some(m.source.as_str()).filter(|s| !s.is_empty());
        if let Err(e) = containerd_shim::mount::mount_rootfs(fstype, source, &m.options, &rootfs) {
            crate::share::unmount(&rootfs);
            return Err(anyhow!("mounting the rootfs at {}: {e}", rootfs.display()));
        }
    }
    Ok((rootfs.clone(), Some(rootfs)))
}

/// Boots the VM `vm_id` (sized in `config`) sharing `shared_dir`, with a
/// NIC on the pod network `netns` when there is one. On error nothing of
/// it is left; the share tree is the caller's.
async fn boot(
    config: &Config,
    vm_id: &str,
    shared_dir: PathBuf,
    netns: Option<&Path>,
    cgroups_path: Option<&str>,
) -> Result<RunningVm, TaskError> {
    // The pod's cgroup, which the VM's processes start in.
    let cgroup = match cgroups_path {
        Some(p) => Some(make_cgroup(vm_id, p).await?),
        None => None,
    };
    let network = match netns {
        Some(ns) => {
            let ns = ns.to_owned();
            let attached = tokio::task::spawn_blocking(move || crate::network::attach(&ns))
                .await
                .map_err(|e| TaskError::Host(anyhow!(e)))
                .and_then(|r| {
                    r.map_err(|e| TaskError::Host(anyhow::Error::new(e).context("network attach")))
                });
            match attached {
                Ok(n) => n,
                Err(e) => {
                    if let Some(c) = cgroup {
                        c.remove();
                    }
                    return Err(e);
                }
            }
        }
        None => None,
    };
    let spec = VmSpec {
        id: vm_id.to_owned(),
        shared_dir,
        nets: network
            .iter()
            .map(|n| NetDevice {
                tap: n.tap.as_raw_fd(),
                mac: n.mac.clone(),
            })
            .collect(),
        cgroup_procs: cgroup
            .as_ref()
            .map(crate::cgroup::HostCgroup::procs_files)
            .unwrap_or_default(),
    };
    let vm = match MicroVm::start(config, spec).await {
        Ok(vm) => vm,
        Err(e) => {
            if let Some(n) = network {
                let _ = tokio::task::spawn_blocking(move || n.detach()).await;
            }
            if let Some(c) = cgroup {
                c.remove();
            }
            return Err(TaskError::Host(
                anyhow::Error::new(e).context("starting the VM"),
            ));
        }
    };
    let mut running = RunningVm {
        vm,
        network,
        forward: None,
        cgroup,
        metrics: None,
    };
    if let Some(n) = &running.network {
        let configured = async {
            let mut agent = running.vm.agent().await?;
            agent
                .configure_network(n.guest.clone())
                .await
                .map_err(|s| anyhow!("{}", crate::agent::sanitize(s.message())))?;
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = configured {
            running.stop(vm_id).await;
            return Err(TaskError::Host(e.context("configuring the guest network")));
        }
        tracing::info!(pod_id = vm_id, mac = %n.mac, netns = %n.netns.display(), "pod network connected");
        match crate::portforward::start(&n.netns, running.vm.agent_socket()).await {
            Ok(f) => running.forward = Some(f),
            // The pod works without it; port-forward does not.
            Err(e) => tracing::warn!(
                pod_id = vm_id,
                "port-forward into the pod is unavailable: {e}"
            ),
        }
    }
    Ok(running)
}

impl RunningVm {
    async fn stop(mut self, pod_id: &str) {
        self.metrics.take();
        if let Some(f) = self.forward.take() {
            let _ = tokio::task::spawn_blocking(move || f.stop()).await;
        }
        self.vm.stop().await;
        if let Some(c) = self.cgroup.take() {
            c.remove();
        }
        if let Some(n) = self.network.take() {
            let _ = tokio::task::spawn_blocking(move || n.detach()).await;
        }
        tracing::info!(pod_id, "VM stopped");
    }
}

/// Makes the pod's cgroup that `spec_path` names, for the VM to start in.
/// A pod whose cgroup cannot be made does not start: its limits would not
/// hold.
async fn make_cgroup(vm_id: &str, spec_path: &str) -> Result<crate::cgroup::HostCgroup, TaskError> {
    let rel = crate::cgroup::host_path(spec_path).map_err(|e| TaskError::Invalid(e.into()))?;
    let shown = rel.clone();
    let cgroup = tokio::task::spawn_blocking(move || crate::cgroup::HostCgroup::create(&rel))
        .await
        .map_err(|e| TaskError::Host(anyhow!(e)))?
        .map_err(|e| {
            TaskError::Host(anyhow::Error::new(e).context(format!(
                "making the pod cgroup {} ({spec_path})",
                shown.display()
            )))
        })?;
    tracing::info!(pod_id = vm_id, cgroups_path = spec_path, cgroup = %shown.display(), "the VM starts in the pod cgroup");
    Ok(cgroup)
}

/// Serves the pod's metrics on its socket; a failure is logged (the pod
/// runs without them).
fn serve_metrics(
    config: &Config,
    pod_id: &str,
    vm: &MicroVm,
) -> Option<crate::telemetry::pod::PodMetricsServer> {
    let (_, backend) = husk_hypervisor::resolve_vmm(&config.hypervisor);
    let facts = crate::telemetry::pod::PodFacts {
        pod_id: pod_id.to_owned(),
        vcpus: config.hypervisor.vcpus,
        memory_mib: config.hypervisor.memory_mib,
        accelerator: vm.accelerator().to_string(),
        backend: backend.backend.as_str().to_owned(),
        timings: vm.timings(),
        pids: vm.pids(),
        agent_socket: vm.agent_socket(),
        ready_at: std::time::SystemTime::now(),
    };
    let socket = crate::telemetry::pod_socket(&config.hypervisor.runtime_dir, pod_id);
    match crate::telemetry::pod::PodMetricsServer::start(&socket, facts) {
        Ok(server) => Some(server),
        Err(e) => {
            tracing::warn!(pod_id, %e, "the pod's metrics are unavailable");
            None
        }
    }
}

/// After a shim died (containerd runs `delete`): its VM processes died
/// with it (PDEATHSIG). Unmounts and removes what it left for container
/// `id` of pod `pod_id`: the whole pod's when `id` is the pod's own.
pub fn cleanup_after_crash(config: &Config, pod_id: &str, id: &str, bundle: &Path) {
    let runtime_dir = &config.hypervisor.runtime_dir;
    let tree = ShareTree::new(runtime_dir, pod_id);
    tree.remove_container(id);
    crate::share::unmount(&bundle.join("rootfs"));
    if id != pod_id {
        return;
    }
    tree.remove();
    let vm_dir = runtime_dir.join("vms").join(pod_id);
    if vm_dir.exists() && crate::share::mounts_under(&vm_dir).is_empty() {
        let _ = std::fs::remove_dir_all(&vm_dir);
    }
    // The pod cgroup the VM's processes were in, now empty.
    let cgroups_path = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|s| s.pointer("/linux/cgroupsPath")?.as_str().map(str::to_owned));
    if let Some(rel) = cgroups_path
        .as_deref()
        .and_then(|p| crate::cgroup::host_path(p).ok())
    {
        crate::cgroup::HostCgroup::existing(&rel).remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest(namespaces: serde_json::Value) -> crate::spec::GuestSpec {
        let bundle = tempfile::tempdir().unwrap();
        let spec = serde_json::json!({
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"]},
            "linux": {"namespaces": namespaces}
        });
        std::fs::write(bundle.path().join("config.json"), spec.to_string()).unwrap();
        crate::spec::prepare(bundle.path(), "c1").unwrap()
    }

    #[test]
    fn host_network_pods_are_refused_with_the_reason() {
        let host = guest(serde_json::json!([{"type": "pid"}, {"type": "mount"}]));
        let e = refuse_host_network(&host).unwrap_err();
        assert_eq!(
            e.code(),
            containerd_shim_protos::ttrpc::Code::INVALID_ARGUMENT
        );
        let text = e.to_string();
        assert!(
            text.contains("hostNetwork") && text.contains("runc"),
            "{text}"
        );
        // A pod's CNI namespace, and a new one (ctr run), are the guest's.
        let cni = guest(serde_json::json!([{"type": "network", "path": "/var/run/netns/cni-1"}]));
        refuse_host_network(&cni).unwrap();
        let new = guest(serde_json::json!([{"type": "network"}]));
        refuse_host_network(&new).unwrap();
    }
}
