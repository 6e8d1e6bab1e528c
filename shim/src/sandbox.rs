//! The VM behind a shim: booted on the first container, stopped with the
//! last. Also the clean-up containerd asks of a shim that died.

use crate::rootfs;
use anyhow::Context;
use husk_config::Config;
use husk_hypervisor::{MicroVm, VmSpec};
use husk_proto::agent::agent_client::AgentClient;
use std::path::{Path, PathBuf};
use tonic::transport::Channel;

pub struct Sandbox {
    pub vm: MicroVm,
    pub agent: AgentClient<Channel>,
    pub shared: PathBuf,
}

impl Sandbox {
    /// Boots the VM `vm_id` as `config` says (sized for its pod).
    pub async fn start(config: &Config, vm_id: &str) -> anyhow::Result<Self> {
        let shared = rootfs::shared_dir(&config.hypervisor.runtime_dir, vm_id);
        std::fs::create_dir_all(&shared)
            .with_context(|| format!("creating the shared directory {}", shared.display()))?;
        let spec = VmSpec {
            id: vm_id.to_owned(),
            shared_dir: shared.clone(),
        };
        let vm = match MicroVm::start(config, spec).await {
            Ok(vm) => vm,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&shared);
                return Err(e).context("starting the VM");
            }
        };
        let agent = match vm.agent().await {
            Ok(agent) => agent,
            Err(e) => {
                let mut vm = vm;
                vm.stop().await;
                let _ = std::fs::remove_dir_all(&shared);
                return Err(e).context("connecting to the agent");
            }
        };
        Ok(Self { vm, agent, shared })
    }

    pub async fn stop(mut self) {
        self.vm.stop().await;
        remove_shared_dir(&self.shared);
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
