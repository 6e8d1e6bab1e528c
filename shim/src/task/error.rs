//! [`TaskError`]: every way a Task call can fail, and the one place where
//! each becomes the ttrpc code containerd acts on (NOT_FOUND after a
//! process is gone, FAILED_PRECONDITION for a call in the wrong state, ...).

use crate::task::agent::AgentError;
use containerd_shim_protos::ttrpc::{self, Code};

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("container {0} not found")]
    ContainerNotFound(String),
    #[error("process {exec_id} of {id} not found")]
    ProcessNotFound { id: String, exec_id: String },
    #[error("container {0} already exists")]
    ContainerExists(String),
    #[error("exec {0} already exists")]
    ExecExists(String),
    #[error("process already finished")]
    ProcessFinished,
    /// The call does not fit the process's state (start twice, delete a
    /// running one, pause a stopped one, ...).
    #[error("{0}")]
    WrongState(String),
    #[error("the VM is not running")]
    NoVm,
    /// The request or the bundle's spec is refused; names the field.
    #[error("{0:#}")]
    Invalid(anyhow::Error),
    #[error("{0} is not supported by husk: {1}")]
    Unsupported(&'static str, &'static str),
    /// husk's configuration could not be loaded.
    #[error("husk configuration: {0}")]
    Config(#[source] std::sync::Arc<husk_config::ConfigError>),
    /// An agent call failed; `call` says which, as runc would word it.
    #[error("{call}: {source}")]
    Agent {
        call: &'static str,
        #[source]
        source: AgentError,
    },
    /// Host-side work failed (mounts, the VM's boot, ...).
    #[error("{0:#}")]
    Host(#[from] anyhow::Error),
}

impl TaskError {
    /// An agent error in the words of `call` ("husk start failed", "kill").
    pub fn agent(call: &'static str) -> impl FnOnce(AgentError) -> TaskError {
        move |source| TaskError::Agent { call, source }
    }

    /// The ttrpc code containerd sees.
    pub fn code(&self) -> Code {
        match self {
            TaskError::ContainerNotFound(_)
            | TaskError::ProcessNotFound { .. }
            | TaskError::ProcessFinished => Code::NOT_FOUND,
            TaskError::ContainerExists(_) | TaskError::ExecExists(_) => Code::ALREADY_EXISTS,
            TaskError::WrongState(_) | TaskError::NoVm | TaskError::Config(_) => {
                Code::FAILED_PRECONDITION
            }
            TaskError::Invalid(_) => Code::INVALID_ARGUMENT,
            TaskError::Unsupported(..) => Code::UNIMPLEMENTED,
            TaskError::Agent { source, .. } => match source {
                AgentError::Timeout(_) => Code::DEADLINE_EXCEEDED,
                AgentError::Status { code, .. } => match code {
                    tonic::Code::NotFound => Code::NOT_FOUND,
                    tonic::Code::InvalidArgument => Code::INVALID_ARGUMENT,
                    tonic::Code::FailedPrecondition => Code::FAILED_PRECONDITION,
                    tonic::Code::Unavailable => Code::UNAVAILABLE,
                    _ => Code::UNKNOWN,
                },
            },
            TaskError::Host(_) => Code::UNKNOWN,
        }
    }

    /// The ttrpc error containerd receives, logged with the container id.
    pub fn into_ttrpc(self, container_id: &str, call: &str) -> ttrpc::Error {
        tracing::warn!(container_id, call, "{self:#}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(self.code(), format!("{self:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_error_has_its_code() {
        let cases = [
            (TaskError::ContainerNotFound("c".into()), Code::NOT_FOUND),
            (TaskError::ProcessFinished, Code::NOT_FOUND),
            (TaskError::ExecExists("e".into()), Code::ALREADY_EXISTS),
            (TaskError::WrongState("x".into()), Code::FAILED_PRECONDITION),
            (TaskError::NoVm, Code::FAILED_PRECONDITION),
            (
                TaskError::Invalid(anyhow::anyhow!("mounts[0]")),
                Code::INVALID_ARGUMENT,
            ),
            (
                TaskError::Unsupported("checkpoint", "x"),
                Code::UNIMPLEMENTED,
            ),
            (
                TaskError::agent("kill")(AgentError::Timeout(Duration::from_secs(1))),
                Code::DEADLINE_EXCEEDED,
            ),
            (
                TaskError::agent("kill")(AgentError::Status {
                    code: tonic::Code::NotFound,
                    message: "gone".into(),
                }),
                Code::NOT_FOUND,
            ),
            (
                TaskError::agent("kill")(AgentError::Status {
                    code: tonic::Code::Internal,
                    message: "x".into(),
                }),
                Code::UNKNOWN,
            ),
            (TaskError::Host(anyhow::anyhow!("mount")), Code::UNKNOWN),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
        }
    }

    #[test]
    fn agent_errors_read_as_runc_words() {
        let e = TaskError::agent("husk start failed")(AgentError::Status {
            code: tonic::Code::Unknown,
            message: "exec: \"/x\": stat /x: no such file or directory".into(),
        });
        assert_eq!(
            e.to_string(),
            "husk start failed: exec: \"/x\": stat /x: no such file or directory"
        );
    }
}
