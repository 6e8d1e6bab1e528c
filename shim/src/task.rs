//! The Task service containerd calls: Create, Start, Exec, Wait, Kill,
//! Delete, State, Pids, Pause, Resume, Connect, CloseIO, Shutdown (and a
//! clear refusal of Checkpoint). Each call becomes work on the
//! host (mounts, FIFOs, the VM) and RPCs to the guest agent.

use crate::container::{Container, Proc, State};
use crate::rootfs;
use crate::sandbox::Sandbox;
use anyhow::anyhow;
use async_trait::async_trait;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::util::timestamp;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::{self, context::Context, Code};
use containerd_shim_protos::types::task::Status as TaskStatus;
use husk_proto::agent::{
    ContainerRequest, CreateContainerRequest, ExecProcessRequest, OutputStream, ResizePtyRequest,
    SignalContainerRequest, UpdateContainerRequest,
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
    socket: String,
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
        socket: String,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> Self {
        let config = husk_config::Config::load_default().map_err(|e| e.to_string());
        HuskTask {
            inner: Arc::new(Inner {
                vm_id,
                namespace,
                socket,
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
        let handler_started = std::time::Instant::now();
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
        let bundle = PathBuf::from(&req.bundle);
        // Checked before anything is mounted or booted: a bad spec costs
        // nothing and leaves nothing.
        let guest =
            crate::spec::prepare(&bundle, &id).map_err(|e| TaskError(Code::INVALID_ARGUMENT, e))?;
        // The pod's VM size, from the sandbox's annotations; checked here so
        // that a bad one fails RunPodSandbox before anything is made.
        let annotations: HashMap<String, String> = guest
            .spec
            .get("annotations")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        let (vcpus, memory_mib) = config
            .pod_size(&annotations)
            .map_err(|e| TaskError(Code::INVALID_ARGUMENT, e.into()))?;
        let mut vm_config = config.clone();
        vm_config.hypervisor.vcpus = vcpus;
        vm_config.hypervisor.memory_mib = memory_mib;
        let shared = rootfs::shared_dir(&config.hypervisor.runtime_dir, &self.vm_id);
        let container_dir = rootfs::host_container_dir(&shared, &id);
        let share_at = container_dir.join("rootfs");
        let mounted_bundle_rootfs = !req.rootfs.is_empty();

        let (mounts, b, s, d) = (
            req.rootfs.clone(),
            bundle.clone(),
            share_at.clone(),
            container_dir.clone(),
        );
        let (host_root, binds) = (guest.host_root.clone(), guest.binds.clone());
        let mounted = tokio::task::spawn_blocking(move || {
            rootfs::mount_rootfs(&mounts, &b, &host_root, &s)?;
            rootfs::mount_binds(&d, &binds)
        })
        .await
        .map_err(|e| anyhow!(e))?;
        let result = match mounted {
            Ok(()) => {
                self.create_in_vm(
                    &vm_config,
                    &req,
                    guest,
                    &share_at,
                    mounted_bundle_rootfs,
                    handler_started,
                )
                .await
            }
            Err(e) => Err(TaskError(Code::INVALID_ARGUMENT, e.into())),
        };
        if result.is_err() {
            rootfs::release(&bundle, &container_dir, mounted_bundle_rootfs);
            self.stop_vm_if_idle().await;
        }
        result
    }

    async fn create_in_vm(
        &self,
        config: &husk_config::Config,
        req: &api::CreateTaskRequest,
        guest: crate::spec::GuestSpec,
        share_at: &Path,
        mounted_bundle_rootfs: bool,
        handler_started: std::time::Instant,
    ) -> Result<api::CreateTaskResponse, TaskError> {
        let id = req.id.clone();
        let boot_started = std::time::Instant::now();
        let mut vm_boot_ms = 0;
        let mut agent = {
            let mut sandbox = self.sandbox.lock().await;
            if sandbox.is_none() {
                *sandbox = Some(
                    Sandbox::start(
                        config,
                        &self.vm_id,
                        guest.netns.as_deref(),
                        guest.cgroups_path.as_deref(),
                    )
                    .await?,
                );
                vm_boot_ms = boot_started.elapsed().as_millis() as u64;
            }
            sandbox.as_ref().map(|s| s.agent.clone()).expect("just set")
        };
        let create_started = std::time::Instant::now();
        let pid = agent
            .create_container(CreateContainerRequest {
                container_id: id.clone(),
                oci_spec_json: serde_json::to_vec(&guest.spec).map_err(|e| anyhow!(e))?,
                stdin: !req.stdin.is_empty(),
            })
            .await
            .map_err(|s| agent_error("husk create failed", s))?
            .into_inner()
            .pid;
        let agent_create_ms = create_started.elapsed().as_millis() as u64;

        let stdio = [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()];
        let outputs = spawn_relays(&agent, &id, "", &stdio);
        let container = Arc::new(Container::new(
            id.clone(),
            PathBuf::from(&req.bundle),
            share_at.to_owned(),
            mounted_bundle_rootfs,
            Proc::new(String::new(), pid, stdio, req.terminal, outputs),
        ));
        self.containers().insert(id.clone(), container);
        // The timings feed the ctr_run benchmark's breakdown.
        let handler_ms = handler_started.elapsed().as_millis() as u64;
        tracing::info!(container_id = %id, pid, vm_boot_ms, agent_create_ms, handler_ms, "created");
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

    /// The process `exec_id` ("" for the init) of container `id`.
    fn process(&self, id: &str, exec_id: &str) -> Result<(Arc<Container>, Arc<Proc>), TaskError> {
        let container = self.container(id)?;
        match container.process(exec_id) {
            Some(p) => Ok((container, p)),
            None => fail(
                Code::NOT_FOUND,
                format!("process {exec_id} of {id} not found"),
            ),
        }
    }

    async fn exec(&self, req: api::ExecProcessRequest) -> Result<(), TaskError> {
        let container = self.container(&req.id)?;
        if container.has_exec(&req.exec_id) {
            return fail(
                Code::ALREADY_EXISTS,
                format!("exec {} already exists", req.exec_id),
            );
        }
        let process_json = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| TaskError(Code::INVALID_ARGUMENT, anyhow!("exec: no process spec")))?;
        let mut agent = self.agent().await?;
        let pid = agent
            .exec_process(ExecProcessRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                process_json,
                stdin: !req.stdin.is_empty(),
            })
            .await
            .map_err(|s| agent_error("husk exec failed", s))?
            .into_inner()
            .pid;
        let stdio = [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()];
        let outputs = spawn_relays(&agent, &req.id, &req.exec_id, &stdio);
        container.add_exec(Proc::new(
            req.exec_id.clone(),
            pid,
            stdio,
            req.terminal,
            outputs,
        ));
        tracing::info!(container_id = %req.id, exec_id = %req.exec_id, pid, "exec created");
        self.publish(
            containerd_shim_protos::topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(())
    }

    async fn start(
        self: &Arc<Self>,
        req: api::StartRequest,
    ) -> Result<api::StartResponse, TaskError> {
        let handler_started = std::time::Instant::now();
        let (container, proc) = self.process(&req.id, &req.exec_id)?;
        if proc.state() != State::Created {
            return fail(
                Code::FAILED_PRECONDITION,
                format!(
                    "process {} of {} is not in the created state",
                    req.exec_id, req.id
                ),
            );
        }
        let mut agent = self.agent().await?;
        let request = ContainerRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
        };
        let start_started = std::time::Instant::now();
        agent
            .start_container(request.clone())
            .await
            .map_err(|s| agent_error("husk start failed", s))?;
        let agent_start_ms = start_started.elapsed().as_millis() as u64;
        proc.set_state(State::Running);
        let handler_ms = handler_started.elapsed().as_millis() as u64;
        tracing::info!(container_id = %req.id, exec_id = %req.exec_id, pid = proc.pid, agent_start_ms, handler_ms, "started");
        let (topic, event): (&str, Box<dyn MessageDyn>) = if req.exec_id.is_empty() {
            (
                containerd_shim_protos::topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid: proc.pid,
                    ..Default::default()
                }),
            )
        } else {
            (
                containerd_shim_protos::topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid: proc.pid,
                    ..Default::default()
                }),
            )
        };
        self.publish(topic, event).await;

        let oom_watch = req
            .exec_id
            .is_empty()
            .then(|| tokio::spawn(self.clone().watch_oom(agent.clone(), req.id.clone())));
        let this = self.clone();
        let watched = proc.clone();
        tokio::spawn(async move {
            let exit_status = match agent.wait_container(request).await {
                Ok(r) => r.into_inner().exit_status,
                Err(e) => {
                    // The VM died under the container: report it failed.
                    tracing::warn!(container_id = %container.id, exec_id = %watched.exec_id, "lost the process: {}", e.message());
                    watched.abort_outputs();
                    255
                }
            };
            watched.drain_outputs().await;
            // The agent ends the OOM stream right after the exit, so an OOM
            // kill is published before the exit it caused, as runc does.
            if let Some(watch) = oom_watch {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), watch).await;
            }
            let exited_at = timestamp().unwrap_or_default();
            watched.set_state(State::Stopped {
                exit_status,
                exited_at: exited_at.clone(),
            });
            tracing::info!(container_id = %container.id, exec_id = %watched.exec_id, exit_status, "exited");
            let id = if watched.exec_id.is_empty() {
                container.id.clone()
            } else {
                watched.exec_id.clone()
            };
            this.publish(
                containerd_shim_protos::topics::TASK_EXIT_EVENT_TOPIC,
                Box::new(TaskExit {
                    container_id: container.id.clone(),
                    id,
                    pid: watched.pid,
                    exit_status,
                    exited_at: Some(exited_at).into(),
                    ..Default::default()
                }),
            )
            .await;
        });
        Ok(api::StartResponse {
            pid: proc.pid,
            ..Default::default()
        })
    }

    async fn kill(&self, req: api::KillRequest) -> Result<(), TaskError> {
        let (_, proc) = self.process(&req.id, &req.exec_id)?;
        if matches!(proc.state(), State::Stopped { .. }) {
            return fail(Code::NOT_FOUND, "process already finished");
        }
        self.agent()
            .await?
            .signal_container(SignalContainerRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                signal: req.signal,
                all: req.all,
            })
            .await
            .map_err(|s| agent_error("kill", s))?;
        Ok(())
    }

    async fn delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse, TaskError> {
        if !req.exec_id.is_empty() {
            return self.delete_exec(req).await;
        }
        let container = self.container(&req.id)?;
        let (exit_status, exited_at) = match container.init.state() {
            State::Running | State::Paused => {
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
                    exec_id: String::new(),
                })
                .await
            {
                // The VM may be gone already; the host side is cleaned anyway.
                tracing::warn!(container_id = %req.id, "agent remove: {}", e.message());
            }
        }
        for p in container
            .all_execs()
            .into_iter()
            .chain([container.init.clone()])
        {
            p.abort_outputs();
        }
        let (bundle, share_at, mounted) = (
            container.bundle.clone(),
            container.share_at.clone(),
            container.mounted_bundle_rootfs,
        );
        tokio::task::spawn_blocking(move || {
            if let Some(container_dir) = share_at.parent() {
                rootfs::release(&bundle, container_dir, mounted);
            }
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
                pid: container.init.pid,
                exit_status,
                exited_at: Some(exited_at.clone()).into(),
                ..Default::default()
            }),
        )
        .await;
        self.stop_vm_if_idle().await;
        Ok(api::DeleteResponse {
            pid: container.init.pid,
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    async fn delete_exec(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse, TaskError> {
        let (container, proc) = self.process(&req.id, &req.exec_id)?;
        let (exit_status, exited_at) = match proc.state() {
            State::Running | State::Paused => {
                return fail(
                    Code::FAILED_PRECONDITION,
                    format!("exec {} is still running", req.exec_id),
                )
            }
            State::Stopped {
                exit_status,
                exited_at,
            } => (exit_status, exited_at),
            State::Created => (0, timestamp().map_err(|e| anyhow!(e))?),
        };
        let mut agent = self.agent().await?;
        if let Err(e) = agent
            .remove_container(ContainerRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
            })
            .await
        {
            tracing::warn!(container_id = %req.id, exec_id = %req.exec_id, "agent remove: {}", e.message());
        }
        proc.abort_outputs();
        container.remove_exec(&req.exec_id);
        Ok(api::DeleteResponse {
            pid: proc.pid,
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    /// Freezes (pause) or thaws (resume) the whole container in the guest.
    async fn set_paused(&self, id: &str, pause: bool) -> Result<(), TaskError> {
        let container = self.container(id)?;
        let (from, to) = if pause {
            (State::Running, State::Paused)
        } else {
            (State::Paused, State::Running)
        };
        if container.init.state() != from {
            return fail(
                Code::FAILED_PRECONDITION,
                format!("container {id} is not {from:?}"),
            );
        }
        let request = ContainerRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        };
        let mut agent = self.agent().await?;
        let result = if pause {
            agent.pause_container(request).await
        } else {
            agent.resume_container(request).await
        };
        result.map_err(|s| agent_error(if pause { "pause" } else { "resume" }, s))?;
        // Only a running process becomes paused: one that exited meanwhile
        // stays stopped.
        if container.init.state() == from {
            container.init.set_state(to);
        }
        let (topic, event): (&str, Box<dyn MessageDyn>) = if pause {
            (
                containerd_shim_protos::topics::TASK_PAUSED_EVENT_TOPIC,
                Box::new(TaskPaused {
                    container_id: id.to_owned(),
                    ..Default::default()
                }),
            )
        } else {
            (
                containerd_shim_protos::topics::TASK_RESUMED_EVENT_TOPIC,
                Box::new(TaskResumed {
                    container_id: id.to_owned(),
                    ..Default::default()
                }),
            )
        };
        self.publish(topic, event).await;
        tracing::info!(container_id = id, paused = pause, "freezer");
        Ok(())
    }

    /// Publishes TaskOOM for each OOM kill in container `id` until its init
    /// exits.
    async fn watch_oom(
        self: Arc<Self>,
        mut agent: husk_proto::agent::agent_client::AgentClient<tonic::transport::Channel>,
        id: String,
    ) {
        let request = ContainerRequest {
            container_id: id.clone(),
            exec_id: String::new(),
        };
        let mut events = match agent.watch_oom(request).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                tracing::warn!(container_id = %id, "cannot watch for OOM kills: {}", e.message());
                return;
            }
        };
        while let Ok(Some(event)) = events.message().await {
            tracing::info!(container_id = %id, oom_kill_count = event.oom_kill_count, "OOM kill");
            self.publish(
                containerd_shim_protos::topics::TASK_OOM_EVENT_TOPIC,
                Box::new(TaskOOM {
                    container_id: id.clone(),
                    ..Default::default()
                }),
            )
            .await;
        }
    }

    async fn resize_pty(&self, req: api::ResizePtyRequest) -> Result<(), TaskError> {
        let (_, proc) = self.process(&req.id, &req.exec_id)?;
        if !proc.terminal {
            return fail(
                Code::FAILED_PRECONDITION,
                format!("process {} of {} has no terminal", req.exec_id, req.id),
            );
        }
        self.agent()
            .await?
            .resize_pty(ResizePtyRequest {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                width: req.width,
                height: req.height,
            })
            .await
            .map_err(|s| agent_error("resize", s))?;
        Ok(())
    }

    async fn stats(&self, id: &str) -> Result<api::StatsResponse, TaskError> {
        self.container(id)?;
        let stats = self
            .agent()
            .await?
            .container_stats(ContainerRequest {
                container_id: id.to_owned(),
                exec_id: String::new(),
            })
            .await
            .map_err(|s| agent_error("stats", s))?
            .into_inner();
        let any = crate::metrics::to_any(&stats).map_err(|e| anyhow!(e))?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    /// New linux.resources for the container's cgroup in the guest.
    async fn update(&self, req: api::UpdateTaskRequest) -> Result<(), TaskError> {
        self.container(&req.id)?;
        let Some(resources) = req.resources.as_ref() else {
            return fail(Code::INVALID_ARGUMENT, "update: no resources given");
        };
        if !resources.type_url.ends_with("/LinuxResources") {
            return fail(
                Code::INVALID_ARGUMENT,
                format!(
                    "update: resources of type {:?}, expected the OCI LinuxResources",
                    resources.type_url
                ),
            );
        }
        self.agent()
            .await?
            .update_container(UpdateContainerRequest {
                container_id: req.id.clone(),
                resources_json: resources.value.clone(),
            })
            .await
            .map_err(|s| TaskError(Code::INVALID_ARGUMENT, agent_error("update", s)))?;
        tracing::info!(container_id = %req.id, "resources updated");
        Ok(())
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

/// Starts the relays for a process's stdio ([stdin, stdout, stderr] FIFO
/// paths, empty for none); returns the output relays, which exit drains.
fn spawn_relays(
    agent: &husk_proto::agent::agent_client::AgentClient<tonic::transport::Channel>,
    id: &str,
    exec_id: &str,
    [stdin, stdout, stderr]: &[String; 3],
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut outputs = Vec::new();
    for (path, stream) in [
        (stdout, OutputStream::Stdout),
        (stderr, OutputStream::Stderr),
    ] {
        if path.is_empty() {
            continue;
        }
        let relay = crate::io::relay_output(
            agent.clone(),
            id.into(),
            exec_id.into(),
            stream,
            path.clone(),
        );
        let (cid, eid) = (id.to_owned(), exec_id.to_owned());
        outputs.push(tokio::spawn(async move {
            if let Err(e) = relay.await {
                tracing::warn!(container_id = %cid, exec_id = %eid, ?stream, "output relay: {e:#}");
            }
        }));
    }
    if !stdin.is_empty() {
        let relay = crate::io::relay_stdin(agent.clone(), id.into(), exec_id.into(), stdin.clone());
        let (cid, eid) = (id.to_owned(), exec_id.to_owned());
        tokio::spawn(async move {
            if let Err(e) = relay.await {
                tracing::debug!(container_id = %cid, exec_id = %eid, "stdin relay: {e:#}");
            }
        });
    }
    outputs
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
        let (_, proc) = to_ttrpc(&req.id, "wait", self.inner.process(&req.id, &req.exec_id))?;
        let (exit_status, exited_at) = proc.wait_stopped().await;
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
        let (c, p) = to_ttrpc(&req.id, "state", self.inner.process(&req.id, &req.exec_id))?;
        let (status, exit_status, exited_at) = match p.state() {
            State::Created => (TaskStatus::CREATED, 0, None),
            State::Running => (TaskStatus::RUNNING, 0, None),
            State::Paused => (TaskStatus::PAUSED, 0, None),
            State::Stopped {
                exit_status,
                exited_at,
            } => (TaskStatus::STOPPED, exit_status, Some(exited_at)),
        };
        Ok(api::StateResponse {
            id: c.id.clone(),
            bundle: c.bundle.display().to_string(),
            pid: p.pid,
            status: status.into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit_status,
            exited_at: exited_at.into(),
            exec_id: p.exec_id.clone(),
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
                    exec_id: String::new(),
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

    async fn exec(
        &self,
        _: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let id = req.id.clone();
        to_ttrpc(&id, "exec", self.inner.exec(req).await)?;
        Ok(api::Empty::new())
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        to_ttrpc(&req.id, "pause", self.inner.set_paused(&req.id, true).await)?;
        Ok(api::Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<api::Empty> {
        to_ttrpc(
            &req.id,
            "resume",
            self.inner.set_paused(&req.id, false).await,
        )?;
        Ok(api::Empty::new())
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        to_ttrpc(
            &req.id,
            "checkpoint",
            fail(
                Code::UNIMPLEMENTED,
                "checkpoint is not supported by husk: the container's state lives in its VM",
            ),
        )
    }

    async fn resize_pty(
        &self,
        _: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let id = req.id.clone();
        to_ttrpc(&id, "resize_pty", self.inner.resize_pty(req).await)?;
        Ok(api::Empty::new())
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        to_ttrpc(&req.id, "stats", self.inner.stats(&req.id).await)
    }

    async fn update(
        &self,
        _: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let id = req.id.clone();
        to_ttrpc(&id, "update", self.inner.update(req).await)?;
        Ok(api::Empty::new())
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
        let task_pid = self
            .inner
            .container(&req.id)
            .map(|c| c.init.pid)
            .unwrap_or(0);
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
        // The crate removes the socket after exit by reading the bundle's
        // address file, which containerd may have deleted with the bundle
        // by then; remove it here while the path is known for sure.
        let path = self.inner.socket.trim_start_matches("unix://");
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(socket = path, %e, "cannot remove the shim socket");
            }
        }
        self.inner.exit.signal();
        Ok(api::Empty::new())
    }
}
