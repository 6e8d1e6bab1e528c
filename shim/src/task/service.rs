//! The ttrpc Task service containerd calls: each call is one line into the
//! [`Manager`], its error turned into a ttrpc status by
//! [`TaskError::into_ttrpc`]. Checkpoint is refused; Shutdown ends the
//! shim once no container is left.

use crate::task::error::TaskError;
use crate::task::manager::Manager;
use crate::task::pod::Pod;
use async_trait::async_trait;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use containerd_shim_protos::api;
use containerd_shim_protos::shim_async::Task;
use std::sync::Arc;

/// Generic over the pod, so one service serves both modes (husk's
/// `sandbox::VmPod`, husk-vm's `vmpod::VmImagePod`).
pub struct TaskService<P: Pod> {
    manager: Manager<P>,
    /// The ttrpc socket this shim serves (`unix:///run/containerd/s/...`).
    socket: String,
    exit: Arc<ExitSignal>,
}

impl<P: Pod> Clone for TaskService<P> {
    fn clone(&self) -> Self {
        Self {
            manager: self.manager.clone(),
            socket: self.socket.clone(),
            exit: self.exit.clone(),
        }
    }
}

impl<P: Pod> TaskService<P> {
    pub fn new(manager: Manager<P>, socket: String, exit: Arc<ExitSignal>) -> Self {
        Self {
            manager,
            socket,
            exit,
        }
    }
}

/// The Task impl: each `name(Request) -> Response` forwarded to the
/// manager (`sync` for a call that does not wait), its errors logged with
/// the request's container id and mapped to ttrpc codes; then the calls
/// written out by hand.
macro_rules! task_service {
    ($($name:ident($req:ty) -> $resp:ty $(, $sync:ident)?;)* ; $($rest:item)*) => {
        #[async_trait]
        impl<P: Pod> Task for TaskService<P> {
            $(
                async fn $name(&self, _: &TtrpcContext, req: $req) -> TtrpcResult<$resp> {
                    let id = req.id.clone();
                    task_service!(@call self, $name, req $(, $sync)?)
                        .map_err(|e: TaskError| e.into_ttrpc(&id, stringify!($name)))
                }
            )*
            $($rest)*
        }
    };
    (@call $self:ident, $name:ident, $req:ident, sync) => { $self.manager.$name($req) };
    (@call $self:ident, $name:ident, $req:ident) => { $self.manager.$name($req).await };
}

task_service! {
    create(api::CreateTaskRequest) -> api::CreateTaskResponse;
    start(api::StartRequest) -> api::StartResponse;
    wait(api::WaitRequest) -> api::WaitResponse;
    kill(api::KillRequest) -> api::Empty;
    delete(api::DeleteRequest) -> api::DeleteResponse;
    state(api::StateRequest) -> api::StateResponse, sync;
    pids(api::PidsRequest) -> api::PidsResponse;
    exec(api::ExecProcessRequest) -> api::Empty;
    pause(api::PauseRequest) -> api::Empty;
    resume(api::ResumeRequest) -> api::Empty;
    resize_pty(api::ResizePtyRequest) -> api::Empty;
    stats(api::StatsRequest) -> api::StatsResponse;
    update(api::UpdateTaskRequest) -> api::Empty;
    ;

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(TaskError::Unsupported(
            "checkpoint",
            "the container's state lives in its VM",
        )
        .into_ttrpc(&req.id, "checkpoint"))
    }

    async fn close_io(
        &self,
        _: &TtrpcContext,
        _req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        // containerd closes its end of the stdin FIFO as well; the relay
        // reads that as EOF and closes the process's stdin.
        Ok(api::Empty::new())
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(self.manager.connect(req))
    }

    async fn shutdown(
        &self,
        _: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        if !self.manager.shutdown().await {
            return Ok(api::Empty::new());
        }
        // The crate removes the socket after exit by reading the bundle's
        // address file, which containerd may have deleted with the bundle
        // by then; remove it here while the path is known for sure.
        let path = self.socket.trim_start_matches("unix://");
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(socket = path, %e, "cannot remove the shim socket");
            }
        }
        self.exit.signal();
        Ok(api::Empty::new())
    }
}
