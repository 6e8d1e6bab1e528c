//! The VM behind a shim: booted on the first container, stopped with the
//! last. Also the clean-up containerd asks of a shim that died.

use crate::network::PodNetwork;
use crate::rootfs;
use anyhow::Context;
use husk_config::Config;
use husk_hypervisor::{MicroVm, NetDevice, VmSpec};
use husk_proto::agent::agent_client::AgentClient;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

pub struct Sandbox {
    pub vm: MicroVm,
    pub agent: AgentClient<Channel>,
    pub shared: PathBuf,
    /// The pod network namespace connected to the VM, if any.
    network: Option<PodNetwork>,
    /// The namespace's localhost carried into the guest (port-forward).
    forward: Option<crate::portforward::LocalForward>,
    /// The pod's cgroup on the host, holding the VM's processes.
    cgroup: Option<crate::cgroup::HostCgroup>,
}

impl Sandbox {
    /// Boots the VM `vm_id` as `config` says (sized for its pod), with a
    /// NIC on the pod network `netns` when there is one.
    pub async fn start(
        config: &Config,
        vm_id: &str,
        netns: Option<&Path>,
        cgroups_path: Option<&str>,
    ) -> anyhow::Result<Self> {
        let network = match netns {
            Some(ns) => {
                let ns = ns.to_owned();
                tokio::task::spawn_blocking(move || crate::network::attach(&ns))
                    .await
                    .context("network attach")??
            }
            None => None,
        };
        let result = Self::boot(config, vm_id, &network).await;
        match result {
            Ok((vm, agent, shared)) => {
                let forward = match &network {
                    Some(n) => match crate::portforward::start(&n.netns, vm.agent_socket()).await {
                        Ok(f) => Some(f),
                        Err(e) => {
                            // The pod works without it; port-forward does not.
                            tracing::warn!(vm_id, "port-forward into the pod is unavailable: {e}");
                            None
                        }
                    },
                    None => None,
                };
                let cgroup = cgroups_path.and_then(|p| join_cgroup(&vm, vm_id, p));
                Ok(Self {
                    vm,
                    agent,
                    shared,
                    network,
                    forward,
                    cgroup,
                })
            }
            Err(e) => {
                if let Some(n) = network {
                    let _ = tokio::task::spawn_blocking(move || n.detach()).await;
                }
                Err(e)
            }
        }
    }

    async fn boot(
        config: &Config,
        vm_id: &str,
        network: &Option<PodNetwork>,
    ) -> anyhow::Result<(MicroVm, AgentClient<Channel>, PathBuf)> {
        let shared = rootfs::shared_dir(&config.hypervisor.runtime_dir, vm_id);
        std::fs::create_dir_all(&shared)
            .with_context(|| format!("creating the shared directory {}", shared.display()))?;
        let spec = VmSpec {
            id: vm_id.to_owned(),
            shared_dir: shared.clone(),
            nets: network
                .iter()
                .map(|n| NetDevice {
                    tap: n.tap.as_raw_fd(),
                    mac: n.mac.clone(),
                })
                .collect(),
        };
        let vm = match MicroVm::start(config, spec).await {
            Ok(vm) => vm,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&shared);
                return Err(e).context("starting the VM");
            }
        };
        let mut vm = vm;
        let agent = match vm.agent().await {
            Ok(agent) => agent,
            Err(e) => {
                vm.stop().await;
                let _ = std::fs::remove_dir_all(&shared);
                return Err(e).context("connecting to the agent");
            }
        };
        if let Some(n) = network {
            let mut a = agent.clone();
            if let Err(e) = a.configure_network(n.guest.clone()).await {
                vm.stop().await;
                let _ = std::fs::remove_dir_all(&shared);
                anyhow::bail!("configuring the guest network: {}", e.message());
            }
            tracing::info!(vm_id, mac = %n.mac, netns = %n.netns.display(), "pod network connected");
        }
        Ok((vm, agent, shared))
    }

    pub async fn stop(mut self) {
        if let Some(f) = self.forward.take() {
            let _ = tokio::task::spawn_blocking(move || f.stop()).await;
        }
        self.vm.stop().await;
        if let Some(c) = self.cgroup.take() {
            c.remove();
        }
        remove_shared_dir(&self.shared);
        if let Some(n) = self.network.take() {
            let _ = tokio::task::spawn_blocking(move || n.detach()).await;
        }
    }
}

/// Moves the VM's host processes into the spec's cgroup; a failure is
/// logged (the pod runs, outside its cgroup's accounting).
fn join_cgroup(vm: &MicroVm, vm_id: &str, spec_path: &str) -> Option<crate::cgroup::HostCgroup> {
    let Some(rel) = crate::cgroup::cgroupfs_path(spec_path) else {
        tracing::warn!(
            vm_id,
            cgroups_path = spec_path,
            "not a cgroupfs path; the VM stays in the shim's cgroup"
        );
        return None;
    };
    let cgroup = match crate::cgroup::HostCgroup::create(&rel) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(vm_id, cgroups_path = spec_path, %e, "cannot make the pod cgroup");
            return None;
        }
    };
    let pids = vm.pids();
    for pid in [pids.vmm, pids.virtiofsd, pids.vsock_backend] {
        if let Err(e) = cgroup.add(pid) {
            tracing::warn!(vm_id, pid, %e, "cannot move a VM process into the pod cgroup");
        }
    }
    Some(cgroup)
}

/// Removes the shared directory after unmounting anything still bound in
/// it; remove_dir (not remove_dir_all) below it, so a mount that would not
/// go away can never make us delete a container's files.
fn remove_shared_dir(shared: &Path) {
    if let Ok(entries) = std::fs::read_dir(shared) {
        for entry in entries.flatten() {
            rootfs::release(Path::new(""), &entry.path(), false);
        }
    }
    if let Err(e) = std::fs::remove_dir(shared) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %shared.display(), %e, "cannot remove the shared directory");
        }
    }
}

/// After a shim crash: its VM processes died with it (PDEATHSIG); unmount
/// the rootfs binds and remove the directories it left.
pub fn cleanup_after_crash(config: &Config, id: &str, bundle: &Path) {
    let runtime_dir = &config.hypervisor.runtime_dir;
    let shared = rootfs::shared_dir(runtime_dir, id);
    remove_shared_dir(&shared);
    rootfs::unmount_all(&bundle.join("rootfs"));
    let _ = std::fs::remove_dir_all(runtime_dir.join("vms").join(id));
    // The pod cgroup the VM's processes were in, now empty.
    let cgroups_path = std::fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|s| s.pointer("/linux/cgroupsPath")?.as_str().map(str::to_owned));
    if let Some(rel) = cgroups_path
        .as_deref()
        .and_then(crate::cgroup::cgroupfs_path)
    {
        crate::cgroup::HostCgroup::existing(&rel).remove();
    }
}
