//! The container manager: the state machine behind the Task service. It
//! owns the pod's containers and their processes, drives the guest through
//! [`AgentApi`] and the host through [`Pod`], and reports what happens as
//! [`Event`]s. Generic over the pod, so it is unit-tested against an
//! in-memory agent (`crate::fake`).
//!
//! Every agent call that answers has a deadline (`[timeouts.*]
//! agent_call_secs`); a SIGKILL that the guest does not carry out within
//! `kill_grace_secs` stops the VM, and the pod's processes are reported
//! killed: no guest keeps a pod alive against containerd.

use crate::task::agent::{AgentApi, AgentError};
use crate::task::error::TaskError;
use crate::task::events::{Event, EventSink};
use crate::task::pod::{ContainerPlan, Pod, PodTimeouts};
use crate::task::process::{Container, Process, State};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::types::task::Status as TaskStatus;
use husk_proto::agent::{
    ContainerRequest, CreateContainerRequest, ExecProcessRequest, OutputStream, ResizePtyRequest,
    SignalContainerRequest, UpdateContainerRequest,
};
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SIGKILL: u32 = 9;
/// Exit status of a process killed by SIGKILL, as runc reports it.
pub const KILLED: u32 = 128 + SIGKILL;
/// Exit status of a process whose VM died under it.
pub const LOST: u32 = 255;
/// Least time between two TaskOOM events of one container: a guest
/// reporting OOM kills without end does not flood containerd.
const OOM_EVENT_INTERVAL: Duration = Duration::from_millis(100);
/// How long an exit waits for the OOM stream to end (so TaskOOM comes
/// before TaskExit) before it is reported anyway.
const OOM_BEFORE_EXIT: Duration = Duration::from_secs(5);

pub struct Manager<P: Pod> {
    inner: Arc<Inner<P>>,
}

impl<P: Pod> Clone for Manager<P> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<P: Pod> {
    /// The pod's id: the VM's, and the sandbox container's.
    pod_id: String,
    pod: P,
    events: Arc<dyn EventSink>,
    timeouts: PodTimeouts,
    /// The VM's agent, once booted. Held across a boot, so two creates do
    /// not boot two VMs.
    agent: tokio::sync::Mutex<Option<P::Agent>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Set when the shim stopped the VM to carry out a SIGKILL: the
    /// processes it ended are reported killed (137), not lost.
    vm_killed: AtomicBool,
}

fn now() -> Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut t = Timestamp::new();
    t.seconds = d.as_secs() as i64;
    t.nanos = d.subsec_nanos() as i32;
    t
}

fn request(id: &str, exec_id: &str) -> ContainerRequest {
    ContainerRequest {
        container_id: id.to_owned(),
        exec_id: exec_id.to_owned(),
    }
}

impl<P: Pod> Manager<P> {
    pub fn new(pod_id: String, pod: P, events: Arc<dyn EventSink>) -> Self {
        let timeouts = pod.timeouts();
        Self {
            inner: Arc::new(Inner {
                pod_id,
                pod,
                events,
                timeouts,
                agent: tokio::sync::Mutex::new(None),
                containers: Mutex::default(),
                vm_killed: AtomicBool::new(false),
            }),
        }
    }

    pub async fn create(
        &self,
        req: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, TaskError> {
        self.inner.create(req).await
    }

    pub async fn start(&self, req: api::StartRequest) -> Result<api::StartResponse, TaskError> {
        self.inner.start(&req.id, &req.exec_id).await
    }

    pub async fn exec(&self, req: api::ExecProcessRequest) -> Result<api::Empty, TaskError> {
        self.inner.exec(req).await.map(|()| api::Empty::new())
    }

    pub async fn wait(&self, req: api::WaitRequest) -> Result<api::WaitResponse, TaskError> {
        let (_, process) = self.inner.process(&req.id, &req.exec_id)?;
        let (exit_status, exited_at) = process.wait_stopped().await;
        Ok(api::WaitResponse {
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    pub async fn kill(&self, req: api::KillRequest) -> Result<api::Empty, TaskError> {
        self.inner.kill(req).await.map(|()| api::Empty::new())
    }

    pub async fn delete(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse, TaskError> {
        if req.exec_id.is_empty() {
            self.inner.delete(&req.id).await
        } else {
            self.inner.delete_exec(&req.id, &req.exec_id).await
        }
    }

    pub fn state(&self, req: api::StateRequest) -> Result<api::StateResponse, TaskError> {
        let (c, p) = self.inner.process(&req.id, &req.exec_id)?;
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

    pub async fn pids(&self, req: api::PidsRequest) -> Result<api::PidsResponse, TaskError> {
        self.inner.container(&req.id)?;
        let agent = self.inner.agent().await?;
        let pids = self
            .inner
            .call("pids", agent.list_processes(request(&req.id, "")))
            .await?;
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

    pub async fn pause(&self, req: api::PauseRequest) -> Result<api::Empty, TaskError> {
        self.inner.set_paused(&req.id, true).await?;
        Ok(api::Empty::new())
    }

    pub async fn resume(&self, req: api::ResumeRequest) -> Result<api::Empty, TaskError> {
        self.inner.set_paused(&req.id, false).await?;
        Ok(api::Empty::new())
    }

    pub async fn resize_pty(&self, req: api::ResizePtyRequest) -> Result<api::Empty, TaskError> {
        let (_, process) = self.inner.process(&req.id, &req.exec_id)?;
        if !process.terminal {
            return Err(TaskError::WrongState(format!(
                "process {} of {} has no terminal",
                req.exec_id, req.id
            )));
        }
        let agent = self.inner.agent().await?;
        let resize = ResizePtyRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            width: req.width,
            height: req.height,
        };
        self.inner.call("resize", agent.resize_pty(resize)).await?;
        Ok(api::Empty::new())
    }

    pub async fn stats(&self, req: api::StatsRequest) -> Result<api::StatsResponse, TaskError> {
        self.inner.container(&req.id)?;
        let agent = self.inner.agent().await?;
        let stats = self
            .inner
            .call("stats", agent.stats(request(&req.id, "")))
            .await?;
        let any = crate::task::stats::to_any(&stats)
            .map_err(|e| TaskError::Host(anyhow::Error::new(e).context("encoding metrics")))?;
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    /// New linux.resources for the container's cgroup in the guest.
    pub async fn update(&self, req: api::UpdateTaskRequest) -> Result<api::Empty, TaskError> {
        self.inner.container(&req.id)?;
        let Some(resources) = req.resources.as_ref() else {
            return Err(TaskError::Invalid(anyhow::anyhow!(
                "update: no resources given"
            )));
        };
        if !resources.type_url.ends_with("/LinuxResources") {
            return Err(TaskError::Invalid(anyhow::anyhow!(
                "update: resources of type {:?}, expected the OCI LinuxResources",
                resources.type_url
            )));
        }
        let agent = self.inner.agent().await?;
        let update = UpdateContainerRequest {
            container_id: req.id.clone(),
            resources_json: resources.value.clone(),
        };
        match self.inner.call("update", agent.update(update)).await {
            // The guest refused the resources themselves.
            Err(TaskError::Agent {
                source: source @ AgentError::Status { .. },
                ..
            }) => return Err(TaskError::Invalid(anyhow::anyhow!("update: {source}"))),
            other => other?,
        }
        tracing::info!(container_id = %req.id, "resources updated");
        Ok(api::Empty::new())
    }

    pub fn connect(&self, req: api::ConnectRequest) -> api::ConnectResponse {
        let task_pid = self
            .inner
            .container(&req.id)
            .map(|c| c.init.pid)
            .unwrap_or(0);
        api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        }
    }

    /// containerd's Shutdown: true when the shim may exit (no container
    /// left); the VM is stopped then.
    pub async fn shutdown(&self) -> bool {
        if !self.inner.containers().is_empty() {
            return false;
        }
        self.inner.stop_vm_if_idle().await;
        true
    }
}

impl<P: Pod> Inner<P> {
    fn containers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Container>>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, TaskError> {
        self.containers()
            .get(id)
            .cloned()
            .ok_or_else(|| TaskError::ContainerNotFound(id.to_owned()))
    }

    /// The process `exec_id` ("" for the init) of container `id`.
    fn process(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(Arc<Container>, Arc<Process>), TaskError> {
        let container = self.container(id)?;
        match container.process(exec_id) {
            Some(p) => Ok((container, p)),
            None => Err(TaskError::ProcessNotFound {
                id: id.to_owned(),
                exec_id: exec_id.to_owned(),
            }),
        }
    }

    async fn agent(&self) -> Result<P::Agent, TaskError> {
        self.agent.lock().await.clone().ok_or(TaskError::NoVm)
    }

    /// One agent call under the pod's deadline, its error in `what`'s words.
    async fn call<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, AgentError>>,
    ) -> Result<T, TaskError> {
        let deadline = self.timeouts.agent_call;
        let started = Instant::now();
        let result = match tokio::time::timeout(deadline, call).await {
            Ok(result) => result.map_err(TaskError::agent(what)),
            Err(_) => Err(TaskError::agent(what)(AgentError::Timeout(deadline))),
        };
        crate::telemetry::calls::record(what, started.elapsed(), result.is_ok());
        result
    }

    async fn create(
        self: &Arc<Self>,
        req: api::CreateTaskRequest,
    ) -> Result<api::CreateTaskResponse, TaskError> {
        let started = Instant::now();
        let id = req.id.clone();
        if self.containers().contains_key(&id) {
            return Err(TaskError::ContainerExists(id));
        }
        // Checked before anything is mounted or booted: a bad spec costs
        // nothing and leaves nothing.
        let plan = self.pod.plan(&req)?;
        self.pod.share(&id, &req, &plan).await?;
        let result = self.create_in_vm(&req, plan, started).await;
        if result.is_err() {
            self.pod.unshare(&id).await;
            self.stop_vm_if_idle().await;
        }
        result
    }

    async fn create_in_vm(
        self: &Arc<Self>,
        req: &api::CreateTaskRequest,
        plan: P::Plan,
        started: Instant,
    ) -> Result<api::CreateTaskResponse, TaskError> {
        let id = req.id.clone();
        let boot_started = Instant::now();
        let mut vm_boot_ms = 0;
        let agent = {
            let mut agent = self.agent.lock().await;
            match agent.as_ref() {
                Some(a) => a.clone(),
                None => {
                    tracing::info!(pod_id = %self.pod_id, container_id = %id, "VM booting");
                    let booted = self.pod.boot(&plan).await.inspect_err(|e| {
                        tracing::error!(pod_id = %self.pod_id, container_id = %id, error = %e, "VM failed to boot");
                    })?;
                    vm_boot_ms = boot_started.elapsed().as_millis() as u64;
                    tracing::info!(pod_id = %self.pod_id, container_id = %id, vm_boot_ms, "VM running");
                    *agent = Some(booted.clone());
                    booted
                }
            }
        };
        let spec_json = serde_json::to_vec(plan.agent_spec())
            .map_err(|e| TaskError::Host(anyhow::Error::new(e).context("serializing the spec")))?;
        let create_started = Instant::now();
        let pid = self
            .call(
                "husk create failed",
                agent.create_container(CreateContainerRequest {
                    container_id: id.clone(),
                    oci_spec_json: spec_json,
                    stdin: !req.stdin.is_empty(),
                }),
            )
            .await?;
        let agent_create_ms = create_started.elapsed().as_millis() as u64;
        let stdio = [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()];
        let outputs = spawn_relays(&agent, &id, "", &stdio);
        let container = Arc::new(Container::new(
            id.clone(),
            PathBuf::from(&req.bundle),
            Process::new(String::new(), pid, stdio.clone(), req.terminal, outputs),
        ));
        self.containers().insert(id.clone(), container);
        // The timings feed the ctr_run benchmark's breakdown.
        let handler_ms = started.elapsed().as_millis() as u64;
        tracing::info!(pod_id = %self.pod_id, container_id = %id, pid, vm_boot_ms, agent_create_ms, handler_ms, "created");
        self.events.send(Event::Create {
            container_id: id,
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            stdio,
            terminal: req.terminal,
            pid,
        });
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn exec(self: &Arc<Self>, req: api::ExecProcessRequest) -> Result<(), TaskError> {
        let container = self.container(&req.id)?;
        if container.has_exec(&req.exec_id) {
            return Err(TaskError::ExecExists(req.exec_id));
        }
        let process_json = req
            .spec
            .as_ref()
            .map(|any| any.value.clone())
            .ok_or_else(|| TaskError::Invalid(anyhow::anyhow!("exec: no process spec")))?;
        let agent = self.agent().await?;
        let pid = self
            .call(
                "husk exec failed",
                agent.exec_process(ExecProcessRequest {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    process_json,
                    stdin: !req.stdin.is_empty(),
                }),
            )
            .await?;
        let stdio = [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()];
        let outputs = spawn_relays(&agent, &req.id, &req.exec_id, &stdio);
        container.add_exec(Process::new(
            req.exec_id.clone(),
            pid,
            stdio,
            req.terminal,
            outputs,
        ));
        tracing::info!(pod_id = %self.pod_id, container_id = %req.id, exec_id = %req.exec_id, pid, "exec created");
        self.events.send(Event::ExecAdded {
            container_id: req.id,
            exec_id: req.exec_id,
        });
        Ok(())
    }

    async fn start(
        self: &Arc<Self>,
        id: &str,
        exec_id: &str,
    ) -> Result<api::StartResponse, TaskError> {
        let started = Instant::now();
        let (container, process) = self.process(id, exec_id)?;
        if process.state() != State::Created {
            return Err(TaskError::WrongState(format!(
                "process {exec_id} of {id} is not in the created state"
            )));
        }
        let agent = self.agent().await?;
        let agent_started = Instant::now();
        self.call("husk start failed", agent.start(request(id, exec_id)))
            .await?;
        let agent_start_ms = agent_started.elapsed().as_millis() as u64;
        process.set_state(State::Running);
        let handler_ms = started.elapsed().as_millis() as u64;
        tracing::info!(pod_id = %self.pod_id, container_id = id, exec_id, pid = process.pid, agent_start_ms, handler_ms, "started");
        self.events.send(if exec_id.is_empty() {
            Event::Start {
                container_id: id.to_owned(),
                pid: process.pid,
            }
        } else {
            Event::ExecStarted {
                container_id: id.to_owned(),
                exec_id: exec_id.to_owned(),
                pid: process.pid,
            }
        });
        let oom_watch = exec_id
            .is_empty()
            .then(|| tokio::spawn(self.clone().watch_oom(agent.clone(), id.to_owned())));
        tokio::spawn(
            self.clone()
                .watch_exit(agent, container, process.clone(), oom_watch),
        );
        Ok(api::StartResponse {
            pid: process.pid,
            ..Default::default()
        })
    }

    /// Waits for the process's exit, drains its output, and reports it.
    async fn watch_exit(
        self: Arc<Self>,
        agent: P::Agent,
        container: Arc<Container>,
        process: Arc<Process>,
        oom_watch: Option<tokio::task::JoinHandle<()>>,
    ) {
        let exit_status = match agent.wait(request(&container.id, &process.exec_id)).await {
            Ok(status) => status,
            Err(e) => {
                // The VM died under the process, or the shim stopped it.
                let status = if self.vm_killed.load(Ordering::SeqCst) {
                    KILLED
                } else {
                    LOST
                };
                tracing::warn!(pod_id = %self.pod_id, container_id = %container.id, exec_id = %process.exec_id, exit_status = status, "lost the process: {e}");
                process.abort_outputs();
                status
            }
        };
        process.drain_outputs().await;
        // The agent ends the OOM stream right after the exit, so an OOM
        // kill is published before the exit it caused, as runc does.
        if let Some(watch) = oom_watch {
            let _ = tokio::time::timeout(OOM_BEFORE_EXIT, watch).await;
        }
        self.report_exit(&container, &process, exit_status);
    }

    /// Marks the process stopped and publishes its TaskExit, once.
    fn report_exit(&self, container: &Container, process: &Process, exit_status: u32) {
        if matches!(process.state(), State::Stopped { .. }) {
            return;
        }
        let exited_at = now();
        process.set_state(State::Stopped {
            exit_status,
            exited_at: exited_at.clone(),
        });
        tracing::info!(pod_id = %self.pod_id, container_id = %container.id, exec_id = %process.exec_id, exit_status, "exited");
        let id = if process.exec_id.is_empty() {
            container.id.clone()
        } else {
            process.exec_id.clone()
        };
        self.events.send(Event::Exit {
            container_id: container.id.clone(),
            id,
            pid: process.pid,
            exit_status,
            exited_at,
        });
    }

    /// Publishes TaskOOM for each OOM kill in container `id` until its init
    /// exits, at most one per [`OOM_EVENT_INTERVAL`].
    async fn watch_oom(self: Arc<Self>, agent: P::Agent, id: String) {
        use tokio_stream::StreamExt;
        let mut events = match self
            .call("watch OOM", agent.watch_oom(request(&id, "")))
            .await
        {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(pod_id = %self.pod_id, container_id = %id, "cannot watch for OOM kills: {e}");
                return;
            }
        };
        let mut last: Option<Instant> = None;
        while let Some(Ok(count)) = events.next().await {
            if last.is_some_and(|t| t.elapsed() < OOM_EVENT_INTERVAL) {
                continue;
            }
            last = Some(Instant::now());
            tracing::info!(pod_id = %self.pod_id, container_id = %id, oom_kill_count = count, "OOM kill");
            self.events.send(Event::Oom {
                container_id: id.clone(),
            });
        }
    }

    async fn kill(self: &Arc<Self>, req: api::KillRequest) -> Result<(), TaskError> {
        let (container, process) = self.process(&req.id, &req.exec_id)?;
        if matches!(process.state(), State::Stopped { .. }) {
            return Err(TaskError::ProcessFinished);
        }
        let agent = self.agent().await?;
        let signal = SignalContainerRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            signal: req.signal,
            all: req.all,
        };
        let result = self.call("kill", agent.signal(signal)).await;
        if req.signal != SIGKILL || !req.exec_id.is_empty() {
            return result;
        }
        // SIGKILL to a container: it is gone within the grace period, or
        // the VM is stopped, whatever the guest says or does not say.
        if let Err(e) = &result {
            tracing::warn!(pod_id = %self.pod_id, container_id = %req.id, "the agent did not take SIGKILL ({e}); stopping the VM");
            self.kill_vm().await;
            return Ok(());
        }
        let this = self.clone();
        tokio::spawn(async move {
            let grace = this.timeouts.kill_grace;
            if tokio::time::timeout(grace, process.wait_stopped())
                .await
                .is_err()
            {
                tracing::warn!(pod_id = %this.pod_id, container_id = %container.id, ?grace, "SIGKILL had no effect in the guest; stopping the VM");
                this.kill_vm().await;
            }
        });
        Ok(())
    }

    /// Stops the VM from the host and reports every process still running
    /// as killed.
    async fn kill_vm(&self) {
        self.vm_killed.store(true, Ordering::SeqCst);
        self.agent.lock().await.take();
        self.pod.stop().await;
        let containers: Vec<_> = self.containers().values().cloned().collect();
        for c in containers {
            for p in c.all_execs().into_iter().chain([c.init.clone()]) {
                if !matches!(p.state(), State::Stopped { .. } | State::Created) {
                    p.abort_outputs();
                    self.report_exit(&c, &p, KILLED);
                }
            }
        }
    }

    async fn delete(self: &Arc<Self>, id: &str) -> Result<api::DeleteResponse, TaskError> {
        let container = self.container(id)?;
        let (exit_status, exited_at) = deletable(&container.init, || format!("container {id}"))?;
        self.remove_in_guest(id, "").await;
        for p in container
            .all_execs()
            .into_iter()
            .chain([container.init.clone()])
        {
            p.abort_outputs();
        }
        self.pod.unshare(id).await;
        self.containers().remove(id);
        tracing::info!(pod_id = %self.pod_id, container_id = id, "deleted");
        self.events.send(Event::Delete {
            container_id: id.to_owned(),
            pid: container.init.pid,
            exit_status,
            exited_at: exited_at.clone(),
        });
        if id == self.pod_id {
            // The sandbox is gone: so is the pod, whatever is left in it.
            self.end_pod().await;
        }
        self.stop_vm_if_idle().await;
        Ok(api::DeleteResponse {
            pid: container.init.pid,
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    /// After the sandbox container is deleted: containers containerd did
    /// not delete first are killed with the VM and their files released.
    async fn end_pod(&self) {
        let left: Vec<_> = self.containers().values().cloned().collect();
        if left.is_empty() {
            return;
        }
        tracing::warn!(pod_id = %self.pod_id, left = left.len(), "the sandbox was deleted before its containers; stopping the VM");
        self.kill_vm().await;
        for c in left {
            self.pod.unshare(&c.id).await;
            self.containers().remove(&c.id);
        }
    }

    async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<api::DeleteResponse, TaskError> {
        let (container, process) = self.process(id, exec_id)?;
        let (exit_status, exited_at) = deletable(&process, || format!("exec {exec_id}"))?;
        self.remove_in_guest(id, exec_id).await;
        process.abort_outputs();
        container.remove_exec(exec_id);
        Ok(api::DeleteResponse {
            pid: process.pid,
            exit_status,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    /// Removes a process from the guest; the VM may be gone already, and
    /// the host side is cleaned anyway.
    async fn remove_in_guest(&self, id: &str, exec_id: &str) {
        if let Ok(agent) = self.agent().await {
            if let Err(e) = self
                .call("agent remove", agent.remove(request(id, exec_id)))
                .await
            {
                tracing::warn!(pod_id = %self.pod_id, container_id = id, exec_id, "{e}");
            }
        }
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
            return Err(TaskError::WrongState(format!(
                "container {id} is not {from:?}"
            )));
        }
        let agent = self.agent().await?;
        if pause {
            self.call("pause", agent.pause(request(id, ""))).await?;
        } else {
            self.call("resume", agent.resume(request(id, ""))).await?;
        }
        // Only a running process becomes paused: one that exited meanwhile
        // stays stopped.
        if container.init.state() == from {
            container.init.set_state(to);
        }
        let container_id = id.to_owned();
        self.events.send(if pause {
            Event::Paused { container_id }
        } else {
            Event::Resumed { container_id }
        });
        tracing::info!(pod_id = %self.pod_id, container_id = id, paused = pause, "freezer");
        Ok(())
    }

    /// The VM lives as long as it has containers.
    async fn stop_vm_if_idle(&self) {
        if !self.containers().is_empty() {
            return;
        }
        if self.agent.lock().await.take().is_some() {
            tracing::info!(pod_id = %self.pod_id, "stopping the VM: no container left");
        }
        self.pod.stop().await;
    }
}

/// The exit a process being deleted reports; refused while it runs.
fn deletable(
    process: &Process,
    what: impl FnOnce() -> String,
) -> Result<(u32, Timestamp), TaskError> {
    match process.state() {
        State::Running | State::Paused => Err(TaskError::WrongState(format!(
            "{} is still running",
            what()
        ))),
        State::Stopped {
            exit_status,
            exited_at,
        } => Ok((exit_status, exited_at)),
        State::Created => Ok((0, now())),
    }
}

/// Starts the relays for a process's stdio ([stdin, stdout, stderr] FIFO
/// paths, empty for none); returns the output relays, which exit drains.
fn spawn_relays<A: AgentApi>(
    agent: &A,
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
        let relay = crate::task::relay::relay_output(
            agent.clone(),
            request(id, exec_id),
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
        let relay =
            crate::task::relay::relay_stdin(agent.clone(), request(id, exec_id), stdin.clone());
        let (cid, eid) = (id.to_owned(), exec_id.to_owned());
        tokio::spawn(async move {
            if let Err(e) = relay.await {
                tracing::debug!(container_id = %cid, exec_id = %eid, "stdin relay: {e:#}");
            }
        });
    }
    outputs
}

#[cfg(test)]
mod tests;
