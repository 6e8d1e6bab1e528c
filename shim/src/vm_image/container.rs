//! [`VmContainer`]: a VM-image pod's app container, which *is* its VM. Its
//! create makes the VM's files and connects the pod network, then has
//! husk-hypervisor's [`VmImage`] spawn QEMU paused (the container's pid is
//! QEMU's); its start lets the vCPUs run. Container semantics map onto the
//! VM (docs/vm-pods.md, README's table):
//!
//! - stdout is the serial console, stdin its input; stderr is QEMU's own
//!   messages and husk's note of a guest panic;
//! - SIGTERM (and SIGINT, SIGPWR) stop the guest as KubeVirt does: the
//!   ACPI power button (QMP `system_powerdown`) and, where the guest's
//!   qemu-guest-agent answers, its `guest-shutdown`, which a guest that
//!   ignores the button (no logind, no acpid) still obeys; SIGKILL ends
//!   QEMU (137), which containerd sends at the grace period's end;
//! - the exit is QEMU's: 0 when the guest powered off, 1 after a guest
//!   kernel panic (pvpanic, said on stderr), 137 when killed;
//! - pause and resume stop and continue the vCPUs (QMP `stop`, `cont`);
//! - stats are QEMU's CPU time and memory on the host;
//! - a root disk on a volume that is blank gets the image's disk imported
//!   at start, before the vCPUs run, its progress on stderr
//!   ([`root_volume`]); the VM is locked to the volume until QEMU exits.
//!
//! When QEMU exits, one task detaches the pod network and removes the
//! cgroup, then publishes the exit, so a container created after it (a
//! restart) finds the pod's TAP free.

use super::cloud_init;
use super::context::{chain, PodContext};
use super::error::VmError;
use super::exec::GuestExecs;
use super::guest_agent::{on_agent, GuestAgentSlot};
use super::import::{import_then_boot, PendingImport};
use super::launch::{block_devices, boot_of, pod_facts, Prepared};
use super::resize::{Resizer, Size};
use super::root_volume::{self, RootVolume, ROOT_DISK_ANNOTATION};
use super::seed;
use super::state::{self, VmState, STATE_ANNOTATION};
use super::tools::ToolsChannel;
use crate::host::cgroup::HostCgroup;
use crate::host::disk_lock::DiskLock;
use crate::host::network::{self, PodNetwork};
use crate::task::agent::{sanitize, AgentError, InputStream};
use husk_hypervisor::qemu::qmp::GuestEvents;
use husk_hypervisor::qemu::vm_image::{ImageBoot, RootDisk, VmImageLaunch};
use husk_hypervisor::vm_image::{VmImage, VmImageSpec};
use husk_proto::agent::ContainerStatsResponse;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::ChildStdin;
use tokio::sync::{mpsc, watch};

pub use husk_hypervisor::vm_image::{KILLED, PANICKED};

/// Output chunks held for a reader that is behind.
const OUTPUT_QUEUE: usize = 64;
/// How long after start an output nobody took is kept: the manager's
/// relays take theirs as they start, which may be just after the
/// container's start; after this, output nobody reads is dropped, so an
/// unread console never stalls the guest.
const UNREAD_OUTPUT_KEPT: Duration = Duration::from_secs(30);

type Outputs = [Option<mpsc::Receiver<Vec<u8>>>; 2];

pub struct VmContainer {
    pub id: String,
    /// QEMU's pid on the host: the container's pid.
    pub pid: u32,
    rootfs: PathBuf,
    vm: Arc<VmImage>,
    console_in: tokio::sync::Mutex<Option<ChildStdin>>,
    /// [console, QEMU's messages] until read_output takes them.
    outputs: Arc<Mutex<Outputs>>,
    /// The exit status, once QEMU exited and what it held is undone.
    exit: watch::Receiver<Option<u32>>,
    execs: GuestExecs,
    /// The QEMU guest agent's connection, shared with the execs.
    guest_agent: Arc<GuestAgentSlot>,
    call_timeout: Duration,
    /// The import a blank root volume waits for, until start takes it.
    import: Mutex<Option<PendingImport>>,
    /// An import runs: the vCPUs must not be let run.
    importing: Arc<AtomicBool>,
    /// Its size, and how it changes while it runs.
    resizer: Resizer,
}

/// What the exit watch undoes once QEMU is gone.
#[derive(Default)]
struct Leftovers {
    /// The DHCP server on the TAP, stopped first.
    dhcp: Option<tokio::task::JoinHandle<()>>,
    network: Option<PodNetwork>,
    cgroup: Option<HostCgroup>,
    /// The root volume's lock, held until QEMU is gone.
    disk_lock: Option<DiskLock>,
    /// The state volume's lock, likewise.
    state_lock: Option<DiskLock>,
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
        drop((self.disk_lock, self.state_lock));
    }
}

/// Writes the pod's cloud-init seed (address, DNS, hostname, the user's
/// data) and serves the same address over DHCP on the pod's TAP, for
/// guests that ask rather than read the seed. Returns the seed's path.
async fn seed_and_dhcp(
    (id, p, ctx): (&str, &Prepared, &PodContext),
    files: &Path,
    tools: bool,
    leftovers: &mut Leftovers,
) -> Result<PathBuf, VmError> {
    let guest = leftovers.network.as_ref().map(|n| n.guest.clone());
    let mut facts = pod_facts(&p.bundle, id, guest)?;
    facts.tools = tools;
    let seed_files = cloud_init::seed_files(&facts);
    tracing::info!(pod_id = %ctx.pod_id, container_id = id, files = %seed_summary(&seed_files), "cloud-init seed");
    let seed = seed::create_seed(files, &seed_files).await?;
    if let Some(n) = &leftovers.network {
        match super::dhcp::Lease::of_pod(&n.guest, &facts.dns, &facts.hostname) {
            Some(lease) => {
                leftovers.dhcp = Some(super::dhcp::serve(&n.netns, network::TAP_NAME, lease)?)
            }
            None => {
                tracing::info!(pod_id = %ctx.pod_id, container_id = id, "the pod has no IPv4 address: no DHCP")
            }
        }
    }
    Ok(seed)
}

/// What the log says of the seed: each file's name and size, never its
/// content (user-data holds secrets, network-config the user's own
/// settings).
fn seed_summary(files: &cloud_init::SeedFiles) -> String {
    files
        .iter()
        .map(|(name, data)| format!("{name} ({} bytes)", data.len()))
        .collect::<Vec<_>>()
        .join(", ")
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

/// The disk the VM boots: the root volume the container's annotation
/// names (locked into `leftovers`), or else a new overlay on the image's
/// disk; the largest file QEMU may write; the container path of a root
/// block device, which is no further disk.
async fn root_disk(
    id: &str,
    p: &Prepared,
    ctx: &PodContext,
    files: &Path,
    boot: &ImageBoot,
    leftovers: &mut Leftovers,
) -> Result<(RootDisk, Option<u64>, Option<String>), VmError> {
    let volume =
        root_volume::root_volume(&p.bundle.spec, p.bundle.annotation(ROOT_DISK_ANNOTATION))?;
    let Some(volume) = volume else {
        let vm_config = &ctx.config.vm;
        let overlay = seed::create_overlay(&vm_config.qemu_img_path, files, &p.disk).await?;
        let root = RootDisk::Overlay {
            overlay,
            base: p.disk.disk.clone(),
            base_format: p.disk.format,
        };
        let bound = seed::overlay_bound(files, p.disk.virtual_size)?;
        return Ok((root, Some(bound), None));
    };
    let holder = holder(id, p, ctx);
    let kernel_boot = matches!(boot, ImageBoot::Kernel { .. });
    let runtime_dir = ctx.config.hypervisor.runtime_dir.clone();
    let image = p.disk.clone();
    let v = volume.clone();
    let on = tokio::task::spawn_blocking(move || {
        root_volume::prepare(&v, &image, kernel_boot, &runtime_dir, &holder)
    })
    .await
    .map_err(|e| VmError::Invalid(format!("preparing the root volume: {e}")))??;
    leftovers.disk_lock = Some(on.lock);
    let disk = on.disk;
    let (path, what) = match &volume {
        RootVolume::Block { path, .. } => (path, "block device"),
        RootVolume::Dir { path, .. } => (path, "directory"),
    };
    tracing::info!(pod_id = %ctx.pod_id, container_id = id, volume = %path, kind = what, disk = %disk.path.display(), format = disk.format.as_str(), import = disk.import.is_some(), "root disk on a volume");
    let device = disk.block_device.then(|| path.clone());
    Ok((RootDisk::Volume(disk), on.max_file_bytes, device))
}

/// Who holds a volume's lock, for the refusal of a second VM: the pod's
/// namespace and name (from CRI's annotations), its id, the container.
fn holder(id: &str, p: &Prepared, ctx: &PodContext) -> String {
    let annotation = |k| p.bundle.annotation(k).filter(|v| !v.is_empty());
    let pod_name = match (
        annotation("io.kubernetes.cri.sandbox-namespace"),
        annotation("io.kubernetes.cri.sandbox-name"),
    ) {
        (Some(ns), Some(name)) => format!("{ns}/{name}"),
        (None, Some(name)) => name.to_owned(),
        _ => "?".to_owned(),
    };
    format!("pod {pod_name} ({}), container {id}", ctx.pod_id)
}

/// The state volume the container's annotation names, if any, locked into
/// `leftovers`.
async fn vm_state(
    id: &str,
    p: &Prepared,
    ctx: &PodContext,
    leftovers: &mut Leftovers,
) -> Result<Option<VmState>, VmError> {
    let Some(dir) = state::state_dir(&p.bundle.spec, p.bundle.annotation(STATE_ANNOTATION))? else {
        return Ok(None);
    };
    let holder = holder(id, p, ctx);
    let swtpm = ctx.config.vm.swtpm_path.clone();
    let runtime_dir = ctx.config.hypervisor.runtime_dir.clone();
    let (state, lock) =
        tokio::task::spawn_blocking(move || state::prepare(&dir, &swtpm, &runtime_dir, &holder))
            .await
            .map_err(|e| VmError::Invalid(format!("preparing the state volume: {e}")))??;
    tracing::info!(pod_id = %ctx.pod_id, container_id = id, dir = %state.dir.display(), "VM state on a volume");
    leftovers.state_lock = Some(lock);
    Ok(Some(state))
}

/// The container's cgroup (a cgroupfs path or systemd's
/// `slice:prefix:name`, as for micro-VMs), made for QEMU to start in.
fn make_cgroup(spec_path: &str) -> Result<HostCgroup, VmError> {
    let rel = crate::host::cgroup::host_path(spec_path)
        .map_err(|e| VmError::Invalid(format!("linux.cgroupsPath: {e}")))?;
    HostCgroup::create(&rel).map_err(|e| {
        VmError::Invalid(format!(
            "making the VM's cgroup {} ({spec_path}): {}",
            rel.display(),
            chain(e)
        ))
    })
}

impl VmContainer {
    /// Makes the VM's files, connects the pod network and spawns QEMU,
    /// paused. On error nothing of it is left but the rootfs mount.
    pub async fn create(id: &str, p: Prepared, ctx: &PodContext) -> Result<Self, VmError> {
        let files = seed::create_dir(&p.rootfs)?;
        let mut leftovers = Leftovers::default();
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
        ctx: &PodContext,
        files: &Path,
        leftovers: &mut Leftovers,
    ) -> Result<Self, VmError> {
        let vm_config = &ctx.config.vm;
        let state = vm_state(id, p, ctx, leftovers).await?;
        let boot = boot_of(p, vm_config, files, state.as_ref().map(|s| s.dir.as_path()))?;
        let (root, max_file_bytes, root_device) =
            root_disk(id, p, ctx, files, &boot, leftovers).await?;
        let import = match &root {
            RootDisk::Volume(v) => v.import.as_ref().map(|i| i.virtual_size),
            RootDisk::Overlay { .. } => None,
        };
        if let Some(ns) = &p.netns {
            let ns = ns.clone();
            leftovers.network = tokio::task::spawn_blocking(move || network::attach(&ns))
                .await
                .map_err(|e| VmError::Invalid(format!("network attach: {e}")))??;
        }
        let tools_disk = super::tools::disk(&p.bundle, vm_config)?;
        let tools = tools_disk.is_some();
        let seed = seed_and_dhcp((id, p, ctx), files, tools, leftovers).await?;
        if let Some(path) = p.bundle.cgroups_path.as_deref() {
            leftovers.cgroup = Some(make_cgroup(path)?);
        }
        let extras = super::extras::of(p, state.as_ref(), tools_disk)?;
        let launch = VmImageLaunch {
            id: id.to_owned(),
            accelerator: ctx.accelerator,
            vcpus: p.vcpus,
            memory_mib: p.memory_mib,
            room: super::resize::room(&ctx.config),
            tcg_tb_size_mib: vm_config.tcg_tb_size_mib,
            boot,
            root,
            seed: Some(seed),
            block_devices: block_devices(&p.bundle.spec, root_device.as_deref())?,
            nic: nic_mac(leftovers.network.as_ref())?,
            extras: extras.launch.clone(),
        };
        let spec = VmImageSpec {
            launch,
            tap: leftovers.network.as_ref().map(|n| n.tap.as_raw_fd()),
            cgroup_procs: leftovers
                .cgroup
                .as_ref()
                .map(HostCgroup::procs_files)
                .unwrap_or_default(),
            oom_score_adj: p.bundle.oom_score_adj(),
            max_file_bytes,
        };
        let vm = Arc::new(VmImage::start(&ctx.config, spec).await?);
        let network = leftovers.network.as_ref();
        if let Err(e) = super::extras::start(&extras, &vm, network, ctx.timeouts.agent_call).await {
            vm.kill();
            vm.wait().await;
            return Err(e);
        }
        tracing::info!(pod_id = %ctx.pod_id, container_id = id, pid = vm.pid(), "VM container created");
        Ok(Self::watched(
            id,
            p,
            ctx,
            vm,
            (std::mem::take(leftovers), import, tools),
        ))
    }

    /// The container around a running QEMU: relays for its console and
    /// messages, and the task that waits for its exit and then removes
    /// `leftovers`.
    fn watched(
        id: &str,
        p: &Prepared,
        ctx: &PodContext,
        vm: Arc<VmImage>,
        (leftovers, import, tools): (Leftovers, Option<u64>, bool),
    ) -> Self {
        let (console_tx, console_rx) = mpsc::channel(OUTPUT_QUEUE);
        let (diag_tx, diag_rx) = mpsc::channel(OUTPUT_QUEUE);
        let (exit_tx, exit_rx) = watch::channel(None);
        let (vm_exit_tx, vm_exit_rx) = watch::channel(false);
        let import = import.map(|virtual_size| PendingImport {
            virtual_size,
            stderr: diag_tx.clone(),
        });
        let stdio = vm.take_stdio();
        let console_in = stdio.map(|s| {
            tokio::spawn(relay_pipe(s.console_out, console_tx, None));
            tokio::spawn(relay_pipe(
                s.diagnostics,
                diag_tx,
                Some((exit_rx.clone(), vm.events())),
            ));
            s.console_in
        });
        tokio::spawn(watch_exit(
            vm.clone(),
            leftovers,
            exit_tx,
            vm_exit_tx,
            (ctx.pod_id.clone(), id.to_owned()),
        ));
        let guest_agent = Arc::new(GuestAgentSlot::new(vm.guest_agent_socket()));
        VmContainer {
            id: id.to_owned(),
            pid: vm.pid(),
            rootfs: p.rootfs.clone(),
            execs: GuestExecs::new(
                id,
                guest_agent.clone(),
                tools.then(|| Arc::new(ToolsChannel::new(vm.tools_socket()))),
                vm_exit_rx,
                ctx.timeouts.agent_call,
            ),
            guest_agent,
            vm,
            console_in: tokio::sync::Mutex::new(console_in),
            outputs: Arc::new(Mutex::new([Some(console_rx), Some(diag_rx)])),
            exit: exit_rx,
            call_timeout: ctx.timeouts.agent_call,
            import: Mutex::new(import),
            importing: Arc::new(AtomicBool::new(false)),
            resizer: Resizer::new(
                ctx.config.clone(),
                p.bundle.annotations(),
                Size {
                    vcpus: p.vcpus,
                    memory_mib: p.memory_mib,
                },
                super::resize::room(&ctx.config),
            ),
        }
    }

    /// New CPU and memory limits (OCI LinuxResources, JSON): the running
    /// VM grows or shrinks to the size they give ([`Resizer`]).
    pub async fn update(&self, resources: &[u8]) -> Result<(), AgentError> {
        if self.importing.load(Ordering::SeqCst) {
            return Err(AgentError::Status {
                code: tonic::Code::FailedPrecondition,
                message: "the root volume's import runs; the VM is resized once it boots".into(),
            });
        }
        self.resizer
            .update(&self.vm, &self.guest_agent, resources, self.call_timeout)
            .await
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
        let import = self.import.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(import) = import {
            self.importing.store(true, Ordering::SeqCst);
            let (vm, importing, t) = (self.vm.clone(), self.importing.clone(), self.call_timeout);
            tokio::spawn(import_then_boot(vm, import, importing, t, self.id.clone()));
            return Ok(());
        }
        self.qmp_call("cont").await
    }

    async fn qmp_call(&self, command: &str) -> Result<(), AgentError> {
        self.vm
            .qmp()
            .execute(command, None, self.call_timeout)
            .await
            .map(drop)
            .map_err(|e| AgentError::Status {
                code: tonic::Code::Unavailable,
                message: sanitize(&chain(e)),
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

    /// The container's exec processes (through the QEMU guest agent).
    pub fn execs(&self) -> &GuestExecs {
        &self.execs
    }

    pub async fn signal(&self, signal: u32) -> Result<(), AgentError> {
        match signal {
            0 => Ok(()),
            9 => {
                self.kill();
                Ok(())
            }
            // SIGINT, SIGTERM, SIGPWR: the ACPI power button; a VM whose
            // disk is being imported has no guest yet to press it for.
            2 | 15 | 30 => {
                if self.exited() {
                    return Ok(());
                }
                if self.importing.load(Ordering::SeqCst) {
                    tracing::info!(container_id = %self.id, signal, "stopped during its import: the VM is ended, the volume stays blank");
                    self.kill();
                    return Ok(());
                }
                tracing::info!(container_id = %self.id, signal, "pressing the VM's power button");
                self.ask_guest_agent_to_shut_down();
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

    /// Asks the guest's qemu-guest-agent, if one answers, for an orderly
    /// power-off, in the background: the kill call returns at once, and a
    /// guest without the agent costs only the sync's deadline.
    fn ask_guest_agent_to_shut_down(&self) {
        let (agent, id, t) = (self.guest_agent.clone(), self.id.clone(), self.call_timeout);
        tokio::spawn(async move {
            let wait = Duration::from_secs(2).min(t);
            match on_agent!(agent, t, |a| a.synced_shutdown(t, wait)) {
                Ok(()) => {
                    tracing::info!(container_id = %id, "the guest agent is shutting the guest down")
                }
                Err(e) => tracing::info!(
                    container_id = %id,
                    "no guest-agent shutdown ({}): the power button alone",
                    chain(e)
                ),
            }
        });
    }

    /// Ends QEMU at once (its exit reads 137).
    pub fn kill(&self) {
        if !self.exited() {
            self.vm.kill();
        }
    }

    pub async fn set_paused(&self, pause: bool) -> Result<(), AgentError> {
        if self.importing.load(Ordering::SeqCst) {
            return Err(AgentError::Status {
                code: tonic::Code::FailedPrecondition,
                message: "the VM's root disk is being imported; it runs once that is done".into(),
            });
        }
        self.qmp_call(if pause { "stop" } else { "cont" }).await
    }

    /// Feeds the serial console from `input`. The console stays open when
    /// `input` ends: a later attach may type again.
    pub async fn write_console(&self, mut input: InputStream) -> Result<(), AgentError> {
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
        let s = self.vm.stats();
        let mut r = ContainerStatsResponse::default();
        if self.exited() {
            return r;
        }
        r.cpu_stat.insert("user_usec".into(), s.user_usec);
        r.cpu_stat.insert("system_usec".into(), s.system_usec);
        r.cpu_stat
            .insert("usage_usec".into(), s.user_usec + s.system_usec);
        r.pids_current = s.threads;
        r.memory_current = s.rss;
        r.memory_peak = s.rss_peak;
        r.memory_stat.insert("anon".into(), s.anon);
        r.memory_stat.insert("file".into(), s.file);
        r
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
    vm: Arc<VmImage>,
    leftovers: Leftovers,
    exit: watch::Sender<Option<u32>>,
    vm_exit: watch::Sender<bool>,
    (pod_id, id): (String, String),
) {
    let ended = vm.wait().await;
    vm_exit.send_replace(true);
    tracing::info!(
        pod_id,
        container_id = id,
        exit_status = ended.status,
        "VM container exited"
    );
    leftovers.remove().await;
    exit.send_replace(Some(ended.status));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_is_logged_by_name_and_size_only() {
        let files: cloud_init::SeedFiles = vec![
            ("user-data", b"#cloud-config\npassword: hunter2\n".to_vec()),
            ("network-config", b"version: 2\nethernets: {}\n".to_vec()),
        ];
        let line = seed_summary(&files);
        assert_eq!(line, "user-data (32 bytes), network-config (25 bytes)");
        assert!(!line.contains("hunter2") && !line.contains("ethernets"));
    }
}
