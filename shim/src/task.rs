//! The Task service containerd calls: Create, Start, Wait, Kill, Delete,
//! State, Pids, Connect, CloseIO, Shutdown. Each call becomes work on the
//! host (mounts, FIFOs, the VM) and RPCs to the guest agent.

use crate::container::{Container, State};
use crate::rootfs;
use crate::sandbox::Sandbox;
use anyhow::{anyhow, bail, Context as _};
use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::timestamp;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskIO, TaskStart};
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::{self, context::Context, Code};
use containerd_shim_protos::types::task::Status as TaskStatus;
use husk_proto::agent::{
    ContainerRequest, CreateContainerRequest, OutputStream, SignalContainerRequest,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct HuskTask {
    inner: Arc<Inner>,
}

struct Inner {
    vm_id: String,
    namespace: String,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    config: Result<husk_config::Config, String>,
    sandbox: tokio::sync::Mutex<Option<Sandbox>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
}

/// An error for containerd: the ttrpc code decides how containerd treats it.
struct TaskError(Code, anyhow::Error);

impl From<anyhow::Error> for TaskError {
    fn from(e: anyhow::Error) -> Self {
        TaskError(Code::UNKNOWN, e)
    }
}

fn fail<T>(code: Code, message: impl Into<String>) -> Result<T, TaskError> {
    Err(TaskError(code, anyhow!(message.into())))
}

fn to_ttrpc<T>(id: &str, call: &str, r: Result<T, TaskError>) -> TtrpcResult<T> {
    r.map_err(|TaskError(code, e)| {
        tracing::warn!(container_id = id, call, "{e:#}");
        ttrpc::Error::RpcStatus(ttrpc::get_status(code, format!("{e:#}")))
    })
}

/// The agent's message without tonic's framing.
fn agent_error(context: &str, status: tonic::Status) -> anyhow::Error {
    anyhow!("{context}: {}", status.message())
}

impl HuskTask {
    pub fn new(
        vm_id: String,
        namespace: String,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        let config = husk_config::Config::load_default().map_err(|e| e.to_string());
        HuskTask {
            inner: Arc::new(Inner {
                vm_id,
                namespace,
                publisher,
                exit,
                config,
                sandbox: tokio::sync::Mutex::new(None),
                containers: Mutex::default(),
            }),
        }
    }
}

impl Inner {
    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, TaskError> {
        match self.containers().get(id) {
            Some(c) => Ok(c.clone()),
            None => fail(Code::NOT_FOUND, format!("container {id} not found")),
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, %e, "cannot publish event");
        }
    }

    async fn agent(
        &self,
    ) -> Result<husk_proto::agent::agent_client::AgentClient<tonic::transport::Channel>, TaskError>
    {
        match self.sandbox.lock().await.as_ref() {
            Some(s) => Ok(s.agent.clone()),
            None => fail(Code::FAILED_PRECONDITION, "the VM is not running"),
        }
    }

    async fn create(
        &self,
        req: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, TaskError> {
        let config = self
            .config
            .as_ref()
            .map_err(|e| TaskError(Code::FAILED_PRECONDITION, anyhow!("{e}")))?;
        let id = req.id.clone();
        if self.containers().contains_key(&id) {
            return fail(
                Code::ALREADY_EXISTS,
                format!("container {id} already exists"),
            );
        }
        if req.terminal {
            return fail(
                Code::UNIMPLEMENTED,
                "terminal (tty) containers are not supported yet",
            );
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = guest_spec(&bundle, &id).map_err(|e| TaskError(Code::INVALID_ARGUMENT, e))?;
        let shared = rootfs::shared_dir(&config.hypervisor.runtime_dir, &self.vm_id);
        let share_at = rootfs::host_container_dir(&shared, &id).join("rootfs");

        let (mounts, b, s) = (req.rootfs.clone(), bundle.clone(), share_at.clone());
        tokio::task::spawn_blocking(move || rootfs::mount_rootfs(&mounts, &b, &s))
            .await
            .map_err(|e| anyhow!(e))?
            .map_err(anyhow::Error::from)?;
        let mounted_bundle_rootfs = !req.rootfs.is_empty();

        match self
            .create_in_vm(config, &req, spec, &share_at, mounted_bundle_rootfs)
            .await
        {
            Ok(resp) => Ok(resp),
            Err(e) => {
                rootfs::unmount_rootfs(&bundle, &share_at, mounted_bundle_rootfs);
                let _ = std::fs::remove_dir(&share_at);
                let _ = share_at.parent().map(std::fs::remove_dir);
                self.stop_vm_if_idle().await;
                Err(e)
            }
        }
    }

    async fn create_in_vm(
        &self,
        config: &husk_config::Config,
        req: &api::CreateTaskRequest,
        spec: serde_json::Value,
        share_at: &Path,
        mounted_bundle_rootfs: bool,
    ) -> Result<api::CreateTaskResponse, TaskError> {
        let id = req.id.clone();
        let boot_started = std::time::Instant::now();
        let mut vm_boot_ms = 0;
        let mut agent = {
            let mut sandbox = self.sandbox.lock().await;
            if sandbox.is_none() {
                *sandbox = Some(Sandbox::start(config, &self.vm_id).await?);
                vm_boot_ms = boot_started.elapsed().as_millis() as u64;
            }
            sandbox.as_ref().map(|s| s.agent.clone()).expect("just set")
        };
        let create_started = std::time::Instant::now();
        let pid = agent
            .create_container(CreateContainerRequest {
                container_id: id.clone(),
                oci_spec_json: serde_json::to_vec(&spec).map_err(|e| anyhow!(e))?,
                stdin: !req.stdin.is_empty(),
            })
            .await
            .map_err(|s| agent_error("husk create failed", s))?
            .into_inner()
            .pid;
        let agent_create_ms = create_started.elapsed().as_millis() as u64;

        let mut outputs = Vec::new();
        for (path, stream) in [
            (&req.stdout, OutputStream::Stdout),
            (&req.stderr, OutputStream::Stderr),
        ] {
            if path.is_empty() {
                continue;
            }
            let relay = crate::io::relay_output(agent.clone(), id.clone(), stream, path.clone());
            let cid = id.clone();
            outputs.push(tokio::spawn(async move {
                if let Err(e) = relay.await {
                    tracing::warn!(container_id = %cid, ?stream, "output relay: {e:#}");
                }
            }));
        }
        if !req.stdin.is_empty() {
            let relay = crate::io::relay_stdin(agent.clone(), id.clone(), req.stdin.clone());
            let cid = id.clone();
            tokio::spawn(async move {
                if let Err(e) = relay.await {
                    tracing::debug!(container_id = %cid, "stdin relay: {e:#}");
                }
            });
        }
        let container = Arc::new(Container::new(
            id.clone(),
            PathBuf::from(&req.bundle),
            pid,
            req.stdin.clone(),
            req.stdout.clone(),
            req.stderr.clone(),
            share_at.to_owned(),
            mounted_bundle_rootfs,
            outputs,
        ));
        self.containers().insert(id.clone(), container);
        // The timings feed the ctr_run benchmark's breakdown.
        tracing::info!(container_id = %id, pid, vm_boot_ms, agent_create_ms, "created");
        self.publish(
            containerd_shim_protos::topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: id,
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        self: &Arc<Self>,
        req: api::StartRequest,
    ) -> Result<api::StartResponse, TaskError> {
        if !req.exec_id.is_empty() {
            return fail(Code::UNIMPLEMENTED, "exec processes are not supported yet");
        }
        let container = self.container(&req.id)?;
        if container.state() != State::Created {
            return fail(
                Code::FAILED_PRECONDITION,
                format!("container {} is not in the created state", req.id),
            );
        }
        let mut agent = self.agent().await?;
        let cid = req.id.clone();
        let request = move || ContainerRequest {
            container_id: cid.clone(),
        };
        let start_started = std::time::Instant::now();
        agent
            .start_container(request())
            .await
            .map_err(|s| agent_error("husk start failed", s))?;
        let agent_start_ms = start_started.elapsed().as_millis() as u64;
        container.set_state(State::Running);
        tracing::info!(container_id = %req.id, pid = container.pid, agent_start_ms, "started");
        self.publish(
            containerd_shim_protos::topics::TASK_START_EVENT_TOPIC,
            Box::new(TaskStart {
                container_id: req.id.clone(),
                pid: container.pid,
                ..Default::default()
            }),
        )
        .await;

        let this = self.clone();
        let wait_request = request();
        tokio::spawn(async move {
            let exit_status = match agent.wait_container(wait_request).await {
                Ok(r) => r.into_inner().exit_status,
                Err(e) => {
                    // The VM died under the container: report it failed.
                    tracing::warn!(container_id = %container.id, "lost the container: {}", e.message());
                    container.abort_outputs();
                    255
                }
            };
            container.drain_outputs().await;
            let exited_at = timestamp().unwrap_or_default();
            container.set_state(State::Stopped {
                exit_status,
                exited_at: exited_at.clone(),
            });
            tracing::info!(container_id = %container.id, exit_status, "exited");
            this.publish(
                containerd_shim_protos::topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: container.id.clone(),
                    id: container.id.clone(),
                    pid: container.pid,
                    exit_status,
                    exited_at: Some(exited_at).into(),
                    ..Default::default()
                }),
            )
            .await;
        });
        Ok(api::StartResponse {
            pid: self.container(&req.id)?.pid,
            ..Default::default()
        })
    }

    async fn kill(&self, req: api::KillRequest) -> Result<(), TaskError> {
        if !req.exec_id.is_empty() {
            return fail(Code::UNIMPLEMENTED, "exec processes are not supported yet");
        }
        let container = self.container(&req.id)?;
        if matches!(container.state(), State::Stopped { .. }) {
            return fail(Code::NOT_FOUND, "process already finished");
        }
        self.agent()
            .await?
            .signal_container(SignalContainerRequest {
                container_id: req.id.clone(),
                signal: req.signal,
                all: req.all,
            })
            .await
            .map_err(|s| agent_error("kill", s))?;
        Ok(())
    }

    async fn delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse, TaskError> {
        if !req.exec_id.is_empty() {
            return fail(Code::UNIMPLEMENTED, "exec processes are not supported yet");
        }
        let container = self.container(&req.id)?;
        let (exit_status, exited_at) = match container.state() {
            State::Running => {
                return fail(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is still running", req.id),
                )
            }
            State::Stopped {
                exit_status,
                exited_at,
            } => (exit_status, exited_at),
            State::Created => (0, timestamp().map_err(|e| anyhow!(e))?),
        };
        if let Ok(mut agent) = self.agent().await {
            if let Err(e) = agent
                .remove_container(ContainerRequest {
                    container_id: req.id.clone(),
                })
                .await
            {
                // The VM may be gone already; the host side is cleaned anyway.
                tracing::warn!(container_id = %req.id, "agent remove: {}", e.message());
            }
        }
        container.abort_outputs();
        let (bundle, share_at, mounted) = (
            container.bundle.clone(),
            container.share_at.clone(),
            container.mounted_bundle_rootfs,
        );
        tokio::task::spawn_blocking(move || {
            rootfs::unmount_rootfs(&bundle, &share_at, mounted);
            let _ = std::fs::remove_dir(&share_at);
            let _ = share_at.parent().map(std::fs::remove_dir);
        })
        .await
        .map_err(|e| anyhow!(e))?;
        self.containers().remove(&req.id);
        tracing::info!(container_id = %req.id, "deleted");
        self.publish(
            containerd_shim_protos::topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                id: req.id.clone(),
                pid: container.pid,
                exit_status,
                exited_at: Some(exited_at.clone()).into(),
                ..Default::default()
            }),
        )
        .await;
        self.stop_vm_if_idle().await;
        Ok(api::DeleteResponse {
            pid: container.pid,
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    /// The VM lives as long as it has containers.
    async fn stop_vm_if_idle(&self) {
        if !self.containers().is_empty() {
            return;
        }
        if let Some(sandbox) = self.sandbox.lock().await.take() {
            sandbox.stop().await;
        }
    }
}

/// Reads the bundle's config.json and points it at the guest's view of the
/// rootfs. What the guest cannot reach is refused, naming the field.
fn guest_spec(bundle: &Path, id: &str) -> anyhow::Result<serde_json::Value> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut spec: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("parsing {}", path.display()))?;
    let Some(root) = spec.get_mut("root").and_then(|r| r.as_object_mut()) else {
        bail!("config.json: root: missing");
    };
    root.insert("path".into(), rootfs::guest_rootfs(id).into());
    if let Some(mounts) = spec.get("mounts").and_then(|m| m.as_array()) {
        for (i, m) in mounts.iter().enumerate() {
            let is_bind = m.get("type").and_then(|t| t.as_str()) == Some("bind")
                || m.get("options")
                    .and_then(|o| o.as_array())
                    .is_some_and(|o| o.iter().any(|v| v == "bind" || v == "rbind"));
            if is_bind {
                bail!(
                    "config.json: mounts[{i}]: bind mounts of host paths ({}) are not supported yet",
                    m.get("source").and_then(|s| s.as_str()).unwrap_or("?")
                );
            }
        }
    }
    Ok(spec)
}

#[async_trait]
impl Task for HuskTask {
    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let id = req.id.clone();
        to_ttrpc(&id, "create", self.inner.create(req).await)
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let id = req.id.clone();
        to_ttrpc(&id, "start", self.inner.start(req).await)
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let container = to_ttrpc(&req.id, "wait", self.inner.container(&req.id))?;
        let (exit_status, exited_at) = container.wait_stopped().await;
        Ok(api::WaitResponse {
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let id = req.id.clone();
        to_ttrpc(&id, "kill", self.inner.kill(req).await)?;
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let id = req.id.clone();
        to_ttrpc(&id, "delete", self.inner.delete(req).await)
    }

    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let c = to_ttrpc(&req.id, "state", self.inner.container(&req.id))?;
        let (status, exit_status, exited_at) = match c.state() {
            State::Created => (TaskStatus::CREATED, 0, None),
            State::Running => (TaskStatus::RUNNING, 0, None),
            State::Stopped {
                exit_status,
                exited_at,
            } => (TaskStatus::STOPPED, exit_status, Some(exited_at)),
        };
        Ok(api::StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: c.pid,
            status: status.into(),
            stdin: c.stdin.clone(),
            stdout: c.stdout.clone(),
            stderr: c.stderr.clone(),
            terminal: false,
            exit_status,
            exited_at: exited_at.into(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let result = async {
            self.inner.container(&req.id)?;
            let pids = self
                .inner
                .agent()
                .await?
                .list_processes(ContainerRequest {
                    container_id: req.id.clone(),
                })
                .await
                .map_err(|s| agent_error("pids", s))?
                .into_inner()
                .pids;
            Ok(api::PidsResponse {
                processes: pids
                    .into_iter()
                    .map(|pid| containerd_shim_protos::types::task::ProcessInfo {
                        pid,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
        }
        .await;
        to_ttrpc(&req.id, "pids", result)
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
        let task_pid = self.inner.container(&req.id).map(|c| c.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        if !self.inner.containers().is_empty() {
            return Ok(api::Empty::new());
        }
        self.inner.stop_vm_if_idle().await;
        self.inner.exit.signal();
        Ok(api::Empty::new())
    }
}
