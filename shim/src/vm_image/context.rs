//! What every part of a VM-image pod reads: the pod's context (its
//! configuration, accelerator and deadlines), and how an error becomes one
//! line for containerd.

use crate::task::pod::PodTimeouts;
use husk_config::Config;

/// An error and its causes on one line, for a message to containerd.
pub fn chain(e: impl std::error::Error + Send + Sync + 'static) -> String {
    format!("{:#}", anyhow::Error::new(e))
}

/// What the pod's containers share: the configuration and the deadlines.
pub struct PodContext {
    pub pod_id: String,
    pub config: Config,
    pub accelerator: husk_hypervisor::Accelerator,
    pub timeouts: PodTimeouts,
}
