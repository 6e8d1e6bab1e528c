//! Containers inside the guest: created from an OCI spec by cloning a child
//! into new namespaces (see `launch`), started by releasing it to exec,
//! watched through the reaper, and cleaned up on remove.

mod caps;
mod cgroup;
mod launch;
mod plan;
mod rootfs;
mod seccomp;
mod stdio;

use crate::reaper::{ExitWatch, Reaper};
use launch::{ChildFds, Step, REPORT_LEN};
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plan::LaunchPlan;
use std::collections::HashMap;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use tokio::net::unix::pipe;

/// Stack for the cloned child until it execs; it runs only syscalls.
const CHILD_STACK_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("invalid container id {0:?}: use 1-128 characters of [A-Za-z0-9_.-]")]
    BadId(String),
    #[error("container {0} already exists")]
    Exists(String),
    #[error("container {0} not found")]
    NotFound(String),
    #[error("invalid OCI spec: {0}")]
    Spec(String),
    #[error("container {id}: {message}")]
    State { id: String, message: String },
    #[error("container {id}: {message}")]
    Launch { id: String, message: String },
    #[error("{0}")]
    Io(String),
}

impl From<ContainerError> for tonic::Status {
    fn from(e: ContainerError) -> Self {
        let msg = e.to_string();
        match e {
            ContainerError::BadId(_) | ContainerError::Spec(_) => {
                tonic::Status::invalid_argument(msg)
            }
            ContainerError::Exists(_) => tonic::Status::already_exists(msg),
            ContainerError::NotFound(_) => tonic::Status::not_found(msg),
            ContainerError::State { .. } => tonic::Status::failed_precondition(msg),
            ContainerError::Launch { .. } | ContainerError::Io(_) => tonic::Status::internal(msg),
        }
    }
}

/// One process of a container: its init (exec id "") or an exec.
struct Process {
    pid: i32,
    plan: Arc<LaunchPlan>,
    exit: ExitWatch,
    started: bool,
    status_r: Option<OwnedFd>,
    start_w: Option<OwnedFd>,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    /// The pseudo-terminal's master end, for resizes (terminal only).
    pty: Option<OwnedFd>,
}

struct Container {
    /// The spec as created, for exec processes to inherit from.
    spec: oci_spec::runtime::Spec,
    init: Process,
    execs: HashMap<String, Process>,
    cgroup: Arc<cgroup::Cgroup>,
}

impl Container {
    fn process(&mut self, id: &str, exec_id: &str) -> Result<&mut Process, ContainerError> {
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
        cgroup::enable_controllers();
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
        f: impl FnOnce(&mut Process, &Arc<cgroup::Cgroup>) -> Result<T, ContainerError>,
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
        let spec: oci_spec::runtime::Spec =
            serde_json::from_slice(spec_json).map_err(|e| ContainerError::Spec(e.to_string()))?;
        let mut plan =
            LaunchPlan::from_spec(&spec).map_err(|e| ContainerError::Spec(e.to_string()))?;
        let cgroup = Arc::new(
            cgroup::Cgroup::create(&id).map_err(|e| ContainerError::Io(format!("cgroup: {e}")))?,
        );
        plan.cgroup_procs =
            std::ffi::CString::new(cgroup.procs_path().into_os_string().into_encoded_bytes()).ok();
        if let Err(e) = plan.bind_cgroup_mounts(cgroup.path()) {
            cgroup.remove();
            return Err(ContainerError::Spec(e.to_string()));
        }
        let plan = Arc::new(plan);
        if let Err(e) = cgroup.apply(&plan.cgroup_limits) {
            cgroup.remove();
            return Err(launch_err(&id, format!("applying linux.resources: {e}")));
        }
        let reaper = self.reaper.clone();
        let (id2, cg) = (id.clone(), cgroup.clone());
        let init = tokio::task::spawn_blocking(move || {
            let pid_ns = plan.enter_pid_ns.clone();
            spawn_process(&id2, plan, stdin, &reaper, &cg, pid_ns)
        })
        .await
        .map_err(|e| ContainerError::Io(e.to_string()))?
        .inspect_err(|_| cgroup.remove())?;
        let pid = init.pid as u32;
        let mut map = self.lock();
        if map.contains_key(&id) {
            // Lost a race with a concurrent create of the same id.
            let _ = kill(Pid::from_raw(init.pid), Signal::SIGKILL);
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
        Ok(pid)
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
        let process: oci_spec::runtime::Process = serde_json::from_slice(process_json)
            .map_err(|e| ContainerError::Spec(format!("process: {e}")))?;
        let (mut spec, init_pid, cgroup) = {
            let map = self.lock();
            let c = map
                .get(id)
                .ok_or_else(|| ContainerError::NotFound(id.into()))?;
            if !c.init.started || c.init.exit.borrow().is_some() {
                return Err(state(id, "is not running"));
            }
            if c.execs.contains_key(&exec_id) {
                return Err(ContainerError::Exists(format!("{id}/{exec_id}")));
            }
            (c.spec.clone(), c.init.pid, c.cgroup.clone())
        };
        spec.set_process(Some(process));
        let mut plan =
            LaunchPlan::from_spec(&spec).map_err(|e| ContainerError::Spec(e.to_string()))?;
        let mut container_flags = plan.clone_flags;
        container_flags.set(CloneFlags::CLONE_NEWCGROUP, plan.unshare_cgroup_ns);
        // Namespaces the init entered by path are its namespaces too.
        for (_, flag) in &plan.enter {
            container_flags |= *flag;
        }
        plan.enter.clear();
        plan.join = Some(plan::JoinPlan::of(init_pid, container_flags));
        plan.clone_flags = CloneFlags::empty();
        let plan = Arc::new(plan);
        let reaper = self.reaper.clone();
        let id2 = id.to_owned();
        let proc = tokio::task::spawn_blocking(move || {
            let pid_ns = format!("/proc/{init_pid}/ns/pid");
            spawn_process(&id2, plan, stdin, &reaper, &cgroup, Some(pid_ns))
        })
        .await
        .map_err(|e| ContainerError::Io(e.to_string()))??;
        let pid = proc.pid as u32;
        let mut map = self.lock();
        match map.get_mut(id) {
            Some(c) if !c.execs.contains_key(&exec_id) => {
                c.execs.insert(exec_id, proc);
                Ok(pid)
            }
            _ => {
                let _ = kill(Pid::from_raw(proc.pid), Signal::SIGKILL);
                Err(state(id, "went away while the exec was created"))
            }
        }
    }

    pub async fn start(&self, id: &str, exec_id: &str) -> Result<u32, ContainerError> {
        let (pid, start_w, status_r, plan) = self.with_process(id, exec_id, |p, _| {
            if p.started {
                return Err(state(id, "already started"));
            }
            p.started = true;
            Ok((p.pid, p.start_w.take(), p.status_r.take(), p.plan.clone()))
        })?;
        let (Some(start_w), Some(status_r)) = (start_w, status_r) else {
            return Err(state(id, "cannot be started"));
        };
        let id2 = id.to_owned();
        tokio::task::spawn_blocking(move || {
            nix::unistd::write(&start_w, &[1])
                .map_err(|e| launch_err(&id2, format!("releasing the process: {e}")))?;
            drop(start_w);
            match read_report(status_r) {
                None => Ok(()),
                Some(report) => Err(launch_err(&id2, describe(&plan, report))),
            }
        })
        .await
        .map_err(|e| ContainerError::Io(e.to_string()))??;
        Ok(pid as u32)
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<u32, ContainerError> {
        let mut exit = self.with_process(id, exec_id, |p, _| Ok(p.exit.clone()))?;
        let status = exit
            .wait_for(Option::is_some)
            .await
            .map_err(|_| ContainerError::Io("reaper stopped".into()))?;
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
            if p.exit.borrow().is_some() {
                return Err(state(id, "process already finished"));
            }
            let pids = if all { cgroup.pids() } else { vec![p.pid] };
            for pid in pids {
                match kill(Pid::from_raw(pid), sig) {
                    Ok(()) | Err(Errno::ESRCH) => {}
                    Err(e) => return Err(state(id, format!("kill {pid}: {e}"))),
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
        if p.started && p.exit.borrow().is_none() {
            return Err(state(id, "still running; kill it first"));
        }
        if !p.started {
            // Closing start_w would also end it; SIGKILL is immediate.
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        if !exec_id.is_empty() {
            c.execs.remove(exec_id);
            return Ok(());
        }
        let c = map.remove(id).expect("looked up above");
        for p in c.execs.values() {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        c.cgroup.remove();
        Ok(())
    }

    /// Freezes or thaws the whole container.
    pub async fn freeze(&self, id: &str, frozen: bool) -> Result<(), ContainerError> {
        let cgroup = self.with_process(id, "", |p, cgroup| {
            if !p.started || p.exit.borrow().is_some() {
                return Err(state(id, "is not running"));
            }
            Ok(cgroup.clone())
        })?;
        tokio::task::spawn_blocking(move || cgroup.freeze(frozen))
            .await
            .map_err(|e| ContainerError::Io(e.to_string()))?
            .map_err(|e| ContainerError::Io(format!("freezer: {e}")))
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
            let slot = match which {
                Output::Stdout => &mut p.stdout,
                Output::Stderr => &mut p.stderr,
            };
            slot.take()
                .ok_or_else(|| state(id, "output already attached, or a terminal's stderr"))
        })?;
        // Unchecked: a terminal's master is not a FIFO, but polls like one.
        pipe::Receiver::from_owned_fd_unchecked(fd).map_err(|e| ContainerError::Io(e.to_string()))
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
            let pty = p.pty.as_ref().ok_or_else(|| state(id, "has no terminal"))?;
            stdio::set_window_size(pty, rows, cols)
        })
    }

    /// The figures of the container's cgroup.
    pub fn stats(&self, id: &str) -> Result<cgroup::Stats, ContainerError> {
        let cgroup = self.with_process(id, "", |_, cgroup| Ok(cgroup.clone()))?;
        Ok(cgroup.stats())
    }

    /// Applies new linux.resources to a container's cgroup.
    pub fn update(&self, id: &str, resources_json: &[u8]) -> Result<(), ContainerError> {
        let resources: oci_spec::runtime::LinuxResources =
            serde_json::from_slice(resources_json)
                .map_err(|e| ContainerError::Spec(format!("linux.resources: {e}")))?;
        let limits = plan::cgroup_limits(Some(&resources))
            .map_err(|e| ContainerError::Spec(e.to_string()))?;
        let cgroup = self.with_process(id, "", |_, cgroup| Ok(cgroup.clone()))?;
        cgroup
            .apply(&limits)
            .map_err(|e| launch_err(id, format!("updating linux.resources: {e}")))
    }

    /// What an OOM watcher needs: the cgroup and the init's exit.
    pub fn oom_watch(&self, id: &str) -> Result<(Arc<cgroup::Cgroup>, ExitWatch), ContainerError> {
        self.with_process(id, "", |p, cgroup| Ok((cgroup.clone(), p.exit.clone())))
    }

    pub fn take_stdin(&self, id: &str, exec_id: &str) -> Result<pipe::Sender, ContainerError> {
        let fd = self.with_process(id, exec_id, |p, _| {
            p.stdin
                .take()
                .ok_or_else(|| state(id, "no stdin, or already attached"))
        })?;
        pipe::Sender::from_owned_fd_unchecked(fd).map_err(|e| ContainerError::Io(e.to_string()))
    }
}

fn state(id: &str, message: impl Into<String>) -> ContainerError {
    ContainerError::State {
        id: id.into(),
        message: message.into(),
    }
}

fn launch_err(id: &str, message: String) -> ContainerError {
    ContainerError::Launch {
        id: id.into(),
        message,
    }
}

fn check_id(id: &str) -> Result<(), ContainerError> {
    if husk_proto::is_safe_id(id, 128) {
        Ok(())
    } else {
        Err(ContainerError::BadId(id.into()))
    }
}

/// Clones the child, in the PID namespace file `join_pid_ns` when given
/// (an exec, or an init sharing a pod's PID namespace), and waits for its
/// "created" report.
fn spawn_process(
    id: &str,
    plan: Arc<LaunchPlan>,
    stdin: bool,
    reaper: &Reaper,
    cgroup: &cgroup::Cgroup,
    join_pid_ns: Option<String>,
) -> Result<Process, ContainerError> {
    let io = |e: Errno| ContainerError::Io(e.to_string());
    let (status_r, status_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io)?;
    let (start_r, start_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io)?;
    let stdio = if plan.terminal {
        stdio::Stdio::terminal()?
    } else {
        stdio::Stdio::pipes(stdin)?
    };
    let fds = ChildFds {
        stdin: stdio.child[0].as_raw_fd(),
        stdout: stdio.child[1].as_raw_fd(),
        stderr: stdio.child[2].as_raw_fd(),
        status: status_w.as_raw_fd(),
        start: start_r.as_raw_fd(),
        console: stdio.console_child.as_ref().map_or(-1, |c| c.as_raw_fd()),
    };
    let pid = match join_pid_ns {
        None => clone_child(&plan, fds),
        // setns(CLONE_NEWPID) changes where this thread's *children* go,
        // for good: do it on a thread of its own that ends after the clone.
        Some(ns_path) => {
            let ns = std::fs::File::open(&ns_path)
                .map_err(|e| launch_err(id, format!("opening the PID namespace: {e}")))?;
            let plan = plan.clone();
            std::thread::spawn(move || {
                nix::sched::setns(&ns, CloneFlags::CLONE_NEWPID)?;
                clone_child(&plan, fds)
            })
            .join()
            .map_err(|_| launch_err(id, "the exec thread panicked".into()))?
        }
    }
    .map_err(|e| launch_err(id, format!("clone: {e}")))?;
    let exit = reaper.register(pid);
    // The child holds its ends now; ours would keep the output open.
    let stdio::Stdio {
        parent,
        child,
        console,
        console_child,
    } = stdio;
    drop((status_w, start_r, child, console_child));
    if let Err(e) = cgroup.add(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        return Err(ContainerError::Io(format!("joining cgroup: {e}")));
    }
    let status_r = match read_report(status_r) {
        Some(report) if report.0 == Some(Step::Created) => report.3,
        Some(report) => return Err(launch_err(id, describe(&plan, report))),
        None => return Err(launch_err(id, "the process died during setup".into())),
    };
    // A terminal's master was sent by the child before its report.
    let parent = match console {
        Some(socket) => stdio::receive_terminal(socket, plan.console_size, stdin).map_err(|e| {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            launch_err(id, format!("receiving the terminal: {e}"))
        })?,
        None => parent,
    };
    Ok(Process {
        pid,
        plan,
        exit,
        started: false,
        status_r,
        start_w: Some(start_w),
        stdin: parent.stdin,
        stdout: parent.stdout,
        stderr: parent.stderr,
        pty: parent.pty,
    })
}

fn clone_child(plan: &Arc<LaunchPlan>, fds: ChildFds) -> nix::Result<i32> {
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    let child_plan = plan.clone();
    // SAFETY: the child runs `child_main`, which only makes system calls on
    // memory prepared before the clone, and ends in execve or _exit.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(move || launch::child_main(&child_plan, &fds)),
            &mut stack,
            plan.clone_flags,
            Some(Signal::SIGCHLD as i32),
        )
    }?;
    Ok(pid.as_raw())
}

/// (step, index, errno, the pipe for further reports)
type Report = (Option<Step>, u16, Errno, Option<OwnedFd>);

/// Reads one report from the child; None at EOF (exec succeeded or died).
fn read_report(status_r: OwnedFd) -> Option<Report> {
    let mut file = std::fs::File::from(status_r);
    let mut buf = [0u8; REPORT_LEN];
    match file.read_exact(&mut buf) {
        Ok(()) => {
            let (step, index, errno) = launch::decode(&buf);
            Some((step, index, errno, Some(OwnedFd::from(file))))
        }
        Err(_) => None,
    }
}

/// Turns a child's report into the message a user sees, in runc's words
/// where runc has words for it.
fn describe(plan: &LaunchPlan, (step, index, errno, _): Report) -> String {
    let i = index as usize;
    let mount = |m: &plan::MountOp| {
        format!(
            "mounting {} on {}",
            m.fstype
                .as_ref()
                .map_or("bind".into(), |t| t.to_string_lossy().into_owned()),
            m.destination
        )
    };
    let what = match step {
        Some(Step::Lookup) if plan.program.contains('/') => {
            return format!(
                "exec: \"{}\": stat {}: no such file or directory",
                plan.program, plan.program
            )
        }
        Some(Step::Lookup) => {
            return format!(
                "exec: \"{}\": executable file not found in $PATH",
                plan.program
            )
        }
        Some(Step::Mount) => plan.mounts.get(i).map_or("mounting".into(), mount),
        Some(Step::Cwd) => format!("chdir to cwd ({})", plan.cwd.to_string_lossy()),
        Some(Step::Exec) => format!("exec {}", plan.program),
        Some(Step::Device) => "creating device nodes".into(),
        Some(Step::DeviceNode) => plan
            .device_nodes
            .get(i)
            .map_or("linux.devices".into(), |d| {
                format!("creating device {}", d.path)
            }),
        Some(Step::Sysctl) => plan.sysctls.get(i).map_or("linux.sysctl".into(), |(p, _)| {
            format!("writing sysctl {}", p.to_string_lossy())
        }),
        Some(Step::Seccomp) => "loading the seccomp filter".into(),
        Some(Step::Terminal) => "setting up the terminal".into(),
        Some(step) => format!("{step:?}"),
        None => "unknown step".into(),
    };
    format!("{what}: {}", errno.desc())
}
