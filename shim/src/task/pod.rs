//! [`Pod`]: the host side of one pod as the container manager drives it —
//! checking a container's bundle, sharing its files with the guest,
//! booting the VM and stopping it. Each pod kind has its own
//! (`micro_vm::MicroVmPod`, `vm_image::VmImagePod`); the manager's tests
//! use an in-memory one, so the state machine is tested without a VM.

use crate::task::agent::AgentApi;
use crate::task::error::TaskError;
use async_trait::async_trait;
use containerd_shim_protos::api::CreateTaskRequest;
use serde_json::Value;
use std::time::Duration;

/// A container as the host prepared it, before it exists in the guest:
/// each pod kind's own. The manager only hands it back to the pod, and
/// gives its guest the spec [`ContainerPlan::agent_spec`] names.
pub trait ContainerPlan: Send + Sync + 'static {
    /// The spec the guest's side is given for the container (rewritten
    /// for the guest where the pod kind shares files with one).
    fn agent_spec(&self) -> &Value;
}

/// How long the manager waits on the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodTimeouts {
    /// Deadline of each agent call that answers.
    pub agent_call: Duration,
    /// After SIGKILL, how long until the VM itself is stopped.
    pub kill_grace: Duration,
}

impl PodTimeouts {
    /// The timeouts `config` gives the accelerator this host resolves to
    /// (those of TCG when the configuration did not load).
    pub fn of(config: Option<&husk_config::Config>) -> Self {
        let t = match config {
            Some(c) => {
                match husk_hypervisor::resolve_accelerator(c.hypervisor.accelerator).accelerator {
                    husk_hypervisor::Accelerator::Kvm => c.timeouts.kvm,
                    husk_hypervisor::Accelerator::Tcg => c.timeouts.tcg,
                }
            }
            None => husk_config::Timeouts::default().tcg,
        };
        PodTimeouts {
            agent_call: Duration::from_secs(t.agent_call_secs),
            kill_grace: Duration::from_secs(t.kill_grace_secs),
        }
    }
}

#[async_trait]
pub trait Pod: Send + Sync + 'static {
    type Agent: AgentApi;
    type Plan: ContainerPlan;

    /// Reads and checks the container's bundle; nothing is made yet, so a
    /// refusal leaves nothing behind.
    fn plan(&self, req: &CreateTaskRequest) -> Result<Self::Plan, TaskError>;

    /// Makes the container's rootfs and host bind mounts visible to the
    /// guest. On error nothing of it is left.
    async fn share(
        &self,
        container_id: &str,
        req: &CreateTaskRequest,
        plan: &Self::Plan,
    ) -> Result<(), TaskError>;

    /// Undoes `share`: only what `share` recorded for the container.
    async fn unshare(&self, container_id: &str);

    /// Boots the pod's VM (at its first container) and connects to its
    /// agent. On error nothing of the VM is left.
    async fn boot(&self, plan: &Self::Plan) -> Result<Self::Agent, TaskError>;

    /// Stops the VM and removes what it had on the host; safe to call
    /// when none runs.
    async fn stop(&self);

    fn timeouts(&self) -> PodTimeouts;
}
