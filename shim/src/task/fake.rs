//! Test doubles for the manager: [`FakeAgent`], a guest in memory whose
//! processes exit when signalled (or never, when told to misbehave),
//! [`FakePod`], a host that records what it was asked, and [`Recorder`],
//! an event sink that keeps what it was sent.

use crate::bundle::BundleSpec;
use crate::task::agent::{AgentApi, AgentError, AgentStream};
use crate::task::error::TaskError;
use crate::task::events::{Event, EventSink};
use crate::task::pod::{ContainerPlan, Pod, PodTimeouts};
use async_trait::async_trait;
use containerd_shim_protos::api::CreateTaskRequest;
use futures_util::StreamExt;
use husk_proto::agent::{
    ContainerRequest, ContainerStatsResponse, CreateContainerRequest, ExecProcessRequest,
    OutputStream, ResizePtyRequest, SignalContainerRequest, UpdateContainerRequest,
};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How the fake guest misbehaves.
#[derive(Default)]
pub struct Misbehaviour {
    /// Calls (by method name) that are accepted and never answered.
    pub hang: HashSet<&'static str>,
    /// Calls that fail with this status code and message.
    pub fail: HashMap<&'static str, (tonic::Code, String)>,
    /// Signals are taken but do nothing.
    pub ignore_signals: bool,
    /// OOM kills reported by watch_oom before the init's exit.
    pub oom_kills: u64,
}

#[derive(Default)]
struct Guest {
    /// Exit status of each process, once it exited; keyed (container, exec).
    processes: HashMap<(String, String), watch::Sender<Option<u32>>>,
    next_pid: u32,
    calls: Vec<String>,
}

#[derive(Clone)]
pub struct FakeAgent {
    guest: Arc<Mutex<Guest>>,
    pub misbehaviour: Arc<Mutex<Misbehaviour>>,
    /// False once the VM is stopped: every call fails from then on.
    alive: watch::Sender<bool>,
}

impl FakeAgent {
    pub fn new() -> Self {
        Self {
            guest: Arc::default(),
            misbehaviour: Arc::default(),
            alive: watch::channel(true).0,
        }
    }

    /// The calls made so far, by method name.
    pub fn calls(&self) -> Vec<String> {
        self.guest.lock().unwrap().calls.clone()
    }

    /// Makes process (`id`, `exec_id`) exit with `status`.
    pub fn exit(&self, id: &str, exec_id: &str, status: u32) {
        let g = self.guest.lock().unwrap();
        if let Some(p) = g.processes.get(&(id.into(), exec_id.into())) {
            p.send_replace(Some(status));
        }
    }

    fn stop_vm(&self) {
        self.alive.send_replace(false);
    }

    /// Records the call; fails or hangs it as told.
    async fn enter(&self, call: &'static str) -> Result<(), AgentError> {
        self.guest.lock().unwrap().calls.push(call.into());
        let (hang, fail) = {
            let m = self.misbehaviour.lock().unwrap();
            (m.hang.contains(call), m.fail.get(call).cloned())
        };
        if !*self.alive.borrow() {
            return Err(gone());
        }
        if hang {
            std::future::pending::<()>().await;
        }
        match fail {
            Some((code, message)) => {
                Err(AgentError::from_status(tonic::Status::new(code, message)))
            }
            None => Ok(()),
        }
    }

    fn add_process(&self, id: &str, exec_id: &str) -> u32 {
        let mut g = self.guest.lock().unwrap();
        g.next_pid += 1;
        g.processes
            .insert((id.into(), exec_id.into()), watch::channel(None).0);
        g.next_pid
    }

    fn exit_of(&self, r: &ContainerRequest) -> Option<watch::Receiver<Option<u32>>> {
        let g = self.guest.lock().unwrap();
        g.processes
            .get(&(r.container_id.clone(), r.exec_id.clone()))
            .map(|p| p.subscribe())
    }
}

fn gone() -> AgentError {
    AgentError::Status {
        code: tonic::Code::Unavailable,
        message: "the VM is gone".into(),
    }
}

fn not_found() -> AgentError {
    AgentError::Status {
        code: tonic::Code::NotFound,
        message: "no such process".into(),
    }
}

#[async_trait]
impl AgentApi for FakeAgent {
    async fn create_container(&self, req: CreateContainerRequest) -> Result<u32, AgentError> {
        self.enter("create_container").await?;
        Ok(self.add_process(&req.container_id, ""))
    }

    async fn exec_process(&self, req: ExecProcessRequest) -> Result<u32, AgentError> {
        self.enter("exec_process").await?;
        Ok(self.add_process(&req.container_id, &req.exec_id))
    }

    async fn start(&self, req: ContainerRequest) -> Result<(), AgentError> {
        self.enter("start").await?;
        self.exit_of(&req).map(drop).ok_or_else(not_found)
    }

    async fn wait(&self, req: ContainerRequest) -> Result<u32, AgentError> {
        self.enter("wait").await?;
        let mut exit = self.exit_of(&req).ok_or_else(not_found)?;
        let mut alive = self.alive.subscribe();
        tokio::select! {
            status = exit.wait_for(Option::is_some) => {
                Ok(status.map_err(|_| gone())?.unwrap_or(255))
            }
            _ = alive.wait_for(|a| !*a) => Err(gone()),
        }
    }

    async fn signal(&self, req: SignalContainerRequest) -> Result<(), AgentError> {
        self.enter("signal").await?;
        let r = ContainerRequest {
            container_id: req.container_id.clone(),
            exec_id: req.exec_id.clone(),
        };
        self.exit_of(&r).ok_or_else(not_found)?;
        if !self.misbehaviour.lock().unwrap().ignore_signals {
            self.exit(&req.container_id, &req.exec_id, 128 + req.signal);
        }
        Ok(())
    }

    async fn remove(&self, _req: ContainerRequest) -> Result<(), AgentError> {
        self.enter("remove").await
    }

    async fn pause(&self, _req: ContainerRequest) -> Result<(), AgentError> {
        self.enter("pause").await
    }

    async fn resume(&self, _req: ContainerRequest) -> Result<(), AgentError> {
        self.enter("resume").await
    }

    async fn list_processes(&self, _req: ContainerRequest) -> Result<Vec<u32>, AgentError> {
        self.enter("list_processes").await?;
        Ok(vec![1])
    }

    async fn stats(&self, _req: ContainerRequest) -> Result<ContainerStatsResponse, AgentError> {
        self.enter("stats").await?;
        Ok(ContainerStatsResponse {
            memory_current: 4096,
            ..Default::default()
        })
    }

    async fn update(&self, _req: UpdateContainerRequest) -> Result<(), AgentError> {
        self.enter("update").await
    }

    async fn resize_pty(&self, _req: ResizePtyRequest) -> Result<(), AgentError> {
        self.enter("resize_pty").await
    }

    async fn watch_oom(&self, req: ContainerRequest) -> Result<AgentStream<u64>, AgentError> {
        self.enter("watch_oom").await?;
        let kills = self.misbehaviour.lock().unwrap().oom_kills;
        let mut exit = self.exit_of(&req).ok_or_else(not_found)?;
        // The kills come first; the stream ends with the init's exit.
        let events = futures_util::stream::iter((1..=kills).map(Ok));
        let end = futures_util::stream::once(async move {
            let _ = exit.wait_for(Option::is_some).await;
        })
        .filter_map(|()| async { None });
        Ok(events.chain(end).boxed())
    }

    async fn read_output(
        &self,
        req: ContainerRequest,
        _stream: OutputStream,
    ) -> Result<AgentStream<Vec<u8>>, AgentError> {
        self.enter("read_output").await?;
        let mut exit = self.exit_of(&req).ok_or_else(not_found)?;
        Ok(futures_util::stream::once(async move {
            let _ = exit.wait_for(Option::is_some).await;
        })
        .filter_map(|()| async { None })
        .boxed())
    }

    async fn write_stdin(
        &self,
        _req: ContainerRequest,
        mut input: crate::task::agent::InputStream,
    ) -> Result<(), AgentError> {
        self.enter("write_stdin").await?;
        while input.recv().await.is_some() {}
        Ok(())
    }
}

/// A host that records what the manager asked of it.
pub struct FakePod {
    pub agent: FakeAgent,
    pub log: Arc<Mutex<Vec<String>>>,
    pub timeouts: PodTimeouts,
    /// `boot` fails with this message.
    pub boot_fails: Option<String>,
}

impl FakePod {
    pub fn new(agent: FakeAgent) -> Self {
        Self {
            agent,
            log: Arc::default(),
            timeouts: PodTimeouts {
                agent_call: Duration::from_millis(300),
                kill_grace: Duration::from_millis(300),
            },
            boot_fails: None,
        }
    }

    fn note(&self, what: String) {
        self.log.lock().unwrap().push(what);
    }
}

/// The fake pod's plan: the bundle as read, given to the guest as it is.
pub struct FakePlan(BundleSpec);

impl ContainerPlan for FakePlan {
    fn agent_spec(&self) -> &serde_json::Value {
        &self.0.spec
    }
}

#[async_trait]
impl Pod for FakePod {
    type Agent = FakeAgent;
    type Plan = FakePlan;

    fn plan(&self, req: &CreateTaskRequest) -> Result<FakePlan, TaskError> {
        BundleSpec::read(Path::new(&req.bundle))
            .map(FakePlan)
            .map_err(|e| TaskError::Invalid(e.into()))
    }

    async fn share(
        &self,
        container_id: &str,
        _req: &CreateTaskRequest,
        _plan: &FakePlan,
    ) -> Result<(), TaskError> {
        self.note(format!("share {container_id}"));
        Ok(())
    }

    async fn unshare(&self, container_id: &str) {
        self.note(format!("unshare {container_id}"));
    }

    async fn boot(&self, _plan: &FakePlan) -> Result<FakeAgent, TaskError> {
        self.note("boot".into());
        self.agent.alive.send_replace(true);
        match &self.boot_fails {
            Some(m) => Err(TaskError::Host(anyhow::anyhow!("{m}"))),
            None => Ok(self.agent.clone()),
        }
    }

    async fn stop(&self) {
        self.note("stop".into());
        self.agent.stop_vm();
    }

    fn timeouts(&self) -> PodTimeouts {
        self.timeouts
    }
}

/// An event sink that keeps every event.
#[derive(Default)]
pub struct Recorder {
    pub events: Mutex<Vec<Event>>,
}

impl Recorder {
    /// The topics sent so far, short: "create", "start", "exit", ...
    pub fn topics(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.topic().rsplit('/').next().unwrap_or("").to_owned())
            .collect()
    }
}

impl EventSink for Recorder {
    fn send(&self, event: Event) {
        self.events.lock().unwrap().push(event);
    }
}
