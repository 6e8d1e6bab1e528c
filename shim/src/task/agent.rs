//! The guest as the container manager sees it: [`AgentApi`], the calls it
//! makes into a pod's guest, each pod kind with its own implementation
//! (`micro_vm::VsockAgent`: husk's agent over gRPC on hybrid vsock;
//! `vm_image::VmAgent`: a VM image, answered on the host), and the bounds
//! every guest answer goes through.
//!
//! The guest is hostile (docs/security.md): every message the agent sends
//! back is bounded before it is logged or handed to containerd, and a
//! stream that never ends is only ever read by a task that the pod's
//! teardown aborts. Deadlines are the manager's (`manager::Manager`), so
//! they hold for any implementation of the trait.

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use husk_proto::agent::{
    ContainerRequest, ContainerStatsResponse, CreateContainerRequest, ExecProcessRequest,
    OutputChunk, OutputStream, ResizePtyRequest, SignalContainerRequest, UpdateContainerRequest,
};
use std::time::Duration;

/// Longest agent error message passed on; the rest is cut.
pub const MAX_AGENT_MESSAGE: usize = 4096;

/// Why a call into the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent answered with an error status.
    #[error("{message}")]
    Status { code: tonic::Code, message: String },
    /// The agent did not answer within the call's deadline.
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
}

impl AgentError {
    /// From a tonic status: the agent's message, bounded and without
    /// control characters (it reaches logs and containerd's clients).
    pub fn from_status(status: tonic::Status) -> Self {
        AgentError::Status {
            code: status.code(),
            message: sanitize(status.message()),
        }
    }
}

/// `message` cut to [`MAX_AGENT_MESSAGE`] bytes (at a character boundary)
/// with control characters other than newline and tab replaced.
pub fn sanitize(message: &str) -> String {
    let mut end = message.len().min(MAX_AGENT_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = message[..end]
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                '?'
            } else {
                c
            }
        })
        .collect();
    if end < message.len() {
        out.push_str("...");
    }
    out
}

/// The bytes of an output chunk. A chunk larger than the agent may send
/// is the agent's lie: cut, so one message cannot make the shim hold more
/// than [`husk_proto::IO_CHUNK_BYTES`].
pub fn output_bytes(chunk: OutputChunk) -> Vec<u8> {
    let mut data = chunk.data;
    data.truncate(husk_proto::IO_CHUNK_BYTES);
    data
}

/// A stream of output bytes, OOM kill counts, ...: ends when the agent
/// ends it; an error ends it too.
pub type AgentStream<T> = BoxStream<'static, Result<T, AgentError>>;

/// Input for a process's stdin, chunk by chunk; its end is stdin's EOF.
pub type InputStream = tokio::sync::mpsc::Receiver<Vec<u8>>;

/// What the shim asks of the agent for a pod's containers. The manager is
/// generic over it: one per pod kind, an in-memory fake in the manager's
/// tests.
#[async_trait]
pub trait AgentApi: Clone + Send + Sync + 'static {
    /// Creates the container from its guest spec; returns its init's pid.
    async fn create_container(&self, req: CreateContainerRequest) -> Result<u32, AgentError>;
    /// Creates an exec process; returns its pid.
    async fn exec_process(&self, req: ExecProcessRequest) -> Result<u32, AgentError>;
    async fn start(&self, req: ContainerRequest) -> Result<(), AgentError>;
    /// Waits for the process to exit: no deadline, the process may run
    /// for ever. Returns the exit status as runc reports it.
    async fn wait(&self, req: ContainerRequest) -> Result<u32, AgentError>;
    async fn signal(&self, req: SignalContainerRequest) -> Result<(), AgentError>;
    async fn remove(&self, req: ContainerRequest) -> Result<(), AgentError>;
    async fn pause(&self, req: ContainerRequest) -> Result<(), AgentError>;
    async fn resume(&self, req: ContainerRequest) -> Result<(), AgentError>;
    async fn list_processes(&self, req: ContainerRequest) -> Result<Vec<u32>, AgentError>;
    async fn stats(&self, req: ContainerRequest) -> Result<ContainerStatsResponse, AgentError>;
    async fn update(&self, req: UpdateContainerRequest) -> Result<(), AgentError>;
    async fn resize_pty(&self, req: ResizePtyRequest) -> Result<(), AgentError>;
    /// One item per OOM kill in the container, until its init exits.
    async fn watch_oom(&self, req: ContainerRequest) -> Result<AgentStream<u64>, AgentError>;
    /// The process's stdout or stderr, until its pipe closes.
    async fn read_output(
        &self,
        req: ContainerRequest,
        stream: OutputStream,
    ) -> Result<AgentStream<Vec<u8>>, AgentError>;
    /// Feeds the process's stdin until `input` ends, then closes it.
    async fn write_stdin(
        &self,
        req: ContainerRequest,
        input: InputStream,
    ) -> Result<(), AgentError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_messages_are_bounded_and_printable() {
        let long = "x".repeat(MAX_AGENT_MESSAGE * 4);
        let s = sanitize(&long);
        assert_eq!(s.len(), MAX_AGENT_MESSAGE + 3);
        assert!(s.ends_with("..."));
        assert_eq!(sanitize("bad\x1b[31mred\x07\nline"), "bad?[31mred?\nline");
        // A cut inside a multi-byte character backs off to its start.
        let wide = "é".repeat(MAX_AGENT_MESSAGE);
        assert!(sanitize(&wide).len() <= MAX_AGENT_MESSAGE + 3);
    }
}
