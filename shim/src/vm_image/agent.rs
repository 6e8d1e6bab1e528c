//! [`VmAgent`]: the container manager's calls into a husk-vm pod, answered
//! by the host: the sandbox's placeholder, or the VM container (QEMU, QMP,
//! the serial console, the QEMU guest agent for exec).

use super::container::VmContainer;
use super::members::{Member, Placeholder, Shared};
use crate::task::agent::{AgentApi, AgentError, AgentStream, InputStream};
use async_trait::async_trait;
use futures_util::StreamExt;
use husk_proto::agent::{
    ContainerRequest, ContainerStatsResponse, CreateContainerRequest, ExecProcessRequest,
    OutputStream, ResizePtyRequest, SignalContainerRequest, UpdateContainerRequest,
};
use std::sync::Arc;

#[derive(Clone)]
pub struct VmAgent {
    shared: Arc<Shared>,
}

/// A member as the calls need it.
enum Target {
    Sandbox(Arc<Placeholder>),
    Vm(Arc<VmContainer>),
}

fn not_found(id: &str) -> AgentError {
    AgentError::Status {
        code: tonic::Code::NotFound,
        message: format!("container {id} not found"),
    }
}

fn stream_of(rx: Option<tokio::sync::mpsc::Receiver<Vec<u8>>>) -> AgentStream<Vec<u8>> {
    match rx {
        Some(rx) => tokio_stream::wrappers::ReceiverStream::new(rx)
            .map(Ok)
            .boxed(),
        None => futures_util::stream::empty().boxed(),
    }
}

impl VmAgent {
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    fn target(&self, id: &str) -> Result<Target, AgentError> {
        match self.shared.members().get(id) {
            Some(Member::Sandbox(p)) => Ok(Target::Sandbox(p.clone())),
            Some(Member::Vm(v)) => Ok(Target::Vm(v.clone())),
            _ => Err(not_found(id)),
        }
    }

    fn vm(&self, id: &str, what: &str) -> Result<Arc<VmContainer>, AgentError> {
        match self.target(id)? {
            Target::Vm(v) => Ok(v),
            Target::Sandbox(_) => Err(AgentError::Status {
                code: tonic::Code::FailedPrecondition,
                message: format!(
                    "{what}: {id} is the pod sandbox of a husk-vm pod, which runs no process \
                     (the pod's VM is its app container)"
                ),
            }),
        }
    }
}

#[async_trait]
impl AgentApi for VmAgent {
    async fn create_container(&self, req: CreateContainerRequest) -> Result<u32, AgentError> {
        let id = req.container_id;
        let prepared = {
            let mut members = self.shared.members();
            match members.remove(&id) {
                Some(Member::PlannedSandbox) => {
                    members.insert(id, Member::Sandbox(Arc::new(Placeholder::default())));
                    // No process stands for the sandbox: its pid is the shim's.
                    return Ok(std::process::id());
                }
                Some(Member::Prepared(p)) => {
                    members.insert(id.clone(), Member::Creating);
                    p
                }
                Some(other) => {
                    members.insert(id.clone(), other);
                    return Err(AgentError::Status {
                        code: tonic::Code::AlreadyExists,
                        message: format!("container {id} already exists"),
                    });
                }
                None => return Err(not_found(&id)),
            }
        };
        let ctx = self.shared.ctx().map_err(|e| AgentError::Status {
            code: tonic::Code::FailedPrecondition,
            message: e.to_string(),
        })?;
        match VmContainer::create(&id, *prepared, ctx).await {
            Ok(vm) => {
                let pid = vm.pid;
                self.shared.members().insert(id, Member::Vm(Arc::new(vm)));
                Ok(pid)
            }
            Err(e) => {
                self.shared.members().remove(&id);
                Err(e.into())
            }
        }
    }

    async fn exec_process(&self, req: ExecProcessRequest) -> Result<u32, AgentError> {
        let vm = self.vm(&req.container_id, "exec")?;
        vm.execs()
            .exec(&req.exec_id, &req.process_json, req.stdin)
            .await
    }

    async fn start(&self, req: ContainerRequest) -> Result<(), AgentError> {
        match self.target(&req.container_id)? {
            Target::Sandbox(_) => Ok(()),
            // An exec runs from its create on (guest-exec starts it).
            Target::Vm(_) if !req.exec_id.is_empty() => Ok(()),
            Target::Vm(vm) => vm.start().await,
        }
    }

    async fn wait(&self, req: ContainerRequest) -> Result<u32, AgentError> {
        match self.target(&req.container_id)? {
            Target::Sandbox(p) => Ok(p.wait().await),
            Target::Vm(vm) if req.exec_id.is_empty() => Ok(vm.wait().await),
            Target::Vm(vm) => Ok(vm.execs().guest_exec(&req.exec_id)?.wait().await),
        }
    }

    async fn signal(&self, req: SignalContainerRequest) -> Result<(), AgentError> {
        match self.target(&req.container_id)? {
            Target::Sandbox(p) => {
                p.signal(req.signal);
                Ok(())
            }
            Target::Vm(vm) if req.exec_id.is_empty() => vm.signal(req.signal).await,
            Target::Vm(vm) => vm.execs().signal_exec(&req.exec_id, req.signal).await,
        }
    }

    async fn remove(&self, req: ContainerRequest) -> Result<(), AgentError> {
        if !req.exec_id.is_empty() {
            if let Ok(Target::Vm(vm)) = self.target(&req.container_id) {
                vm.execs().remove_exec(&req.exec_id);
            }
            return Ok(());
        }
        let member = self.shared.members().remove(&req.container_id);
        if let Some(Member::Vm(vm)) = member {
            vm.remove().await;
        }
        Ok(())
    }

    async fn pause(&self, req: ContainerRequest) -> Result<(), AgentError> {
        match self.target(&req.container_id)? {
            Target::Sandbox(_) => Ok(()),
            Target::Vm(vm) => vm.set_paused(true).await,
        }
    }

    async fn resume(&self, req: ContainerRequest) -> Result<(), AgentError> {
        match self.target(&req.container_id)? {
            Target::Sandbox(_) => Ok(()),
            Target::Vm(vm) => vm.set_paused(false).await,
        }
    }

    async fn list_processes(&self, req: ContainerRequest) -> Result<Vec<u32>, AgentError> {
        match self.target(&req.container_id)? {
            Target::Sandbox(_) => Ok(Vec::new()),
            Target::Vm(vm) if vm.exited() => Ok(Vec::new()),
            Target::Vm(vm) => Ok(vec![vm.pid]),
        }
    }

    async fn stats(&self, req: ContainerRequest) -> Result<ContainerStatsResponse, AgentError> {
        match self.target(&req.container_id)? {
            Target::Sandbox(_) => Ok(ContainerStatsResponse::default()),
            Target::Vm(vm) => Ok(vm.stats()),
        }
    }

    async fn update(&self, req: UpdateContainerRequest) -> Result<(), AgentError> {
        match self.target(&req.container_id)? {
            Target::Sandbox(_) => Ok(()),
            Target::Vm(vm) => vm.update(&req.resources_json).await,
        }
    }

    async fn resize_pty(&self, req: ResizePtyRequest) -> Result<(), AgentError> {
        // The serial console has no window size to set; an exec's terminal
        // through the tools channel has.
        if req.exec_id.is_empty() {
            return Ok(());
        }
        let vm = self.vm(&req.container_id, "resize")?;
        let exec = vm.execs().guest_exec(&req.exec_id)?;
        let Some(session) = exec.session() else {
            return Ok(());
        };
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        session
            .resize(clamp(req.height), clamp(req.width))
            .await
            .map_err(|e| AgentError::Status {
                code: tonic::Code::Unavailable,
                message: crate::task::agent::sanitize(&e.to_string()),
            })
    }

    async fn watch_oom(&self, _req: ContainerRequest) -> Result<AgentStream<u64>, AgentError> {
        // An out-of-memory kill inside the VM is the guest's own; the VM as
        // a whole is the host cgroup's, where it reads as a kill (137).
        Ok(futures_util::stream::empty().boxed())
    }

    async fn read_output(
        &self,
        req: ContainerRequest,
        stream: OutputStream,
    ) -> Result<AgentStream<Vec<u8>>, AgentError> {
        let which = match stream {
            OutputStream::Stdout => 0,
            OutputStream::Stderr => 1,
        };
        match self.target(&req.container_id)? {
            Target::Sandbox(_) => Ok(stream_of(None)),
            Target::Vm(vm) if req.exec_id.is_empty() => Ok(stream_of(vm.take_output(which))),
            Target::Vm(vm) => Ok(stream_of(
                vm.execs().guest_exec(&req.exec_id)?.take_output(which),
            )),
        }
    }

    async fn write_stdin(
        &self,
        req: ContainerRequest,
        mut input: InputStream,
    ) -> Result<(), AgentError> {
        match self.target(&req.container_id)? {
            Target::Vm(vm) if req.exec_id.is_empty() => vm.write_console(input).await,
            Target::Vm(vm) => {
                let exec = vm.execs().guest_exec(&req.exec_id)?;
                match exec.session() {
                    Some(session) => session.pump(input).await,
                    None => while input.recv().await.is_some() {},
                }
                Ok(())
            }
            // Nothing reads it: drained, so the relay ends at its EOF.
            _ => {
                while input.recv().await.is_some() {}
                Ok(())
            }
        }
    }
}
