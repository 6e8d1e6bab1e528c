//! The micro-VM pod (runtime `husk`): husk's small guest kernel with its
//! agent as PID 1, the pod's OCI containers inside it, runc-identical.
//!
//! - [`pod`]: [`MicroVmPod`], the [`crate::task::pod::Pod`] of this kind,
//!   over [`running`] (a booted VM and what is attached to it) and
//!   [`pooled`] (a VM booted before its pod, handed out);
//! - [`pool`]: the pool members, shims that boot VMs ahead of their pods
//!   (docs/pool.md);
//! - [`agent`]: [`VsockAgent`], the manager's calls into husk's agent;
//! - [`guest_spec`], [`share`]: the container's spec as the guest must see
//!   it, and the pod's share tree its files reach the guest through;
//! - [`portforward`]: `kubectl port-forward` into the guest;
//! - [`console`]: the host end of the debug console (`husk console`).

pub mod agent;
pub mod console;
pub mod guest_spec;
pub mod pod;
pub mod pool;
pub mod pooled;
pub mod portforward;
pub mod running;
pub mod share;

pub use agent::VsockAgent;
pub use pod::{cleanup_after_crash, MicroVmPlan, MicroVmPod};
