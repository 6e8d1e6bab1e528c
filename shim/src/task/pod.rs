//! [`Pod`]: the host side of one pod as the container manager drives it —
//! checking a container's bundle, sharing its files with the guest,
//! booting the VM and stopping it. `sandbox::VmPod` is the real one; the
//! manager's tests use an in-memory one, so the state machine is tested
//! without a VM.

use crate::agent::AgentApi;
use crate::error::TaskError;
use async_trait::async_trait;
use containerd_shim_protos::api::CreateTaskRequest;
use std::time::Duration;

/// A container as the host prepared it, before it exists in the guest.
#[derive(Debug)]
pub struct ContainerPlan {
    /// The bundle's spec, checked and rewritten to guest paths.
    pub guest: crate::spec::GuestSpec,
    /// The pod VM's size (from the sandbox's annotations).
    pub vcpus: u32,
    pub memory_mib: u32,
}

/// How long the manager waits on the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodTimeouts {
    /// Deadline of each agent call that answers.
    pub agent_call: Duration,
    /// After SIGKILL, how long until the VM itself is stopped.
    pub kill_grace: Duration,
}

#[async_trait]
pub trait Pod: Send + Sync + 'static {
    type Agent: AgentApi;

    /// Reads and checks the container's bundle; nothing is made yet, so a
    /// refusal leaves nothing behind.
    fn plan(&self, req: &CreateTaskRequest) -> Result<ContainerPlan, TaskError>;

    /// Makes the container's rootfs and host bind mounts visible to the
    /// guest. On error nothing of it is left.
    async fn share(
        &self,
        container_id: &str,
        req: &CreateTaskRequest,
        plan: &ContainerPlan,
    ) -> Result<(), TaskError>;

    /// Undoes `share`: only what `share` recorded for the container.
    async fn unshare(&self, container_id: &str);

    /// Boots the pod's VM (at its first container) and connects to its
    /// agent. On error nothing of the VM is left.
    async fn boot(&self, plan: &ContainerPlan) -> Result<Self::Agent, TaskError>;

    /// Stops the VM and removes what it had on the host; safe to call
    /// when none runs.
    async fn stop(&self);

    fn timeouts(&self) -> PodTimeouts;
}
