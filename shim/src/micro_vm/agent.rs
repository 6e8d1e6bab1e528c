//! [`VsockAgent`]: the [`AgentApi`] of a micro-VM pod, husk's agent over its
//! gRPC service (`proto/agent.proto`) on the VM's hybrid-vsock socket.
//! Every answer goes through the bounds of `task::agent`.

use crate::task::agent::{output_bytes, AgentApi, AgentError, AgentStream, InputStream};
use async_trait::async_trait;
use futures_util::StreamExt;
use husk_proto::agent::agent_client::AgentClient;
use husk_proto::agent::{
    ContainerRequest, ContainerStatsResponse, CreateContainerRequest, ExecProcessRequest,
    OutputStream, ReadOutputRequest, ResizePtyRequest, SignalContainerRequest, StdinChunk,
    UpdateContainerRequest,
};
use std::future::Future;
use tonic::transport::Channel;

/// The agent over its gRPC service on the VM's hybrid-vsock socket.
#[derive(Clone)]
pub struct VsockAgent {
    client: AgentClient<Channel>,
}

impl VsockAgent {
    pub fn new(client: AgentClient<Channel>) -> Self {
        Self { client }
    }

    /// Runs one call on a clone of the client (tonic clients are cheap
    /// handles on one connection).
    async fn call<T, F, Fut>(&self, f: F) -> Result<T, AgentError>
    where
        F: FnOnce(AgentClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        f(self.client.clone())
            .await
            .map(tonic::Response::into_inner)
            .map_err(AgentError::from_status)
    }
}

#[async_trait]
impl AgentApi for VsockAgent {
    async fn create_container(&self, req: CreateContainerRequest) -> Result<u32, AgentError> {
        let r = self
            .call(|mut c| async move { c.create_container(req).await })
            .await?;
        Ok(r.pid)
    }

    async fn exec_process(&self, req: ExecProcessRequest) -> Result<u32, AgentError> {
        let r = self
            .call(|mut c| async move { c.exec_process(req).await })
            .await?;
        Ok(r.pid)
    }

    async fn start(&self, req: ContainerRequest) -> Result<(), AgentError> {
        self.call(|mut c| async move { c.start_container(req).await })
            .await
            .map(drop)
    }

    async fn wait(&self, req: ContainerRequest) -> Result<u32, AgentError> {
        let r = self
            .call(|mut c| async move { c.wait_container(req).await })
            .await?;
        Ok(r.exit_status)
    }

    async fn signal(&self, req: SignalContainerRequest) -> Result<(), AgentError> {
        self.call(|mut c| async move { c.signal_container(req).await })
            .await
            .map(drop)
    }

    async fn remove(&self, req: ContainerRequest) -> Result<(), AgentError> {
        self.call(|mut c| async move { c.remove_container(req).await })
            .await
            .map(drop)
    }

    async fn pause(&self, req: ContainerRequest) -> Result<(), AgentError> {
        self.call(|mut c| async move { c.pause_container(req).await })
            .await
            .map(drop)
    }

    async fn resume(&self, req: ContainerRequest) -> Result<(), AgentError> {
        self.call(|mut c| async move { c.resume_container(req).await })
            .await
            .map(drop)
    }

    async fn list_processes(&self, req: ContainerRequest) -> Result<Vec<u32>, AgentError> {
        let r = self
            .call(|mut c| async move { c.list_processes(req).await })
            .await?;
        Ok(r.pids)
    }

    async fn stats(&self, req: ContainerRequest) -> Result<ContainerStatsResponse, AgentError> {
        self.call(|mut c| async move { c.container_stats(req).await })
            .await
    }

    async fn update(&self, req: UpdateContainerRequest) -> Result<(), AgentError> {
        self.call(|mut c| async move { c.update_container(req).await })
            .await
            .map(drop)
    }

    async fn resize_pty(&self, req: ResizePtyRequest) -> Result<(), AgentError> {
        self.call(|mut c| async move { c.resize_pty(req).await })
            .await
            .map(drop)
    }

    async fn watch_oom(&self, req: ContainerRequest) -> Result<AgentStream<u64>, AgentError> {
        let events = self
            .call(|mut c| async move { c.watch_oom(req).await })
            .await?;
        Ok(events
            .map(|e| e.map(|e| e.oom_kill_count).map_err(AgentError::from_status))
            .boxed())
    }

    async fn read_output(
        &self,
        req: ContainerRequest,
        stream: OutputStream,
    ) -> Result<AgentStream<Vec<u8>>, AgentError> {
        let request = ReadOutputRequest {
            container_id: req.container_id,
            exec_id: req.exec_id,
            stream: stream as i32,
        };
        let chunks = self
            .call(|mut c| async move { c.read_output(request).await })
            .await?;
        Ok(chunks
            .map(|c| c.map(output_bytes).map_err(AgentError::from_status))
            .boxed())
    }

    async fn write_stdin(
        &self,
        req: ContainerRequest,
        input: InputStream,
    ) -> Result<(), AgentError> {
        // The agent learns the process from the first message, so an empty
        // input still sends one message naming it.
        let opening = StdinChunk {
            container_id: req.container_id,
            exec_id: req.exec_id,
            data: Vec::new(),
        };
        fn chunk(data: Vec<u8>) -> StdinChunk {
            StdinChunk {
                data,
                ..Default::default()
            }
        }
        let chunks = tokio_stream::StreamExt::chain(
            tokio_stream::once(opening),
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::ReceiverStream::new(input),
                chunk as fn(Vec<u8>) -> StdinChunk,
            ),
        );
        let mut client = self.client.clone();
        client
            .write_stdin(chunks)
            .await
            .map(drop)
            .map_err(AgentError::from_status)
    }
}
