//! One micro-VM from start to nothing: preflight, run directory, log
//! directory, device daemons, VMM, boot until the agent answers, stop,
//! cleanup. Every process starts in the pod's cgroup and writes its output,
//! like the guest's console, through a bounded [`LogPump`] into the VM's
//! log directory (`log_dir`), which outlives a VM that failed.

use crate::confine::{policy, VmIds};
use crate::daemon::{Daemon, Placement, DRAIN};
use crate::log_dir::{Ending, VmLogDir, CONSOLE_LOG, VMM_LOG};
use crate::log_pump::LogPump;
use crate::{preflight, Accelerator, Error, HuskVmm, Hypervisor, MacAddr, Qemu, VmLaunch};
use husk_config::{AccelTimeouts, Backend, Config, HypervisorConfig};
use husk_proto::agent::agent_client::AgentClient;
use husk_proto::agent::{HealthRequest, SetClockRequest, ShutdownRequest};
use husk_vmm_config::Identity;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};
use tokio::process::Command;
use tonic::transport::Channel;

/// Daemons make their sockets in milliseconds; this only bounds a hang.
const DAEMON_SOCKET_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a daemon gets between SIGTERM and SIGKILL.
const DAEMON_GRACE: Duration = Duration::from_secs(2);
/// Pause between two agent health probes during boot.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);
/// A Unix socket path must fit `sun_path` (108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

const FS_SOCKET: &str = "vhost-fs.sock";
const AGENT_SOCKET: &str = "agent.vsock";

/// What the caller decides per VM; the rest comes from the configuration.
#[derive(Debug, Clone, Default)]
pub struct VmSpec {
    /// Names the run directory, the log directory and the VMM process;
    /// [A-Za-z0-9_.-], 1-64.
    pub id: String,
    /// Host directory shared with the guest through virtio-fs.
    pub shared_dir: PathBuf,
    /// Network devices (TAPs the caller keeps open).
    pub nets: Vec<crate::NetDevice>,
    /// The `cgroup.procs` files of the pod's cgroup (one per hierarchy on
    /// cgroup v1): the VMM and the daemons start in it. Empty: they stay
    /// in the caller's.
    pub cgroup_procs: Vec<PathBuf>,
    /// The `oom_score_adj` of every process of the VM (the pod's, as runc
    /// would give its containers; `confine::oom`). None: the caller's.
    pub oom_score_adj: Option<i32>,
}

/// Where boot time went, measured on the host.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootTimings {
    /// Spawning virtiofsd and the vsock backend until both sockets exist.
    pub helpers: Duration,
    /// Spawning the VMM process (fork + exec).
    pub vmm_spawn: Duration,
    /// From VMM spawn until the agent answered Health.
    pub agent_ready: Duration,
    /// From the call to `start` until the agent answered.
    pub total: Duration,
}

/// Host processes of a VM.
#[derive(Debug, Clone, Copy)]
pub struct VmPids {
    pub vmm: u32,
    pub virtiofsd: u32,
    pub vsock_backend: u32,
}

pub struct MicroVm {
    id: String,
    dir: PathBuf,
    accelerator: Accelerator,
    vmm_name: &'static str,
    timeouts: AccelTimeouts,
    timings: BootTimings,
    /// Where the VM's logs go, and whether they stay.
    logs: VmLogDir,
    /// The cgroup every process of the VM starts in.
    placement: Placement,
    /// The guest's serial console, on its way to `console.log`.
    console: Option<LogPump>,
    fs: Option<Daemon>,
    vsock: Option<Daemon>,
    vmm: Option<Daemon>,
    /// The VM's own unprivileged id, held for the VM's life.
    ids: Option<VmIds>,
    /// Kills the VMM when a device daemon dies (see `supervisor`).
    watcher: Option<tokio::task::JoinHandle<()>>,
}

impl MicroVm {
    /// Boots a VM and returns once its agent answers Health. On error every
    /// process and file made so far is gone again.
    pub async fn start(config: &Config, spec: VmSpec) -> Result<Self, Error> {
        let started = Instant::now();
        let dir = check(config, &spec)?;
        let h = &config.hypervisor;
        let decision = crate::resolve_accelerator(h.accelerator);
        let timeouts = match decision.accelerator {
            Accelerator::Kvm => config.timeouts.kvm,
            Accelerator::Tcg => config.timeouts.tcg,
        };
        let (hypervisor, backend_reason) = choose_vmm(h, &decision)?;
        let c = &config.confinement;
        let ids = match c.id_count {
            0 => None,
            n => Some(VmIds::take(c.first_id, n, &c.id_lock)?),
        };
        create_run_dir(&dir)?;
        let logs = match VmLogDir::create(&config.logs, &spec.id) {
            Ok(logs) => logs,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        tracing::info!(
            vm_id = %spec.id,
            backend = hypervisor.name(),
            backend_reason = %backend_reason,
            accelerator = %decision.accelerator,
            reason = %decision.reason,
            logs = %logs.path().display(),
            "VM booting"
        );
        let mut vm = MicroVm {
            id: spec.id.clone(),
            dir,
            accelerator: decision.accelerator,
            vmm_name: hypervisor.name(),
            timeouts,
            timings: BootTimings::default(),
            logs,
            placement: Placement {
                cgroup_procs: spec.cgroup_procs.clone(),
                max_file_bytes: None,
            },
            console: None,
            fs: None,
            vsock: None,
            vmm: None,
            ids,
            watcher: None,
        };
        match vm.boot(config, &spec, hypervisor.as_ref(), started).await {
            Ok(()) => Ok(vm),
            Err(err) => {
                tracing::warn!(vm_id = %vm.id, %err, "VM failed to boot, cleaning up");
                vm.teardown(Ending::BootFailed).await;
                Err(err)
            }
        }
    }

    async fn boot(
        &mut self,
        config: &Config,
        spec: &VmSpec,
        hypervisor: &dyn Hypervisor,
        started: Instant,
    ) -> Result<(), Error> {
        let h = &config.hypervisor;
        let helpers_started = Instant::now();
        let identity = self.ids.as_ref().map(VmIds::identity);
        policy::share_run_dir(&self.dir, identity)?;
        let fs_socket = self.start_virtiofsd(h, spec, identity).await?;
        let vsock_socket = self
            .start_vsock_backend(h, identity, spec.oom_score_adj)
            .await?;
        self.timings.helpers = helpers_started.elapsed();

        let launch = VmLaunch {
            id: self.id.clone(),
            accelerator: self.accelerator,
            vcpus: h.vcpus,
            memory_mib: h.memory_mib,
            tcg_tb_size_mib: h.tcg_tb_size_mib,
            kernel: h.kernel.clone(),
            initrd: h.initrd.clone(),
            cmdline: kernel_cmdline(&h.kernel_params),
            run_dir: self.dir.clone(),
            console_log: PathBuf::from(format!("/proc/self/fd/{}", crate::CONSOLE_FD)),
            vsock_vhost_socket: vsock_socket,
            fs_vhost_socket: fs_socket,
            fs_tag: husk_proto::SHARED_FS_TAG.into(),
            nets: net_launches(spec)?,
            identity,
            oom_score_adj: spec.oom_score_adj,
        };
        let vmm_started = Instant::now();
        self.start_vmm(hypervisor, &launch, spec)?;
        self.timings.vmm_spawn = vmm_started.elapsed();
        self.watcher = self.watch_daemons();

        self.wait_for_agent().await?;
        self.timings.agent_ready = vmm_started.elapsed();
        self.timings.total = started.elapsed();
        tracing::info!(
            vm_id = %self.id,
            total_ms = self.timings.total.as_millis() as u64,
            agent_ready_ms = self.timings.agent_ready.as_millis() as u64,
            "VM ready"
        );
        Ok(())
    }

    /// Starts virtiofsd on the shared directory, confined, and hands its
    /// socket to the VMM's identity. Returns the socket's path.
    async fn start_virtiofsd(
        &mut self,
        h: &HypervisorConfig,
        spec: &VmSpec,
        identity: Option<Identity>,
    ) -> Result<PathBuf, Error> {
        let fs_socket = self.dir.join(FS_SOCKET);
        let mut fs_cmd = Command::new(&h.virtiofsd_path);
        let (fs_args, fs_confinement) = policy::virtiofsd(spec.oom_score_adj);
        fs_cmd
            .arg("--socket-path")
            .arg(&fs_socket)
            .arg("--shared-dir")
            .arg(&spec.shared_dir)
            .args(["--cache", "auto"])
            .args(fs_args);
        // Confined first: the change of user comes before the hooks
        // Daemon::spawn adds (cgroup, descriptors, parent-death signal).
        fs_confinement.apply(&mut fs_cmd)?;
        let fs = self.fs.insert(Daemon::spawn(
            "virtiofsd",
            fs_cmd,
            self.logs.file("virtiofsd.log")?,
            self.logs.limits(),
            &self.placement,
            Vec::new(),
        )?);
        fs.wait_for_socket(&fs_socket, DAEMON_SOCKET_TIMEOUT)
            .await?;
        policy::give(&fs_socket, identity)?;
        Ok(fs_socket)
    }

    /// Starts vhost-device-vsock in its own directory, confined, and links
    /// the agent's socket where the launcher looks for it. Returns the
    /// vhost-user socket's path.
    async fn start_vsock_backend(
        &mut self,
        h: &HypervisorConfig,
        identity: Option<Identity>,
        oom_score_adj: Option<i32>,
    ) -> Result<PathBuf, Error> {
        let vsock_dir = policy::vsock_dir(&self.dir, identity)?;
        let vsock_socket = vsock_dir.join(policy::VSOCK_VHOST_SOCKET);
        let vsock_agent_socket = vsock_dir.join(policy::VSOCK_AGENT_SOCKET);
        let mut vsock_cmd = Command::new(&h.vsock_backend_path);
        vsock_cmd.arg("--vm").arg(format!(
            "guest-cid={},socket={},uds-path={}",
            crate::GUEST_CID,
            vsock_socket.display(),
            vsock_agent_socket.display()
        ));
        policy::vsock_backend(
            &h.vsock_backend_path,
            &self.dir,
            &vsock_dir,
            identity,
            oom_score_adj,
        )?
        .apply(&mut vsock_cmd)?;
        let vsock = self.vsock.insert(Daemon::spawn(
            "vhost-device-vsock",
            vsock_cmd,
            self.logs.file("vhost-device-vsock.log")?,
            self.logs.limits(),
            &self.placement,
            Vec::new(),
        )?);
        vsock
            .wait_for_socket(&vsock_socket, DAEMON_SOCKET_TIMEOUT)
            .await?;
        // The agent's socket is there too (made before the vhost-user
        // one); the launcher uses its own link to it from here on.
        policy::link_socket(&vsock_agent_socket, &self.agent_socket())?;
        Ok(vsock_socket)
    }

    /// Starts the VMM with the console pipe and the pod's TAPs, the
    /// console's end pumped into console.log.
    fn start_vmm(
        &mut self,
        hypervisor: &dyn Hypervisor,
        launch: &VmLaunch,
        spec: &VmSpec,
    ) -> Result<(), Error> {
        let limits = self.logs.limits();
        // The console is a pipe the VMM finds at CONSOLE_FD and opens as
        // its console file; the shim end is pumped into console.log.
        let (console_rx, console_tx) =
            crate::log_pump::pipe().map_err(|e| Error::io("a pipe for the guest console", e))?;
        self.console = Some(
            LogPump::start(
                "console",
                console_rx,
                self.logs.file(CONSOLE_LOG)?,
                limits,
                Some(husk_proto::AGENT_LISTENING_MARKER.as_bytes()),
            )
            .map_err(|e| Error::io("a thread for the console log", e))?,
        );
        let command = hypervisor.command(launch)?;
        let fds = std::iter::once(console_tx.as_raw_fd())
            .chain(spec.nets.iter().map(|n| n.tap))
            .collect();
        self.vmm = Some(Daemon::spawn(
            self.vmm_name,
            command,
            self.logs.file(VMM_LOG)?,
            limits,
            &self.placement,
            fds,
        )?);
        // The VMM holds its own copy now.
        drop(console_tx);
        Ok(())
    }

    /// Starts the watch that fails the VM when a device daemon dies; None
    /// (logged) where pidfds are not available.
    fn watch_daemons(&self) -> Option<tokio::task::JoinHandle<()>> {
        let open = |d: &Daemon| crate::supervisor::Pidfd::open(d.pid()).map(|fd| (d.name, fd));
        let opened = open(self.vmm.as_ref()?).and_then(|(_, vmm)| {
            let daemons = [&self.fs, &self.vsock]
                .into_iter()
                .flatten()
                .map(open)
                .collect::<std::io::Result<Vec<_>>>()?;
            Ok((vmm, daemons))
        });
        match opened {
            Ok((vmm, daemons)) => Some(crate::supervisor::watch(self.id.clone(), vmm, daemons)),
            Err(err) => {
                tracing::warn!(vm_id = %self.id, %err, "cannot watch the device daemons (pidfd_open)");
                None
            }
        }
    }

    /// Waits for the agent's console marker, then probes Health until it
    /// answers; fails when the VMM exits or the timeout ends.
    async fn wait_for_agent(&mut self) -> Result<(), Error> {
        let timeout = Duration::from_secs(self.timeouts.agent_ready_secs);
        let deadline = Instant::now() + timeout;
        // A refused probe (guest not listening) fails at once; a slow one
        // is a loaded guest making progress, so give it a sixth of the
        // boot budget (at least 2 s) rather than cutting it short.
        let probe_timeout = (timeout / 6).max(Duration::from_secs(2));
        let mut listening = false;
        let mut last_error = String::from("the agent has not reported listening on the console");
        loop {
            if let Some(status) = self.vmm.as_mut().and_then(Daemon::try_exit) {
                return Err(Error::VmmExited {
                    vmm: self.vmm_name,
                    status: status.to_string(),
                    log_tail: self.logs_tail_after_exit().await,
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::AgentTimeout {
                    secs: timeout.as_secs(),
                    last_error,
                    log_tail: self.logs_tail(),
                });
            }
            listening = listening || self.console.as_ref().is_some_and(LogPump::marker_seen);
            if listening {
                match self.health(left.min(probe_timeout)).await {
                    Ok(()) => return Ok(()),
                    Err(err) => last_error = err.to_string(),
                }
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Probes Health; once it answers, gives the guest the host's clock.
    async fn health(&self, timeout: Duration) -> Result<(), Error> {
        let mut agent = AgentClient::new(self.channel(timeout).await?);
        agent.health(HealthRequest {}).await?;
        set_guest_clock(&mut agent).await
    }

    async fn channel(&self, timeout: Duration) -> Result<Channel, Error> {
        crate::agent_channel(&self.agent_socket(), husk_proto::AGENT_VSOCK_PORT, timeout).await
    }

    /// A client for the agent, with RPC deadlines suited to the accelerator.
    pub async fn agent(&self) -> Result<AgentClient<Channel>, Error> {
        let timeout = Duration::from_secs(self.timeouts.shutdown_secs);
        Ok(AgentClient::new(self.channel(timeout).await?))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Gives a running VM a new id (a pooled VM becoming its pod's): its run
    /// directory and its log directory move to the new name. The daemons'
    /// sockets and the open logs move with their directories; nothing is
    /// restarted. `id` is checked like a new VM's.
    pub fn rename(&mut self, id: &str) -> Result<(), Error> {
        preflight::check_vm_id(id)?;
        let to = self.dir.with_file_name(id);
        if to.exists() {
            return Err(Error::InvalidSpec {
                field: "vm id",
                message: format!("{} exists", to.display()),
            });
        }
        std::fs::rename(&self.dir, &to).map_err(|e| {
            Error::io(
                format!("moving {} to {}", self.dir.display(), to.display()),
                e,
            )
        })?;
        if let Err(e) = self.logs.rename(id) {
            // The run directory has moved; put it back so stop() finds it.
            let _ = std::fs::rename(&to, &self.dir);
            return Err(e);
        }
        tracing::info!(vm_id = %self.id, new_id = id, "VM renamed");
        self.dir = to;
        self.id = id.to_owned();
        Ok(())
    }

    pub fn accelerator(&self) -> Accelerator {
        self.accelerator
    }

    pub fn timings(&self) -> BootTimings {
        self.timings
    }

    /// The per-VM directory holding sockets; gone after stop.
    pub fn run_dir(&self) -> &Path {
        &self.dir
    }

    /// The VM's log directory (`<logs.dir>/<id>`): the console, VMM and
    /// daemon logs. Kept after a failed boot or a death, removed after a
    /// clean stop unless `logs.keep_after_stop`.
    pub fn log_dir(&self) -> &Path {
        self.logs.path()
    }

    /// The hybrid vsock socket: `CONNECT <port>` reaches a guest port.
    pub fn agent_socket(&self) -> PathBuf {
        self.dir.join(AGENT_SOCKET)
    }

    /// The guest console's log file.
    pub fn console_log(&self) -> PathBuf {
        self.logs.path().join(CONSOLE_LOG)
    }

    pub fn pids(&self) -> VmPids {
        let pid = |d: &Option<Daemon>| d.as_ref().map_or(0, Daemon::pid);
        VmPids {
            vmm: pid(&self.vmm),
            virtiofsd: pid(&self.fs),
            vsock_backend: pid(&self.vsock),
        }
    }

    /// Every host process of the VM, parents first: the ones [`pids`]
    /// names and what they forked (vhost-device-vsock under its
    /// PID-namespace monitor, virtiofsd's sandboxed server, husk-vmm's VMM
    /// under its parent). A pooled VM joins its pod's cgroup by these: a
    /// pid written to `cgroup.procs` moves that process alone.
    ///
    /// [`pids`]: Self::pids
    pub fn processes(&mut self) -> Vec<u32> {
        [self.vmm.as_mut(), self.fs.as_mut(), self.vsock.as_mut()]
            .into_iter()
            .flatten()
            .flat_map(Daemon::tree)
            .collect()
    }

    /// Sets `score` as the `oom_score_adj` of every process of the VM (a
    /// pooled VM handed to its pod; a container of the pod that asks for
    /// a higher one).
    pub fn set_oom_score_adj(&mut self, score: i32) -> Result<(), Error> {
        let score = crate::confine::oom::Score::new(score)?;
        crate::confine::oom::set(&self.processes(), &score)
    }

    /// Whether the VMM has exited (reaped, so a killed VMM is not taken
    /// for a live one).
    pub fn has_exited(&mut self) -> bool {
        self.vmm.as_mut().is_none_or(|v| v.try_exit().is_some())
    }

    /// Waits until the VMM process exits (guest shutdown, crash or kill).
    pub async fn wait(&mut self) -> Result<ExitStatus, Error> {
        match self.vmm.as_mut() {
            Some(vmm) => vmm.wait().await,
            None => Err(Error::InvalidSpec {
                field: "vm",
                message: "the VM was never started".into(),
            }),
        }
    }

    /// Stops the guest (Shutdown RPC, then SIGTERM, then SIGKILL to the VMM),
    /// ends the daemons and removes the run directory. Safe to call again.
    /// Returns how the VMM ended (None if it never started).
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        // Daemons end on purpose from here on.
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        let grace = Duration::from_secs(self.timeouts.shutdown_secs);
        let running = self.vmm.as_mut().is_some_and(|v| v.try_exit().is_none());
        let ending = if running {
            tracing::info!(vm_id = %self.id, "VM stopping");
            Ending::Stopped
        } else {
            tracing::warn!(vm_id = %self.id, logs = %self.logs.path().display(), "VM died: its VMM had exited before the stop");
            Ending::Died
        };
        if running {
            match tokio::time::timeout(grace, self.request_shutdown(grace)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => tracing::warn!(vm_id = %self.id, %err, "Shutdown RPC failed"),
                Err(_) => tracing::warn!(vm_id = %self.id, "Shutdown RPC timed out"),
            }
        }
        self.teardown(ending).await;
        let status = self.vmm.as_mut().and_then(Daemon::try_exit);
        tracing::info!(vm_id = %self.id, ?status, "VM stopped");
        status
    }

    async fn request_shutdown(&mut self, grace: Duration) -> Result<(), Error> {
        let mut agent = AgentClient::new(self.channel(grace).await?);
        agent.shutdown(ShutdownRequest {}).await?;
        if let Some(vmm) = self.vmm.as_mut() {
            vmm.wait().await?;
        }
        Ok(())
    }

    /// Ends every process still running, writes their last output to the
    /// logs, removes the run directory, and keeps or removes the logs as
    /// `ending` says.
    async fn teardown(&mut self, ending: Ending) {
        // From here on the processes end on purpose.
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        let grace = Duration::from_secs(self.timeouts.shutdown_secs);
        if let Some(vmm) = self.vmm.as_mut() {
            vmm.terminate(grace).await;
        }
        for daemon in [self.vsock.as_mut(), self.fs.as_mut()]
            .into_iter()
            .flatten()
        {
            daemon.terminate(DAEMON_GRACE).await;
        }
        let pumps = [self.vmm.as_mut(), self.vsock.as_mut(), self.fs.as_mut()]
            .into_iter()
            .flatten()
            .map(|d| &mut d.log)
            .chain(self.console.as_mut());
        futures_util::future::join_all(pumps.map(|p| p.finish(DRAIN))).await;
        if let Err(err) = std::fs::remove_dir_all(&self.dir) {
            if err.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(vm_id = %self.id, dir = %self.dir.display(), %err, "cannot remove run directory");
            }
        }
        if let Some(vms) = self.dir.parent() {
            self.logs.close(&self.id, ending, vms);
        }
    }

    /// The end of the console and the VMM's log, for an error message,
    /// once the VMM has exited and its last output is in.
    async fn logs_tail_after_exit(&mut self) -> String {
        if let Some(c) = self.console.as_mut() {
            c.finish(DRAIN).await;
        }
        if let Some(v) = self.vmm.as_mut() {
            v.log.finish(DRAIN).await;
        }
        self.logs_tail()
    }

    /// The last lines of the console and of the VMM's output, as they
    /// passed (from memory: a guest-written file is never read back).
    fn logs_tail(&self) -> String {
        let tail = |p: Option<&LogPump>| p.map(LogPump::tail).unwrap_or_default();
        format!(
            "--- console ---\n{}\n--- {} ---\n{}",
            tail(self.console.as_ref()),
            self.vmm_name,
            tail(self.vmm.as_ref().map(|d| &d.log))
        )
    }
}

impl Drop for MicroVm {
    /// Last resort when `stop` was not awaited: the daemons are SIGKILLed by
    /// `kill_on_drop`; the directory goes here.
    fn drop(&mut self) {
        if let Some(w) = self.watcher.take() {
            w.abort();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checks what a boot of `spec` needs before anything is made: the
/// configuration, the id, the guest artifacts, the shared directory, the
/// daemons, and that every socket path fits. Returns the run directory.
fn check(config: &Config, spec: &VmSpec) -> Result<PathBuf, Error> {
    config.validate()?;
    let h = &config.hypervisor;
    preflight::check_vm_id(&spec.id)?;
    preflight::check_kernel(&h.kernel)?;
    preflight::check_initrd(&h.initrd)?;
    preflight::check_shared_dir(&spec.shared_dir)?;
    preflight::check_executable("hypervisor.virtiofsd_path", &h.virtiofsd_path)?;
    preflight::check_executable("hypervisor.vsock_backend_path", &h.vsock_backend_path)?;
    let dir = h.runtime_dir.join("vms").join(&spec.id);
    let longest = dir.join(policy::VSOCK_DIR).join(policy::VSOCK_VHOST_SOCKET);
    if longest.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(Error::InvalidSpec {
            field: "hypervisor.runtime_dir",
            message: format!("{} is too long for a Unix socket path", longest.display()),
        });
    }
    Ok(dir)
}

/// The VMM `h.backend` resolves to on this host (husk-vmm only under KVM),
/// checked to be there, and why it was chosen.
fn choose_vmm(
    h: &HypervisorConfig,
    decision: &crate::AcceleratorDecision,
) -> Result<(Box<dyn Hypervisor>, String), Error> {
    let backend = crate::resolve_backend(
        h.backend,
        decision,
        preflight::check_executable("hypervisor.vmm_path", &h.vmm_path).is_ok(),
    );
    let hypervisor: Box<dyn Hypervisor> = match backend.backend {
        Backend::HuskVmm => {
            if decision.accelerator != Accelerator::Kvm {
                return Err(Error::InvalidSpec {
                    field: "hypervisor.backend",
                    message: format!(
                        "husk-vmm needs KVM, and the accelerator is TCG: {}",
                        decision.reason
                    ),
                });
            }
            preflight::check_executable("hypervisor.vmm_path", &h.vmm_path)?;
            Box::new(HuskVmm {
                binary: h.vmm_path.clone(),
            })
        }
        _ => {
            preflight::check_executable("hypervisor.qemu_path", &h.qemu_path)?;
            Box::new(Qemu {
                binary: h.qemu_path.clone(),
            })
        }
    };
    Ok((hypervisor, backend.reason))
}

/// Makes a VM's run directory, 0700 root, and `<runtime_dir>/vms` above
/// it 0700 too (the VMs' sockets are root's), whichever kind of VM makes
/// it first. An existing one is a VM of that id running.
pub(crate) fn create_run_dir(dir: &Path) -> Result<PathBuf, Error> {
    if let Some(parent) = dir.parent() {
        let io = |e| Error::io(format!("creating {}", parent.display()), e);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io)?;
        // Made by an older husk or by hand with another mode: root's only.
        std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Error::InvalidSpec {
                field: "id",
                message: format!("a VM with this id already runs ({} exists)", dir.display()),
            },
            _ => Error::io(format!("creating {}", dir.display()), e),
        })?;
    Ok(dir.to_owned())
}

/// Gives the guest the host's clock (a TCG guest has no RTC and would
/// start in 1970; a pooled VM has waited since its boot).
pub async fn set_guest_clock(agent: &mut AgentClient<Channel>) -> Result<(), Error> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    agent
        .set_clock(SetClockRequest {
            unix_seconds: now.as_secs() as i64,
            nanos: now.subsec_nanos(),
        })
        .await?;
    Ok(())
}

/// The guest NICs: one per pod interface, with its MAC.
fn net_launches(spec: &VmSpec) -> Result<Vec<crate::NetLaunch>, Error> {
    spec.nets
        .iter()
        .map(|n| {
            let mac = n.mac.parse::<MacAddr>().map_err(|source| Error::Mac {
                mac: n.mac.clone(),
                source,
            })?;
            Ok(crate::NetLaunch { mac })
        })
        .collect()
}

/// `reboot=t` + the VMM's no-reboot turn a guest reboot into VMM exit;
/// `panic=-1` makes an agent crash (PID 1 exit) end the VM at once;
/// `no_timer_check` skips the IO-APIC timer probe, which fails ("IO-APIC +
/// timer doesn't work!", a panic) when a TCG vCPU is descheduled on a
/// loaded host, as Kata's guests do.
fn kernel_cmdline(extra: &str) -> String {
    let base = "console=ttyS0 reboot=t panic=-1 no_timer_check quiet";
    if extra.trim().is_empty() {
        base.to_owned()
    } else {
        format!("{base} {}", extra.trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_appends_configured_params() {
        assert_eq!(
            kernel_cmdline(""),
            "console=ttyS0 reboot=t panic=-1 no_timer_check quiet"
        );
        assert_eq!(
            kernel_cmdline(" loglevel=7 "),
            "console=ttyS0 reboot=t panic=-1 no_timer_check quiet loglevel=7"
        );
    }

    /// `<runtime_dir>/vms` is root's only whichever kind of VM makes it
    /// first, and however an older husk or a person made it.
    #[test]
    fn the_vms_directory_is_made_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let vms = dir.path().join("vms");
        std::fs::create_dir(&vms).unwrap();
        std::fs::set_permissions(&vms, std::fs::Permissions::from_mode(0o755)).unwrap();
        let run = create_run_dir(&vms.join("a")).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode(&vms), mode(&run)), (0o700, 0o700));
        let fresh = dir.path().join("r2/vms/b");
        create_run_dir(&fresh).unwrap();
        assert_eq!(mode(fresh.parent().unwrap()), 0o700);
    }

    #[test]
    fn existing_run_dir_is_refused_as_id_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let vm_dir = dir.path().join("vms/a");
        create_run_dir(&vm_dir).unwrap();
        let err = create_run_dir(&vm_dir).unwrap_err().to_string();
        assert!(err.contains("already runs"), "{err}");
    }
}
