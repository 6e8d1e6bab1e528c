//! [`RunningVm`]: a micro-VM pod's booted VM and what the pod attached to
//! it — the pod network (TAP and tc redirects), port-forward, the pod's
//! host cgroup, the metrics socket — and the cold boot that makes one
//! ([`boot`]). A pooled VM becomes one when a pod takes it (`pooled`).

use super::portforward::{self, LocalForward};
use crate::host::cgroup::HostCgroup;
use crate::host::network::{self, PodNetwork};
use crate::task::agent::sanitize;
use crate::task::error::TaskError;
use crate::telemetry::pod::{PodFacts, PodMetricsServer};
use anyhow::anyhow;
use husk_config::Config;
use husk_hypervisor::{MicroVm, NetDevice, VmSpec};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A booted VM and what is attached to it.
pub struct RunningVm {
    pub vm: MicroVm,
    pub network: Option<PodNetwork>,
    /// The namespace's localhost carried into the guest (port-forward).
    pub forward: Option<LocalForward>,
    /// The pod's cgroup on the host, holding the VM's processes.
    pub cgroup: Option<HostCgroup>,
    /// The pod's metrics socket (`telemetry::pod`).
    pub metrics: Option<PodMetricsServer>,
}

/// What a cold boot is given.
pub struct BootRequest<'a> {
    pub vm_id: &'a str,
    pub shared_dir: PathBuf,
    pub netns: Option<&'a Path>,
    pub cgroups_path: Option<&'a str>,
    pub oom_score_adj: Option<i32>,
}

/// Boots the VM `r.vm_id` (sized in `config`) sharing `r.shared_dir`, with
/// a NIC on the pod network `r.netns` when there is one, inside the pod's
/// cgroup. On error nothing of it is left; the share tree is the caller's.
pub async fn boot(config: &Config, r: BootRequest<'_>) -> Result<RunningVm, TaskError> {
    let vm_id = r.vm_id;
    let cgroup = match r.cgroups_path {
        Some(p) => Some(make_cgroup(vm_id, p).await?),
        None => None,
    };
    let network = match r.netns {
        Some(ns) => match attach_network(ns).await {
            Ok(n) => n,
            Err(e) => {
                if let Some(c) = cgroup {
                    c.remove();
                }
                return Err(e);
            }
        },
        None => None,
    };
    let spec = VmSpec {
        id: vm_id.to_owned(),
        shared_dir: r.shared_dir,
        nets: network
            .iter()
            .map(|n| NetDevice {
                tap: n.tap.as_raw_fd(),
                mac: n.mac.clone(),
            })
            .collect(),
        cgroup_procs: cgroup
            .as_ref()
            .map(HostCgroup::procs_files)
            .unwrap_or_default(),
        oom_score_adj: r.oom_score_adj,
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
    if let Err(e) = running.connect_network(vm_id).await {
        running.stop(vm_id).await;
        return Err(e);
    }
    Ok(running)
}

/// Connects the pod's network namespace to a TAP for the VM.
async fn attach_network(ns: &Path) -> Result<Option<PodNetwork>, TaskError> {
    let ns = ns.to_owned();
    tokio::task::spawn_blocking(move || network::attach(&ns))
        .await
        .map_err(|e| TaskError::Host(anyhow!(e)))?
        .map_err(|e| TaskError::Host(anyhow::Error::new(e).context("network attach")))
}

impl RunningVm {
    /// Gives the guest NIC the pod's addresses and routes, and carries the
    /// namespace's localhost into the guest (port-forward).
    async fn connect_network(&mut self, vm_id: &str) -> Result<(), TaskError> {
        let Some(n) = &self.network else {
            return Ok(());
        };
        let configured = async {
            let mut agent = self.vm.agent().await?;
            agent
                .configure_network(n.guest.clone())
                .await
                .map_err(|s| anyhow!("{}", sanitize(s.message())))?;
            anyhow::Ok(())
        }
        .await;
        configured.map_err(|e| TaskError::Host(e.context("configuring the guest network")))?;
        tracing::info!(pod_id = vm_id, mac = %n.mac, netns = %n.netns.display(), "pod network connected");
        self.forward = start_port_forward(vm_id, &n.netns, self.vm.agent_socket()).await;
        Ok(())
    }

    /// Ends the VM and takes everything attached off the host.
    pub async fn stop(mut self, pod_id: &str) {
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

/// Port-forward into the pod; the pod works without it, so a failure is
/// logged.
pub async fn start_port_forward(
    pod_id: &str,
    netns: &Path,
    agent_socket: PathBuf,
) -> Option<LocalForward> {
    match portforward::start(netns, agent_socket).await {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(pod_id, "port-forward into the pod is unavailable: {e}");
            None
        }
    }
}

/// Makes the pod's cgroup that `spec_path` names, for the VM to start in.
/// A pod whose cgroup cannot be made does not start: its limits would not
/// hold.
pub async fn make_cgroup(vm_id: &str, spec_path: &str) -> Result<HostCgroup, TaskError> {
    let rel =
        crate::host::cgroup::host_path(spec_path).map_err(|e| TaskError::Invalid(e.into()))?;
    let shown = rel.clone();
    let cgroup = tokio::task::spawn_blocking(move || HostCgroup::create(&rel))
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
pub fn serve_metrics(config: &Config, pod_id: &str, vm: &MicroVm) -> Option<PodMetricsServer> {
    let (_, backend) = husk_hypervisor::resolve_vmm(&config.hypervisor);
    let facts = PodFacts {
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
    match PodMetricsServer::start(&socket, facts) {
        Ok(server) => Some(server),
        Err(e) => {
            tracing::warn!(pod_id, %e, "the pod's metrics are unavailable");
            None
        }
    }
}
