//! [`VmError`]: why a VM-image container's VM could not be made or
//! driven, and the code containerd gets for each.

use super::context::chain;
use super::{cloud_init, seed};
use crate::task::agent::{sanitize, AgentError};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Seed(#[from] seed::SeedError),
    #[error(transparent)]
    CloudInit(#[from] cloud_init::CloudInitError),
    #[error("pod network")]
    Network(#[from] crate::host::network::NetworkError),
    #[error("starting QEMU")]
    Qemu(#[from] husk_hypervisor::Error),
    #[error("QEMU's monitor")]
    Qmp(#[from] husk_hypervisor::qemu::qmp::QmpError),
    #[error("{0}")]
    Invalid(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<VmError> for AgentError {
    fn from(e: VmError) -> Self {
        let code = match e {
            VmError::CloudInit(_) | VmError::Invalid(_) => tonic::Code::InvalidArgument,
            _ => tonic::Code::Internal,
        };
        AgentError::Status {
            code,
            message: sanitize(&chain(e)),
        }
    }
}
