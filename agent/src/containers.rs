//! The agent's registry of containers: each made from an OCI spec by
//! `husk-container` (plan, clone, cgroup), started by releasing its init,
//! watched through the reaper, and forgotten on remove. This file keeps the
//! ids, the states the API allows, and the exit watches.

use crate::reaper::{ExitWatch, Reaper};
use husk_container::{Cgroup, CgroupError, Plan, Process, ProcessError, SpecError, Stats};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::net::unix::pipe;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container id {0:?}: use 1-128 characters of [A-Za-z0-9_.-]")]
    BadId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("invalid OCI spec: {0}")]
    Spec(#[from] SpecError),
    #[error("invalid OCI spec: {what}{source}")]
    Json {
        /// The part of the request, with its separator ("process: "), or "".
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("container {id}: {message}")]
    State { id: String, message: String },
    #[error("container {id}: {source}")]
    Process {
        id: String,
        #[source]
        source: ProcessError,
    },
    #[error("container {id}: {action}: {source}")]
    Cgroup {
        id: String,
        action: &'static str,
        #[source]
        source: CgroupError,
    },
    #[error("container {id}: signalling {pid}: {source}")]
    Kill {
        id: String,
        pid: i32,
        #[source]
        source: Errno,
    },
    #[error("attaching {what}: {source}")]
    Attach {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the reaper stopped")]
    ReaperStopped,
}

impl From<ContainerError> for tonic::Status {
    fn from(e: ContainerError) -> Self {
        use ContainerError as E;
        let msg = e.to_string();
        match e {
            E::BadId(_) | E::Spec(_) | E::Json { .. } => tonic::Status::invalid_argument(msg),
            E::Exists(_) => tonic::Status::already_exists(msg),
            E::NotFound(_) => tonic::Status::not_found(msg),
            E::State { .. } | E::Kill { .. } => tonic::Status::failed_precondition(msg),
            E::Process {
                source: ProcessError::NoTerminal,
                ..
            } => tonic::Status::failed_precondition(msg),
            E::Process { .. }
            | E::Cgroup { .. }
            | E::Attach { .. }
            | E::Task(_)
            | E::ReaperStopped => tonic::Status::internal(msg),
        }
    }
}

/// A container process and the reaper's watch on its exit.
struct Watched {
    process: Process,
    exit: ExitWatch,
}

impl Watched {
    fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }
}

struct Container {
    /// The spec as created, for exec processes to inherit from.
    spec: oci_spec::runtime::Spec,
    init: Watched,
    execs: HashMap<String, Watched>,
    cgroup: Arc<Cgroup>,
}

impl Container {
    fn process(&mut self, id: &str, exec_id: &str) -> Result<&mut Watched, ContainerError> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| ContainerError::NotFound(format!("{id}/{exec_id}")))
    }
}

#[derive(Clone)]
pub struct Containers {
    reaper: Reaper,
    map: Arc<Mutex<HashMap<String, Container>>>,
}

pub enum Output {
    Stdout,
    Stderr,
}

impl Containers {
    pub fn new(reaper: Reaper) -> Self {
        husk_container::enable_controllers();
        Self {
            reaper,
            map: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Container>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the process `exec_id` of container `id`.
    fn with_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut Watched, &Arc<Cgroup>) -> Result<T, ContainerError>,
    ) -> Result<T, ContainerError> {
        let mut map = self.lock();
        let c = map
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        let cgroup = c.cgroup.clone();
        f(c.process(id, exec_id)?, &cgroup)
    }

    pub async fn create(
        &self,
        id: String,
        spec_json: &[u8],
        stdin: bool,
    ) -> Result<u32, ContainerError> {
        check_id(&id)?;
        if self.lock().contains_key(&id) {
            return Err(ContainerError::Exists(id));
        }
        let spec: oci_spec::runtime::Spec = serde_json::from_slice(spec_json)
            .map_err(|source| ContainerError::Json { what: "", source })?;
        let mut plan = Plan::from_spec(&spec)?;
        let cgroup = Arc::new(Cgroup::create(&id).map_err(cgroup_err(&id, "creating its cgroup"))?);
        let placed = plan
            .place_in(&cgroup)
            .map_err(ContainerError::from)
            .and_then(|()| {
                cgroup
                    .apply(plan.cgroup_limits())
                    .map_err(cgroup_err(&id, "applying linux.resources"))
            });
        if let Err(e) = placed {
            cgroup.remove();
            return Err(e);
        }
        let init = self
            .spawn(&id, plan, stdin, &cgroup)
            .await
            .inspect_err(|_| cgroup.remove())?;
        let pid = init.process.pid();
        let mut map = self.lock();
        if map.contains_key(&id) {
            // Lost a race with a concurrent create of the same id.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            return Err(ContainerError::Exists(id));
        }
        map.insert(
            id,
            Container {
                spec,
                init,
                execs: HashMap::new(),
                cgroup,
            },
        );
        Ok(pid as u32)
    }

    /// Creates an exec process in the running container `id`.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: String,
        process_json: &[u8],
        stdin: bool,
    ) -> Result<u32, ContainerError> {
        check_id(&exec_id)?;
        let process: oci_spec::runtime::Process =
            serde_json::from_slice(process_json).map_err(|source| ContainerError::Json {
                what: "process: ",
                source,
            })?;
        let (spec, init_pid, cgroup) = {
            let map = self.lock();
            let c = map
                .get(id)
                .ok_or_else(|| ContainerError::NotFound(id.into()))?;
            if !c.init.process.started() || c.init.exited() {
                return Err(state(id, "is not running"));
            }
            if c.execs.contains_key(&exec_id) {
                return Err(ContainerError::Exists(format!("{id}/{exec_id}")));
            }
            (c.spec.clone(), c.init.process.pid(), c.cgroup.clone())
        };
        let plan = Plan::for_exec(&spec, process, init_pid)?;
        let exec = self.spawn(id, plan, stdin, &cgroup).await?;
        let pid = exec.process.pid();
        let mut map = self.lock();
        match map.get_mut(id) {
            Some(c) if !c.execs.contains_key(&exec_id) => {
                c.execs.insert(exec_id, exec);
                Ok(pid as u32)
            }
            _ => {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                Err(state(id, "went away while the exec was created"))
            }
        }
    }

    /// Creates the process of `plan` in `cgroup`, watched from its clone on.
    async fn spawn(
        &self,
        id: &str,
        plan: Plan,
        stdin: bool,
        cgroup: &Arc<Cgroup>,
    ) -> Result<Watched, ContainerError> {
        let reaper = self.reaper.clone();
        let cgroup = cgroup.clone();
        let (process, exit) = tokio::task::spawn_blocking(move || {
            Process::create(Arc::new(plan), stdin, &cgroup, |pid| reaper.register(pid))
        })
        .await?
        .map_err(process_err(id))?;
        Ok(Watched { process, exit })
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32, ContainerError> {
        let (pid, start) = self.with_process(id, exec_id, |p, _| {
            let start = p
                .process
                .take_start()
                .ok_or_else(|| state(id, "already started"))?;
            Ok((p.process.pid(), start))
        })?;
        tokio::task::spawn_blocking(move || start.run())
            .await?
            .map_err(process_err(id))?;
        Ok(pid as u32)
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<u32, ContainerError> {
        let mut exit = self.with_process(id, exec_id, |p, _| Ok(p.exit.clone()))?;
        let status = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ContainerError::ReaperStopped)?;
        Ok(status.unwrap_or(255))
    }

    pub fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: i32,
        all: bool,
    ) -> Result<(), ContainerError> {
        let sig =
            Signal::try_from(signal).map_err(|_| state(id, format!("invalid signal {signal}")))?;
        self.with_process(id, exec_id, |p, cgroup| {
            if p.exited() {
                return Err(state(id, "process already finished"));
            }
            let pids = if all {
                cgroup.pids()
            } else {
                vec![p.process.pid()]
            };
            for pid in pids {
                match kill(Pid::from_raw(pid), sig) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(source) => {
                        return Err(ContainerError::Kill {
                            id: id.into(),
                            pid,
                            source,
                        })
                    }
                }
            }
            Ok(())
        })
    }

    /// Forgets an exited process; for the init, the whole container.
    pub fn remove(&self, id: &str, exec_id: &str) -> Result<(), ContainerError> {
        let mut map = self.lock();
        let c = map
            .get_mut(id)
            .ok_or_else(|| ContainerError::NotFound(id.into()))?;
        let p = c.process(id, exec_id)?;
        if p.process.started() && !p.exited() {
            return Err(state(id, "still running; kill it first"));
        }
        if !p.process.started() {
            // Closing the start pipe would also end it; SIGKILL is immediate.
            let _ = kill(Pid::from_raw(p.process.pid()), Signal::SIGKILL);
        }
        if !exec_id.is_empty() {
            c.execs.remove(exec_id);
            return Ok(());
        }
        let c = map.remove(id).expect("looked up above");
        for p in c.execs.values() {
            let _ = kill(Pid::from_raw(p.process.pid()), Signal::SIGKILL);
        }
        c.cgroup.remove();
        Ok(())
    }

    /// Freezes or thaws the whole container.
    pub async fn freeze(&self, id: &str, frozen: bool) -> Result<(), ContainerError> {
        let cgroup = self.with_process(id, "", |p, cgroup| {
            if !p.process.started() || p.exited() {
                return Err(state(id, "is not running"));
            }
            Ok(cgroup.clone())
        })?;
        tokio::task::spawn_blocking(move || cgroup.freeze(frozen))
            .await?
            .map_err(cgroup_err(id, "freezer"))
    }

    pub fn pids(&self, id: &str) -> Result<Vec<u32>, ContainerError> {
        self.with_process(id, "", |_, cgroup| {
            Ok(cgroup.pids().into_iter().map(|p| p as u32).collect())
        })
    }

    /// Takes the read end of stdout or stderr; only one reader each.
    pub fn take_output(
        &self,
        id: &str,
        exec_id: &str,
        which: Output,
    ) -> Result<pipe::Receiver, ContainerError> {
        let fd = self.with_process(id, exec_id, |p, _| {
            match which {
                Output::Stdout => p.process.take_stdout(),
                Output::Stderr => p.process.take_stderr(),
            }
            .ok_or_else(|| state(id, "output already attached, or a terminal's stderr"))
        })?;
        // Unchecked: a terminal's master is not a FIFO, but polls like one.
        pipe::Receiver::from_owned_fd_unchecked(fd).map_err(|source| ContainerError::Attach {
            what: "output",
            source,
        })
    }

    /// Sets the window size of the process's terminal.
    pub fn resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u16,
        cols: u16,
    ) -> Result<(), ContainerError> {
        self.with_process(id, exec_id, |p, _| {
            p.process.resize(rows, cols).map_err(process_err(id))
        })
    }

    /// The figures of the container's cgroup.
    pub fn stats(&self, id: &str) -> Result<Stats, ContainerError> {
        let cgroup = self.with_process(id, "", |_, cgroup| Ok(cgroup.clone()))?;
        Ok(cgroup.stats())
    }

    /// Applies new linux.resources to a container's cgroup.
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), ContainerError> {
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(resources_json).map_err(|source| ContainerError::Json {
                what: "linux.resources: ",
                source,
            })?;
        let limits = husk_container::cgroup_limits(Some(&resources))?;
        let cgroup = self.with_process(id, "", |_, cgroup| Ok(cgroup.clone()))?;
        cgroup
            .apply(&limits)
            .map_err(cgroup_err(id, "updating linux.resources"))
    }

    /// What an OOM watcher needs: the cgroup and the init's exit.
    pub fn oom_watch(&self, id: &str) -> Result<(Arc<Cgroup>, ExitWatch), ContainerError> {
        self.with_process(id, "", |p, cgroup| Ok((cgroup.clone(), p.exit.clone())))
    }

    pub fn take_stdin(&self, id: &str, exec_id: &str) -> Result<pipe::Sender, ContainerError> {
        let fd = self.with_process(id, exec_id, |p, _| {
            p.process
                .take_stdin()
                .ok_or_else(|| state(id, "no stdin, or already attached"))
        })?;
        pipe::Sender::from_owned_fd_unchecked(fd).map_err(|source| ContainerError::Attach {
            what: "stdin",
            source,
        })
    }
}

fn state(id: &str, message: impl Into<String>) -> ContainerError {
    ContainerError::State {
        id: id.into(),
        message: message.into(),
    }
}

fn process_err(id: &str) -> impl FnOnce(ProcessError) -> ContainerError + '_ {
    move |source| ContainerError::Process {
        id: id.into(),
        source,
    }
}

fn cgroup_err<'a>(
    id: &'a str,
    action: &'static str,
) -> impl FnOnce(CgroupError) -> ContainerError + 'a {
    move |source| ContainerError::Cgroup {
        id: id.into(),
        action,
        source,
    }
}

fn check_id(id: &str) -> Result<(), ContainerError> {
    if husk_proto::is_safe_id(id, 128) {
        Ok(())
    } else {
        Err(ContainerError::BadId(id.into()))
    }
}
