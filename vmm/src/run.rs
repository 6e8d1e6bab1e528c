//! The husk-vmm process around a [`Vmm`]: attaches the devices a
//! [`VmmConfig`] names, confines itself (jail, capabilities, seccomp),
//! runs the guest and waits for what ends it: the guest powering off or
//! resetting (the guest kernel runs with `reboot=t`), SIGTERM or SIGINT,
//! a template's SIGUSR1 (snapshot, then end), or a failure.
//!
//! SIGUSR1 rather than a control socket: a snapshot takes no argument
//! (the files are fixed at start), the signal thread that takes SIGTERM
//! takes it too, nothing listens or parses, and only who may signal
//! husk-vmm (its launcher, root) can ask. The launcher learns the outcome
//! from the exit status: 0 once the state and memory files are complete.

use crate::devices::virtio::net::{Net, NetError};
use crate::devices::virtio::rng::Rng;
use crate::devices::virtio::vhost_user::{VhostUserDevice, VhostUserError};
use crate::devices::virtio::VirtioDevice;
use crate::security::identity::{self, IdentityError};
use crate::security::jail::{Jail, JailError};
use crate::security::pid_ns::{self, PidNsError};
use crate::security::seccomp::{self, HardeningError, ThreadKind};
use crate::snapshot::SnapshotError;
use crate::{VcpuStop, VmEvent, Vmm, VmmError};
use husk_vmm_config::tap::{adopt_tap, open_tap, TapError};
use husk_vmm_config::{ConfigError, NetTap, SeccompMode, Snapshot, VmmConfig};
use nix::sys::signal::{SigSet, Signal};
use std::fs::File;
use std::os::fd::{FromRawFd, RawFd};

/// Why husk-vmm could not run its VM, or how the VM failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Jail(#[from] JailError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    PidNs(#[from] PidNsError),
    #[error("blocking SIGTERM/SIGINT: {0}")]
    SignalMask(#[source] nix::Error),
    #[error(transparent)]
    VhostUser(#[from] VhostUserError),
    #[error("--net-tap fd:{fd}: no such open file descriptor: {source}")]
    TapFd {
        fd: RawFd,
        #[source]
        source: nix::Error,
    },
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error("starting the virtio-rng thread: {0}")]
    Rng(#[source] std::io::Error),
    #[error("setting up the VM: {0}")]
    Setup(#[source] VmmError),
    #[error("starting the vCPUs: {0}")]
    Start(#[source] VmmError),
    #[error(transparent)]
    Hardening(#[from] HardeningError),
    #[error("starting the signal thread: {0}")]
    SignalThread(#[source] std::io::Error),
    /// A helper thread of the VMM failed; the VM could not go on safely.
    #[error("{0}")]
    Helper(String),
    #[error("vCPU {index}: {why}")]
    Vcpu { index: u8, why: String },
    #[error("snapshot: {0}")]
    Snapshot(#[source] SnapshotError),
}

/// Runs the VM `config` describes until it ends. Returns Ok when the guest
/// ended itself (power off, or a reset, which a micro-VM does not do) or
/// the host asked it to stop (SIGTERM, SIGINT).
///
/// Call it while the process has one thread: with a jail, it enters a
/// mount namespace first, which takes only the calling thread along, and
/// with `new_pid_ns` it forks (the first process only waits, see
/// `security::pid_ns`).
pub fn run(config: &VmmConfig) -> Result<(), RunError> {
    config.validate()?;
    let template = matches!(config.snapshot, Some(Snapshot::Template { .. }));
    // Before any thread: each thread switches to it itself.
    if let Some(id) = config.identity {
        identity::set(id)?;
    }
    // What the launcher asked to get if it dies; a change of identity
    // clears it, so it is set again after the switch below.
    let (pdeathsig, parent) = if config.new_pid_ns {
        let parent = pid_ns::enter(config.seccomp, template)?;
        (libc::SIGKILL, parent)
    } else {
        (identity::pdeathsig(), identity::parent_pidfd())
    };
    // While this is the only thread: a mount namespace entered later would
    // hold only the thread that entered it.
    let jail = config.jail.as_deref().map(Jail::prepare).transpose()?;
    // Block the stop signals (and a template's SIGUSR1) before any thread
    // exists, so every thread inherits the mask and only the waiter below
    // ever receives them.
    let mut stop_signals = SigSet::empty();
    stop_signals.add(Signal::SIGTERM);
    stop_signals.add(Signal::SIGINT);
    if template {
        stop_signals.add(Signal::SIGUSR1);
    }
    stop_signals.thread_block().map_err(RunError::SignalMask)?;

    let devices = devices(config)?;
    let vmm = Vmm::with_devices(config, devices).map_err(RunError::Setup)?;
    log_start(config, &vmm);
    // Everything from the host (/dev/kvm, the memfd, kernel and initrd,
    // the console log, the daemons' sockets, the TAP) is open or loaded.
    if let Some(jail) = jail {
        let dir = jail.dir().to_path_buf();
        jail.enter()?;
        tracing::info!(jail = %dir.display(), "confined to the jail directory");
    }
    if config.seccomp != SeccompMode::Off {
        seccomp::drop_capabilities()?;
    } else {
        identity::switch_thread()?;
    }
    identity::restore_pdeathsig(pdeathsig, parent.as_ref())?;
    drop(parent);
    if let Some(id) = config.identity {
        tracing::info!(uid = id.uid, gid = id.gid, "running as the VM's own user");
    }
    let mut vm = vmm.start().map_err(RunError::Start)?;
    signal_thread(stop_signals, vm.terminator(), config.seccomp)?;
    seccomp::apply(ThreadKind::Main { snapshot: template }, config.seccomp)?;

    let event = vm.wait();
    if event == VmEvent::Snapshot {
        // The VM ends with its snapshot, written or not.
        let written = vm.snapshot();
        vm.stop_and_join();
        return written.map(drop).map_err(RunError::Snapshot);
    }
    vm.stop_and_join();
    match event {
        VmEvent::Terminate | VmEvent::Snapshot => Ok(()),
        VmEvent::Failed(why) => Err(RunError::Helper(why)),
        VmEvent::Vcpu(i, VcpuStop::GuestShutdown) => {
            tracing::info!("vCPU {i}: guest shut down");
            Ok(())
        }
        VmEvent::Vcpu(i, VcpuStop::GuestReset) => {
            tracing::info!("vCPU {i}: guest reset; a micro-VM does not reboot");
            Ok(())
        }
        VmEvent::Vcpu(i, VcpuStop::Stopped) => {
            tracing::info!("vCPU {i} stopped");
            Ok(())
        }
        VmEvent::Vcpu(index, VcpuStop::Failed(why)) => Err(RunError::Vcpu { index, why }),
    }
}

/// Starts the thread that takes `signals` (blocked in every thread) and
/// tells the main thread through `terminator`: SIGUSR1 (a template's) is
/// a snapshot, the others stop the VM.
fn signal_thread(
    signals: SigSet,
    terminator: std::sync::mpsc::Sender<VmEvent>,
    mode: SeccompMode,
) -> Result<(), RunError> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Err(e) = seccomp::harden_thread(ThreadKind::Signals, mode) {
                let _ = terminator.send(VmEvent::Failed(format!("signal thread: {e}")));
                return;
            }
            match signals.wait() {
                Ok(Signal::SIGUSR1) => {
                    tracing::info!("SIGUSR1: pausing the guest for its snapshot");
                    let _ = terminator.send(VmEvent::Snapshot);
                }
                Ok(sig) => {
                    tracing::info!("{sig}: stopping the guest");
                    let _ = terminator.send(VmEvent::Terminate);
                }
                Err(_) => {}
            }
        })
        .map(drop)
        .map_err(RunError::SignalThread)
}

/// What starts: the kernel and its entry, or the snapshot a clone runs on
/// from.
fn log_start(config: &VmmConfig, vmm: &Vmm) {
    match (vmm.boot_entry(), &config.snapshot) {
        (Some(boot), _) => tracing::info!(
            kernel = %config.kernel.display(),
            entry = format_args!("{:#x}", boot.entry.0),
            mode = ?boot.mode,
            vcpus = config.vcpus,
            memory_mib = config.memory_mib,
            template = config.snapshot.is_some(),
            "starting guest"
        ),
        (None, Some(s)) => tracing::info!(
            state = %s.state_file().display(),
            memory = %s.memory_file().display(),
            vcpus = config.vcpus,
            memory_mib = config.memory_mib,
            "restored guest: it goes on from its template's snapshot"
        ),
        (None, None) => {}
    }
}

/// The virtio devices `config` names, connected or started, in the order
/// they get their virtio-mmio slots: vsock, fs, net, rng.
fn devices(config: &VmmConfig) -> Result<Vec<Box<dyn VirtioDevice>>, RunError> {
    let mut devices: Vec<Box<dyn VirtioDevice>> = Vec::new();
    if let Some(socket) = &config.vsock_socket {
        devices.push(Box::new(VhostUserDevice::vsock(socket, config.seccomp)?));
    }
    if let Some(fs) = &config.fs {
        devices.push(Box::new(VhostUserDevice::fs(
            &fs.socket,
            &fs.tag,
            config.seccomp,
        )?));
    }
    if let Some(net) = &config.net {
        let tap = match &net.tap {
            // A TAP the launcher opened (in the pod's network namespace)
            // and passed down.
            NetTap::Fd(fd) => adopt_tap(passed_fd(*fd)?, &format!("--net-tap fd:{fd}"))?,
            // A TAP in husk-vmm's own network namespace.
            NetTap::Name(name) => open_tap(name)?,
        };
        devices.push(Box::new(Net::new(tap, net.mac.bytes(), config.seccomp)?));
    }
    if config.rng {
        devices.push(Box::new(Rng::new(config.seccomp).map_err(RunError::Rng)?));
    }
    Ok(devices)
}

/// Takes ownership of descriptor `fd`, which the launcher passed to this
/// process for the NIC.
fn passed_fd(fd: RawFd) -> Result<File, RunError> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD)
        .map_err(|source| RunError::TapFd { fd, source })?;
    // SAFETY: `fd` is open (checked just above) and was passed to this
    // process for the NIC alone; nothing else in husk-vmm opens or owns it,
    // and `devices` runs once, so this is its only owner.
    Ok(unsafe { File::from_raw_fd(fd) })
}
