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
}

impl Sandbox {
    /// Boots the VM `vm_id` as `config` says (sized for its pod), with a
    /// NIC on the pod network `netns` when there is one.
    pub async fn start(config: &Config, vm_id: &str, netns: Option<&Path>) -> anyhow::Result<Self> {
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
                Ok(Self {
                    vm,
                    agent,
                    shared,
                    network,
                    forward,
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
        remove_shared_dir(&self.shared);
        if let Some(n) = self.network.take() {
            let _ = tokio::task::spawn_blocking(move || n.detach()).await;
        }
    }
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
}
