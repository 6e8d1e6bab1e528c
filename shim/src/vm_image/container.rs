//! [`VmContainer`]: a husk-vm pod's app container, which *is* its VM. Its
//! create prepares everything and spawns QEMU paused (the container's pid
//! is QEMU's); its start lets the vCPUs run. Container semantics map onto
//! the VM (docs/vm-pods.md, README's table):
//!
//! - stdout is the serial console, stdin its input; stderr is QEMU's own
//!   messages and husk's note of a guest panic;
//! - SIGTERM (and SIGINT, SIGPWR) press the ACPI power button (QMP
//!   `system_powerdown`); SIGKILL ends QEMU (137);
//! - the exit is QEMU's: 0 when the guest powered off, 1 after a guest
//!   kernel panic (pvpanic, said on stderr), 137 when killed;
//! - pause and resume stop and continue the vCPUs (QMP `stop`, `cont`);
//! - stats are QEMU's CPU time and memory on the host.
//!
//! QEMU's exit is watched by one task that then detaches the pod network
//! and removes the run directory and cgroup, so a container created after
//! it (a restart) finds the pod's TAP free.

use super::cloud_init::{self, PodFacts};
use super::container_disk::ContainerDisk;
use super::exec::GuestExec;
use super::seed;
use super::VmPodContext;
use crate::agent::AgentError;
use crate::network::PodNetwork;
use husk_hypervisor::qga::GuestAgent;
use husk_hypervisor::qmp::{GuestEvents, Qmp};
use husk_hypervisor::vm_image::{self, BlockDevice, ImageBoot, VmImageLaunch, VmKiller};
use husk_proto::agent::ContainerStatsResponse;
use serde_json::Value;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::{mpsc, watch};

/// Exit status of a VM killed by SIGKILL.
pub const KILLED: u32 = crate::manager::KILLED;
/// Exit status after a guest kernel panic (QEMU's `panic=exit-failure`).
pub const PANICKED: u32 = 1;
/// How long QEMU has to make its QMP socket.
const QMP_CONNECT: Duration = Duration::from_secs(30);
/// Output chunks held for a reader that is behind.
const OUTPUT_QUEUE: usize = 64;
/// Annotations a husk-vm container may carry (containerd passes io.husk.*).
pub const FIRMWARE_ANNOTATION: &str = "io.husk.vm.firmware";
pub const KERNEL_ARGS_ANNOTATION: &str = "io.husk.vm.kernel_args";
/// What containerd's CRI puts on a container: its pod's UID and name.
const SANDBOX_UID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-uid";
const SANDBOX_NAME_ANNOTATION: &str = "io.kubernetes.cri.sandbox-name";
const SANDBOX_ID_ANNOTATION: &str = "io.kubernetes.cri.sandbox-id";

/// What share() checked and mounted for a VM container, for its create.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub rootfs: PathBuf,
    pub disk: ContainerDisk,
    pub spec: Value,
    pub netns: Option<PathBuf>,
    pub cgroups_path: Option<String>,
    pub vcpus: u32,
    pub memory_mib: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Seed(#[from] seed::SeedError),
    #[error(transparent)]
    CloudInit(#[from] cloud_init::CloudInitError),
    #[error("pod network")]
    Network(#[from] crate::network::NetworkError),
    #[error("starting QEMU")]
    Qemu(#[from] husk_hypervisor::Error),
    #[error("QEMU's monitor")]
    Qmp(#[from] husk_hypervisor::qmp::QmpError),
    #[error("{0}")]
    Invalid(String),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<VmError> for AgentError {
    fn from(e: VmError) -> Self {
        let code = match e {
            VmError::CloudInit(_) | VmError::Invalid(_) => tonic::Code::InvalidArgument,
            _ => tonic::Code::Internal,
        };
        AgentError::Status {
            code,
            message: crate::agent::sanitize(&super::chain(e)),
        }
    }
}

pub struct VmContainer {
    pub id: String,
    /// QEMU's pid on the host: the container's pid.
    pub pid: u32,
    rootfs: PathBuf,
    qmp: Qmp,
    killer: VmKiller,
    killed: Arc<AtomicBool>,
    pub(super) guest_agent: Arc<GuestAgentSlot>,
    console_in: tokio::sync::Mutex<Option<ChildStdin>>,
    /// [console, QEMU's messages] until read_output takes them.
    outputs: Arc<Mutex<Outputs>>,
    exit: watch::Receiver<Option<u32>>,
    pub(super) execs: Mutex<HashMap<String, Arc<GuestExec>>>,
    pub(super) call_timeout: Duration,
}

type Outputs = [Option<mpsc::Receiver<Vec<u8>>>; 2];

/// How long after start an output nobody took is kept: the manager's
/// relays take theirs as they start, which may be just after the
/// container's start; after this, output nobody reads is dropped, so an
/// unread console never stalls the guest.
const UNREAD_OUTPUT_KEPT: Duration = Duration::from_secs(30);

/// The one connection to the guest agent, made when first needed.
pub struct GuestAgentSlot {
    pub socket: PathBuf,
    pub conn: tokio::sync::Mutex<Option<GuestAgent>>,
}

/// What the exit watch undoes once QEMU is gone.
struct Leftovers {
    /// The DHCP server on the TAP, stopped first.
    dhcp: Option<tokio::task::JoinHandle<()>>,
    network: Option<PodNetwork>,
    cgroup: Option<crate::cgroup::HostCgroup>,
    run_dir: PathBuf,
}

impl Leftovers {
    async fn remove(self) {
        if let Some(d) = self.dhcp {
            d.abort();
        }
        if let Some(n) = self.network {
            let _ = tokio::task::spawn_blocking(move || n.detach()).await;
        }
        if let Some(c) = self.cgroup {
            c.remove();
        }
        if let Err(e) = std::fs::remove_dir_all(&self.run_dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.run_dir.display(), %e, "cannot remove the VM's run directory");
            }
        }
    }
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let context = context.into();
    move |source| VmError::Io { context, source }
}

/// Writes the pod's cloud-init seed (address, DNS, hostname, the user's
/// data) and serves the same address over DHCP on the pod's TAP, for
/// guests that ask rather than read the seed. Returns the seed's path.
async fn seed_and_dhcp(
    id: &str,
    p: &Prepared,
    ctx: &VmPodContext,
    files: &Path,
    leftovers: &mut Leftovers,
) -> Result<PathBuf, VmError> {
    let guest = leftovers.network.as_ref().map(|n| n.guest.clone());
    let facts = pod_facts(&p.spec, id, guest)?;
    let seed_files = cloud_init::seed_files(&facts);
    // What the VM's network is told (user-data, which may hold secrets, is
    // not logged).
    for (name, data) in seed_files.iter().filter(|(n, _)| *n == "network-config") {
        tracing::info!(pod_id = %ctx.pod_id, container_id = id, file = name, content = %String::from_utf8_lossy(data).replace('\n', " "), "cloud-init seed");
    }
    let seed = seed::create_seed(files, &seed_files).await?;
    if let Some(n) = &leftovers.network {
        match super::dhcp::Lease::of_pod(&n.guest, &facts.dns, &facts.hostname) {
            Some(lease) => {
                leftovers.dhcp = Some(super::dhcp::serve(
                    &n.netns,
                    crate::network::TAP_NAME,
                    lease,
                )?)
            }
            None => {
                tracing::info!(pod_id = %ctx.pod_id, container_id = id, "the pod has no IPv4 address: no DHCP")
            }
        }
    }
    Ok(seed)
}

/// The VM's run directory (QMP and guest agent sockets), owner-only.
fn create_run_dir(dir: &Path) -> Result<(), VmError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("creating {}", parent.display())))?;
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("creating {}", dir.display())))
}

/// The guest NIC's MAC: the pod interface's, which the TAP took over.
fn nic_mac(network: Option<&PodNetwork>) -> Result<Option<husk_hypervisor::MacAddr>, VmError> {
    network
        .map(|n| {
            n.mac
                .parse()
                .map_err(|e| VmError::Invalid(format!("the pod interface's MAC {:?}: {e}", n.mac)))
        })
        .transpose()
}

/// Connects to the new QEMU's monitor. If QEMU never makes its socket, it
/// is ended, and the error says what QEMU printed.
async fn connect_qmp(
    run_dir: &Path,
    spawned: vm_image::SpawnedVm,
) -> Result<(Qmp, vm_image::SpawnedVm), VmError> {
    let e = match Qmp::connect(&vm_image::qmp_socket(run_dir), QMP_CONNECT).await {
        Ok(qmp) => return Ok((qmp, spawned)),
        Err(e) => e,
    };
    let _ = spawned.killer.kill();
    let mut child = spawned.child;
    let _ = child.wait().await;
    let mut diagnostics = String::new();
    let mut err = spawned.diagnostics;
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        (&mut err).take(4096).read_to_string(&mut diagnostics),
    )
    .await;
    Err(VmError::Invalid(format!(
        "QEMU did not start: {}; it said: {}",
        super::chain(e),
        diagnostics.trim()
    )))
}

impl VmContainer {
    /// Makes the VM's files, connects the pod network and spawns QEMU,
    /// paused. On error nothing of it is left but the rootfs mount.
    pub async fn create(id: &str, p: Prepared, ctx: &VmPodContext) -> Result<Self, VmError> {
        let files = seed::create_dir(&p.rootfs)?;
        let run_dir = ctx.config.hypervisor.runtime_dir.join("vms").join(id);
        let mut leftovers = Leftovers {
            dhcp: None,
            network: None,
            cgroup: None,
            run_dir: run_dir.clone(),
        };
        match Self::create_in(id, &p, ctx, &files, &mut leftovers).await {
            Ok(vm) => Ok(vm),
            Err(e) => {
                leftovers.remove().await;
                seed::remove_dir(&p.rootfs);
                Err(e)
            }
        }
    }

    async fn create_in(
        id: &str,
        p: &Prepared,
        ctx: &VmPodContext,
        files: &Path,
        leftovers: &mut Leftovers,
    ) -> Result<Self, VmError> {
        let vm_config = &ctx.config.vm;
        let root =
            seed::create_overlay(&vm_config.qemu_img_path, files, &p.disk.disk, p.disk.format)
                .await?;
        if let Some(ns) = &p.netns {
            let ns = ns.clone();
            leftovers.network = tokio::task::spawn_blocking(move || crate::network::attach(&ns))
                .await
                .map_err(|e| VmError::Invalid(format!("network attach: {e}")))??;
        }
        let seed = seed_and_dhcp(id, p, ctx, files, leftovers).await?;
        let boot = boot_of(p, vm_config, files)?;
        let block_devices = block_devices(&p.spec)?;
        create_run_dir(&leftovers.run_dir)?;
        let launch = VmImageLaunch {
            id: id.to_owned(),
            accelerator: ctx.accelerator,
            vcpus: p.vcpus,
            memory_mib: p.memory_mib,
            tcg_tb_size_mib: vm_config.tcg_tb_size_mib,
            boot,
            root,
            seed: Some(seed),
            block_devices,
            nic: nic_mac(leftovers.network.as_ref())?,
            run_dir: leftovers.run_dir.clone(),
        };
        let tap = leftovers.network.as_ref().map(|n| n.tap.as_raw_fd());
        let spawned = vm_image::spawn(&ctx.config.hypervisor.qemu_path, &launch, tap)?;
        let pid = spawned.pid;
        tracing::info!(pod_id = %ctx.pod_id, container_id = id, pid, vcpus = p.vcpus, memory_mib = p.memory_mib, accelerator = %ctx.accelerator, "QEMU started (paused)");
        leftovers.cgroup = p
            .cgroups_path
            .as_deref()
            .and_then(|path| join_cgroup(pid, id, path));
        let (qmp, spawned) = connect_qmp(&leftovers.run_dir, spawned).await?;
        Ok(Self::watched(id, p, ctx, qmp, spawned, leftovers))
    }

    /// The container around a running QEMU: relays for its console and
    /// messages, and the task that waits for its exit and then removes
    /// what `leftovers` holds (which it takes over).
    fn watched(
        id: &str,
        p: &Prepared,
        ctx: &VmPodContext,
        qmp: Qmp,
        spawned: vm_image::SpawnedVm,
        leftovers: &mut Leftovers,
    ) -> Self {
        let events = qmp.events();
        let killed = Arc::new(AtomicBool::new(false));
        let (console_tx, console_rx) = mpsc::channel(OUTPUT_QUEUE);
        let (diag_tx, diag_rx) = mpsc::channel(OUTPUT_QUEUE);
        let (exit_tx, exit_rx) = watch::channel(None);
        tokio::spawn(relay_pipe(spawned.console_out, console_tx, None));
        tokio::spawn(relay_pipe(
            spawned.diagnostics,
            diag_tx,
            Some((exit_rx.clone(), events.clone())),
        ));
        let owned = Leftovers {
            dhcp: leftovers.dhcp.take(),
            network: leftovers.network.take(),
            cgroup: leftovers.cgroup.take(),
            run_dir: leftovers.run_dir.clone(),
        };
        tokio::spawn(watch_exit(
            spawned.child,
            owned,
            killed.clone(),
            events.clone(),
            exit_tx,
            (ctx.pod_id.clone(), id.to_owned()),
        ));
        VmContainer {
            id: id.to_owned(),
            pid: spawned.pid,
            rootfs: p.rootfs.clone(),
            qmp,
            killer: spawned.killer,
            killed,
            guest_agent: Arc::new(GuestAgentSlot {
                socket: vm_image::guest_agent_socket(&leftovers.run_dir),
                conn: tokio::sync::Mutex::new(None),
            }),
            console_in: tokio::sync::Mutex::new(Some(spawned.console_in)),
            outputs: Arc::new(Mutex::new([Some(console_rx), Some(diag_rx)])),
            exit: exit_rx,
            execs: Mutex::default(),
            call_timeout: ctx.timeouts.agent_call,
        }
    }

    /// Lets the vCPUs run. Output nobody has asked for within
    /// [`UNREAD_OUTPUT_KEPT`] is dropped from then on.
    pub async fn start(&self) -> Result<(), AgentError> {
        let outputs = self.outputs.clone();
        tokio::spawn(async move {
            tokio::time::sleep(UNREAD_OUTPUT_KEPT).await;
            outputs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter_mut()
                .for_each(|o| drop(o.take()));
        });
        self.qmp_call("cont").await
    }

    async fn qmp_call(&self, command: &str) -> Result<(), AgentError> {
        self.qmp
            .execute(command, None, self.call_timeout)
            .await
            .map(drop)
            .map_err(|e| AgentError::Status {
                code: tonic::Code::Unavailable,
                message: crate::agent::sanitize(&super::chain(e)),
            })
    }

    /// The output stream `which` (0 console, 1 QEMU's messages), once.
    pub fn take_output(&self, which: usize) -> Option<mpsc::Receiver<Vec<u8>>> {
        self.outputs.lock().unwrap_or_else(|e| e.into_inner())[which].take()
    }

    pub fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// QEMU's exit status, once it has exited and what it held is undone.
    pub async fn wait(&self) -> u32 {
        let mut rx = self.exit.clone();
        let status = rx
            .wait_for(Option::is_some)
            .await
            .map(|s| s.unwrap_or(KILLED));
        status.unwrap_or(KILLED)
    }

    /// The exit watch, for whoever must stop when the VM does.
    pub fn exit_watch(&self) -> watch::Receiver<Option<u32>> {
        self.exit.clone()
    }

    pub async fn signal(&self, signal: u32) -> Result<(), AgentError> {
        match signal {
            0 => Ok(()),
            9 => {
                self.kill();
                Ok(())
            }
            // SIGINT, SIGTERM, SIGPWR: the ACPI power button.
            2 | 15 | 30 => {
                if self.exited() {
                    return Ok(());
                }
                tracing::info!(container_id = %self.id, signal, "pressing the VM's power button");
                self.qmp_call("system_powerdown").await
            }
            other => Err(AgentError::Status {
                code: tonic::Code::InvalidArgument,
                message: format!(
                    "signal {other} has no meaning for a VM: husk-vm takes SIGTERM (the ACPI power \
                     button) and SIGKILL (the VM is ended)"
                ),
            }),
        }
    }

    /// Ends QEMU at once (its exit reads 137).
    pub fn kill(&self) {
        if self.exited() {
            return;
        }
        self.killed.store(true, Ordering::SeqCst);
        if let Err(e) = self.killer.kill() {
            tracing::warn!(container_id = %self.id, %e, "cannot kill QEMU");
        }
    }

    pub async fn set_paused(&self, pause: bool) -> Result<(), AgentError> {
        self.qmp_call(if pause { "stop" } else { "cont" }).await
    }

    /// Feeds the serial console from `input`. The console stays open when
    /// `input` ends: a later attach may type again.
    pub async fn write_console(
        &self,
        mut input: crate::agent::InputStream,
    ) -> Result<(), AgentError> {
        let mut slot = self.console_in.lock().await;
        let Some(stdin) = slot.as_mut() else {
            return Ok(());
        };
        while let Some(chunk) = input.recv().await {
            if stdin.write_all(&chunk).await.is_err() {
                // QEMU is gone.
                *slot = None;
                break;
            }
        }
        Ok(())
    }

    /// QEMU's CPU time and memory on the host, as cgroup-style figures.
    pub fn stats(&self) -> ContainerStatsResponse {
        host_stats(self.pid, self.exited())
    }

    /// Removes the VM's files from the rootfs (QEMU is killed first if it
    /// still runs).
    pub async fn remove(&self) {
        self.kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.wait()).await;
        seed::remove_dir(&self.rootfs);
    }
}

/// Copies a pipe of QEMU's into `tx` until EOF; when the reader went
/// away, the rest is read and dropped. With `after`, once the pipe ends
/// and the VM's exit is known, a guest panic is told on it.
async fn relay_pipe(
    mut pipe: impl AsyncRead + Unpin,
    tx: mpsc::Sender<Vec<u8>>,
    after: Option<(watch::Receiver<Option<u32>>, Arc<GuestEvents>)>,
) {
    let mut buf = vec![0u8; husk_proto::IO_CHUNK_BYTES];
    let mut open = true;
    loop {
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if open && tx.send(buf[..n].to_vec()).await.is_err() {
            open = false;
        }
    }
    if let Some((mut exit, events)) = after {
        let _ = exit.wait_for(Option::is_some).await;
        if events.panicked() && open {
            let _ = tx
                .send(
                    b"husk-vm: the guest kernel panicked (pvpanic); QEMU stopped the VM\n".to_vec(),
                )
                .await;
        }
    }
}

/// Waits for QEMU's exit, undoes what it held, and publishes the status.
async fn watch_exit(
    mut child: tokio::process::Child,
    leftovers: Leftovers,
    killed: Arc<AtomicBool>,
    events: Arc<GuestEvents>,
    exit: watch::Sender<Option<u32>>,
    (pod_id, id): (String, String),
) {
    let status = child.wait().await;
    // QMP's last events (a panic) come before QEMU closes the socket.
    events.wait_closed(Duration::from_secs(2)).await;
    let status = match status {
        Ok(s) => exit_status(s, killed.load(Ordering::SeqCst), events.panicked()),
        Err(e) => {
            tracing::warn!(pod_id, container_id = id, %e, "waiting for QEMU");
            KILLED
        }
    };
    tracing::info!(
        pod_id,
        container_id = id,
        exit_status = status,
        panicked = events.panicked(),
        powered_off_by_guest = events.shutdown_by_guest(),
        "VM exited"
    );
    leftovers.remove().await;
    exit.send_replace(Some(status));
}

fn exit_status(status: std::process::ExitStatus, killed: bool, panicked: bool) -> u32 {
    use std::os::unix::process::ExitStatusExt;
    if killed {
        KILLED
    } else if panicked {
        PANICKED
    } else if let Some(code) = status.code() {
        code as u32 & 0xff
    } else if let Some(signal) = status.signal() {
        128 + signal as u32
    } else {
        KILLED
    }
}

/// Moves QEMU into the container's cgroup (its limits and accounting are
/// the pod's; a cgroupfs path or systemd's `slice:prefix:name`, as for
/// micro-VMs); a failure is logged and the VM runs on outside it.
fn join_cgroup(pid: u32, id: &str, spec_path: &str) -> Option<crate::cgroup::HostCgroup> {
    let rel = match crate::cgroup::host_path(spec_path) {
        Ok(rel) => rel,
        Err(e) => {
            tracing::warn!(container_id = id, cgroups_path = spec_path, %e, "not a cgroup path; the VM stays in the shim's cgroup");
            return None;
        }
    };
    let cgroup = match crate::cgroup::HostCgroup::create(&rel) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(container_id = id, cgroups_path = spec_path, %e, "cannot make the VM's cgroup");
            return None;
        }
    };
    for file in cgroup.procs_files() {
        if let Err(e) = std::fs::write(&file, pid.to_string()) {
            tracing::warn!(container_id = id, pid, file = %file.display(), %e, "cannot move QEMU into its cgroup");
        }
    }
    Some(cgroup)
}

/// How the VM boots: `io.husk.vm.firmware` (bios or uefi) chooses firmware
/// boot; without it, an image with a kernel and initrd is booted directly,
/// any other through SeaBIOS.
fn boot_of(p: &Prepared, vm: &husk_config::VmConfig, files: &Path) -> Result<ImageBoot, VmError> {
    let annotation = |k: &str| {
        p.spec
            .get("annotations")
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
    };
    match annotation(FIRMWARE_ANNOTATION) {
        Some("bios") => return Ok(ImageBoot::Bios),
        Some("uefi") => {
            for (key, path) in [
                ("vm.ovmf_code", &vm.ovmf_code),
                ("vm.ovmf_vars", &vm.ovmf_vars),
            ] {
                if !path.is_file() {
                    return Err(VmError::Invalid(format!(
                        "{FIRMWARE_ANNOTATION}: uefi needs OVMF, and {key} ({}) is not there (apt-get install ovmf)",
                        path.display()
                    )));
                }
            }
            let vars = files.join("OVMF_VARS.fd");
            std::fs::copy(&vm.ovmf_vars, &vars)
                .map_err(io(format!("copying {}", vm.ovmf_vars.display())))?;
            return Ok(ImageBoot::Uefi {
                code: vm.ovmf_code.clone(),
                vars,
            });
        }
        Some(other) => {
            return Err(VmError::Invalid(format!(
                "{FIRMWARE_ANNOTATION}: {other:?} is neither \"bios\" nor \"uefi\""
            )))
        }
        None => {}
    }
    match &p.disk.kernel {
        Some((kernel, initrd)) => {
            let cmdline = annotation(KERNEL_ARGS_ANNOTATION).unwrap_or(&vm.kernel_args);
            if cmdline.contains(['\n', '\0']) {
                return Err(VmError::Invalid(format!(
                    "{KERNEL_ARGS_ANNOTATION}: must not contain a newline or NUL"
                )));
            }
            Ok(ImageBoot::Kernel {
                kernel: kernel.clone(),
                initrd: initrd.clone(),
                cmdline: cmdline.to_owned(),
            })
        }
        None => Ok(ImageBoot::Bios),
    }
}

/// The spec's mount whose destination is `dest`: its host source.
fn mount_source(spec: &Value, dest: &str) -> Option<PathBuf> {
    spec.get("mounts")?
        .as_array()?
        .iter()
        .find(|m| {
            m.get("destination")
                .and_then(Value::as_str)
                .map(|d| d.trim_end_matches('/'))
                == Some(dest)
        })
        .and_then(|m| m.get("source")?.as_str())
        .filter(|s| s.starts_with('/'))
        .map(PathBuf::from)
}

/// Everything the seed is made of, from the container's spec (its
/// volumes, kubelet's hostname and resolv.conf, CRI's annotations) and
/// the pod network.
fn pod_facts(
    spec: &Value,
    id: &str,
    network: Option<husk_proto::agent::ConfigureNetworkRequest>,
) -> Result<PodFacts, VmError> {
    let annotation = |k: &str| {
        spec.get("annotations")
            .and_then(|a| a.get(k))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let instance_id = annotation(SANDBOX_UID_ANNOTATION)
        .or_else(|| annotation(SANDBOX_ID_ANNOTATION))
        .unwrap_or(id)
        .to_owned();
    let hostname = mount_source(spec, "/etc/hostname")
        .and_then(|p| cloud_init::read_small(&p).ok())
        .and_then(|t| cloud_init::parse_hostname(&t))
        .or_else(|| {
            spec.get("hostname")
                .and_then(Value::as_str)
                .and_then(cloud_init::parse_hostname)
        })
        .or_else(|| annotation(SANDBOX_NAME_ANNOTATION).and_then(cloud_init::parse_hostname))
        .unwrap_or_else(|| "husk-vm".to_owned());
    let dns = mount_source(spec, "/etc/resolv.conf")
        .and_then(|p| cloud_init::read_small(&p).ok())
        .map(|t| cloud_init::parse_resolv_conf(&t))
        .unwrap_or_default();
    let mut facts = PodFacts {
        instance_id,
        hostname,
        network,
        dns,
        ..Default::default()
    };
    if let Some(vol) = mount_source(spec, cloud_init::CLOUD_INIT_MOUNT) {
        let read = |name| cloud_init::read_in_volume(&vol, name, cloud_init::MAX_USER_FILE);
        facts.user_data = read("user-data")?;
        facts.user_meta_data = read("meta-data")?;
        facts.user_network_config = read("network-config")?;
    }
    if let Some(vol) = mount_source(spec, cloud_init::SSH_KEYS_MOUNT) {
        if let Some(keys) =
            cloud_init::read_in_volume(&vol, "authorized_keys", cloud_init::MAX_USER_FILE)?
        {
            facts.ssh_keys = cloud_init::parse_authorized_keys(&String::from_utf8_lossy(&keys));
        }
    }
    Ok(facts)
}

/// Raw block volumes (`volumeDevices`): CRI passes them as the spec's
/// block devices (`linux.devices` of type "b", by major and minor). Each
/// becomes a virtio-blk disk whose serial is the device path's last name.
fn block_devices(spec: &Value) -> Result<Vec<BlockDevice>, VmError> {
    let mut out = Vec::new();
    for d in spec
        .pointer("/linux/devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if d.get("type").and_then(Value::as_str) != Some("b") {
            continue;
        }
        let (Some(major), Some(minor)) = (
            d.get("major").and_then(Value::as_u64),
            d.get("minor").and_then(Value::as_u64),
        ) else {
            continue;
        };
        let container_path = d.get("path").and_then(Value::as_str).unwrap_or("");
        let serial: String = Path::new(container_path)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .take(20)
            .collect();
        out.push(BlockDevice {
            path: host_block_device(major, minor)?,
            serial,
        });
    }
    Ok(out)
}

/// The host's device node of block device major:minor, checked to be it.
fn host_block_device(major: u64, minor: u64) -> Result<PathBuf, VmError> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let wanted = nix::sys::stat::makedev(major, minor);
    let mut candidates = vec![PathBuf::from(format!("/dev/block/{major}:{minor}"))];
    if let Ok(uevent) = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent")) {
        if let Some(name) = uevent.lines().find_map(|l| l.strip_prefix("DEVNAME=")) {
            if !name.contains("..") {
                candidates.push(Path::new("/dev").join(name));
            }
        }
    }
    for c in candidates {
        if let Ok(m) = std::fs::metadata(&c) {
            if m.file_type().is_block_device() && m.rdev() == wanted {
                return Ok(c);
            }
        }
    }
    Err(VmError::Invalid(format!(
        "linux.devices: no block device {major}:{minor} on the host"
    )))
}

/// QEMU's figures from /proc: CPU in microseconds, memory in bytes.
fn host_stats(pid: u32, exited: bool) -> ContainerStatsResponse {
    let mut r = ContainerStatsResponse::default();
    if exited {
        return r;
    }
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as u64;
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Fields after the command name (which may hold spaces): utime is
        // the 14th field of the line, stime the 15th.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let usec = |t: u64| t.saturating_mul(1_000_000) / ticks;
            let (user, system) = (usec(num(11)), usec(num(12)));
            r.cpu_stat.insert("user_usec".into(), user);
            r.cpu_stat.insert("system_usec".into(), system);
            r.cpu_stat.insert("usage_usec".into(), user + system);
            r.pids_current = num(17);
        }
    }
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        let kib = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
                * 1024
        };
        r.memory_current = kib("VmRSS");
        r.memory_peak = kib("VmHWM");
        r.memory_stat.insert("anon".into(), kib("RssAnon"));
        r.memory_stat
            .insert("file".into(), kib("RssFile") + kib("RssShmem"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exits_read_as_a_container_would() {
        use std::os::unix::process::ExitStatusExt;
        let code = |c: i32| std::process::ExitStatus::from_raw(c << 8);
        let signal = |s: i32| std::process::ExitStatus::from_raw(s);
        assert_eq!(exit_status(code(0), false, false), 0);
        assert_eq!(exit_status(signal(9), true, false), 137);
        assert_eq!(exit_status(code(0), true, false), 137);
        assert_eq!(exit_status(code(1), false, true), PANICKED);
        assert_eq!(exit_status(code(1), false, false), 1);
        assert_eq!(exit_status(signal(15), false, false), 143);
    }

    #[test]
    fn facts_come_from_the_pods_files_and_annotations() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("hostname"), "vm-pod\n").unwrap();
        std::fs::write(
            d.join("resolv.conf"),
            "nameserver 10.96.0.10\nsearch ns.svc.cluster.local\n",
        )
        .unwrap();
        std::fs::create_dir(d.join("ci")).unwrap();
        std::fs::write(d.join("ci/user-data"), "#cloud-config\nruncmd: [true]\n").unwrap();
        std::fs::create_dir(d.join("keys")).unwrap();
        std::fs::write(d.join("keys/authorized_keys"), "ssh-ed25519 AAAA me\n").unwrap();
        let spec = json!({
            "annotations": {"io.kubernetes.cri.sandbox-uid": "uid-7", "io.kubernetes.cri.sandbox-id": "sb"},
            "mounts": [
                {"destination": "/etc/hostname", "source": d.join("hostname")},
                {"destination": "/etc/resolv.conf", "source": d.join("resolv.conf")},
                {"destination": "/cloud-init/", "source": d.join("ci")},
                {"destination": "/ssh-keys", "source": d.join("keys")}
            ]
        });
        let f = pod_facts(&spec, "c1", None).unwrap();
        assert_eq!(f.instance_id, "uid-7");
        assert_eq!(f.hostname, "vm-pod");
        assert_eq!(f.ssh_keys, ["ssh-ed25519 AAAA me"]);
        assert_eq!(
            f.user_data.as_deref(),
            Some(&b"#cloud-config\nruncmd: [true]\n"[..])
        );
        assert_eq!(f.dns.search, ["ns.svc.cluster.local"]);
        // Without CRI's annotations and files: the container id, a default name.
        let bare = pod_facts(&json!({}), "c1", None).unwrap();
        assert_eq!(
            (bare.instance_id.as_str(), bare.hostname.as_str()),
            ("c1", "husk-vm")
        );
    }

    #[test]
    fn only_block_devices_become_disks_and_must_exist() {
        let spec = json!({"linux": {"devices": [
            {"path": "/dev/null", "type": "c", "major": 1, "minor": 3}
        ]}});
        assert!(block_devices(&spec).unwrap().is_empty());
        let spec = json!({"linux": {"devices": [
            {"path": "/dev/xvdb", "type": "b", "major": 4095, "minor": 4095}
        ]}});
        let e = block_devices(&spec).unwrap_err().to_string();
        assert!(e.contains("4095:4095"), "{e}");
    }

    #[test]
    fn this_processes_stats_are_read() {
        let s = host_stats(std::process::id(), false);
        assert!(s.memory_current > 0);
        assert!(s.cpu_stat.contains_key("usage_usec"));
        assert!(s.pids_current >= 1);
        assert_eq!(host_stats(std::process::id(), true).memory_current, 0);
    }
}
