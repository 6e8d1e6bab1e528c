//! [`VmImage`]: the QEMU process of a VM-image pod (docs/vm-pods.md), from
//! spawn to exit, as [`MicroVm`](crate::MicroVm) is a micro-VM's. The
//! caller decides what to boot ([`VmImageLaunch`]); this spawns QEMU
//! paused with its files and sockets as descriptors, in the pod's cgroup
//! and confined ([`policy::vm_image`]) before its first instruction,
//! connects its monitor (QMP), and watches its exit, turning it into a
//! container's exit status.
//!
//! ```text
//! <runtime_dir>/vms/            0700 root
//!     <id>/                     0700 root: the VM's run directory
//!         qmp.sock              QMP; QEMU is handed the listening socket
//!         qga.sock              the QEMU guest agent's channel, likewise
//!         tools.sock            the exec tools' channel, likewise (with a tools disk)
//! ```
//!
//! With a TPM ([`VmExtras::tpm_state`](crate::qemu::vm_extras::VmExtras)),
//! swtpm ([`Swtpm`]) starts first, as the VM's user, in the same cgroup,
//! and is ended and reaped after QEMU, before the VM's ids are given
//! back.
//!
//! QEMU reaches nothing here by name: the sockets and every disk are
//! descriptors the launcher opened (regular files and block devices
//! checked as such, no link followed), so its root holds no path of the
//! VM's and it writes nothing but through what it was handed.

use crate::confine::{oom, policy, VmIds};
use crate::daemon::{prepare_spawn, spawn_error, Placement};
use crate::proc_stats::{self, ProcStats};
use crate::qemu::qmp::{GuestEvents, Qmp, QmpError};
use crate::qemu::vm_image::{files, qemu_args, Access, PassedFile, VmImageLaunch};
use crate::supervisor::Pidfd;
use crate::swtpm::{Swtpm, SwtpmSpec};
use crate::Error;
use husk_config::Config;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;

const QMP_SOCKET: &str = "qmp.sock";
const GUEST_AGENT_SOCKET: &str = "qga.sock";
const TOOLS_SOCKET: &str = "tools.sock";
/// How long swtpm has to end by itself after QEMU.
const SWTPM_GRACE: Duration = Duration::from_secs(2);
/// How long QEMU has to answer on QMP after its spawn.
const QMP_CONNECT: Duration = Duration::from_secs(30);
/// What is kept of QEMU's messages when it fails to start.
const DIAGNOSTICS: u64 = 4096;

/// Exit status of a VM killed by SIGKILL, as a container's.
pub const KILLED: u32 = 137;
/// Exit status after a guest kernel panic (QEMU's `panic=exit-failure`).
pub const PANICKED: u32 = 1;

/// What the caller decides of one VM image's process.
#[derive(Debug)]
pub struct VmImageSpec {
    pub launch: VmImageLaunch,
    /// The NIC's TAP (when `launch.nic` is set), kept open by the caller.
    pub tap: Option<RawFd>,
    /// The `cgroup.procs` files of the container's cgroup: QEMU starts in
    /// it. Empty: it stays in the caller's.
    pub cgroup_procs: Vec<PathBuf>,
    /// QEMU's `oom_score_adj` (the container's `process.oomScoreAdj`).
    pub oom_score_adj: Option<i32>,
    /// The largest file QEMU may write (RLIMIT_FSIZE): the overlay's
    /// bound, whatever the image says its disk is.
    pub max_file_bytes: Option<u64>,
}

/// QEMU's stdio: the serial console's input and output, and QEMU's own
/// messages.
pub struct VmImageStdio {
    pub console_in: ChildStdin,
    pub console_out: ChildStdout,
    pub diagnostics: ChildStderr,
}

/// How a VM image ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmImageExit {
    /// As a container's: 0 after a guest power-off, [`PANICKED`] after a
    /// guest kernel panic, [`KILLED`] when killed, else QEMU's status.
    pub status: u32,
    pub panicked: bool,
    /// The guest powered itself off (QMP's SHUTDOWN with `guest: true`).
    pub by_guest: bool,
}

pub struct VmImage {
    id: String,
    pid: u32,
    run_dir: PathBuf,
    qmp: Qmp,
    events: Arc<GuestEvents>,
    killer: Pidfd,
    killed: Arc<AtomicBool>,
    stdio: Mutex<Option<VmImageStdio>>,
    exit: watch::Receiver<Option<VmImageExit>>,
}

impl VmImage {
    /// Spawns QEMU for `spec`, paused, and connects its monitor. On error
    /// nothing of it is left (the caller's files are the caller's).
    pub async fn start(config: &Config, spec: VmImageSpec) -> Result<Self, Error> {
        let l = &spec.launch;
        let h = &config.hypervisor;
        crate::preflight::check_vm_id(&l.id)?;
        crate::preflight::check_executable("hypervisor.qemu_path", &h.qemu_path)?;
        check_launch(&spec)?;
        let c = &config.confinement;
        let ids = match c.id_count {
            0 => None,
            n => Some(VmIds::take(c.first_id, n, &c.id_lock)?),
        };
        let run_dir = crate::micro_vm::create_run_dir(&h.runtime_dir.join("vms").join(&l.id))?;
        let swtpm_path = &config.vm.swtpm_path;
        match Self::spawn(&h.qemu_path, swtpm_path, &spec, &run_dir, ids).await {
            Ok(vm) => Ok(vm),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&run_dir);
                Err(e)
            }
        }
    }

    async fn spawn(
        qemu: &Path,
        swtpm_path: &Path,
        spec: &VmImageSpec,
        run_dir: &Path,
        ids: Option<VmIds>,
    ) -> Result<Self, Error> {
        let l = &spec.launch;
        let qmp_socket = run_dir.join(QMP_SOCKET);
        let listeners = [
            listen(&qmp_socket)?,
            listen(&run_dir.join(GUEST_AGENT_SOCKET))?,
        ];
        let opened = files(l)
            .iter()
            .map(open_passed)
            .collect::<Result<Vec<_>, _>>()?;
        let identity = ids.as_ref().map(VmIds::identity);
        let (swtpm, extra) = start_extras(swtpm_path, spec, run_dir, identity)?;
        let fds: Vec<RawFd> = listeners
            .iter()
            .map(AsRawFd::as_raw_fd)
            .chain(spec.tap)
            .chain(opened.iter().map(AsRawFd::as_raw_fd))
            .chain(extra.iter().map(AsRawFd::as_raw_fd))
            .collect();
        let mut command = Command::new(qemu);
        command
            .args(qemu_args(l))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        policy::vm_image(qemu, l, run_dir, identity, spec.oom_score_adj)?.apply(&mut command)?;
        let placement = Placement {
            cgroup_procs: spec.cgroup_procs.clone(),
            max_file_bytes: spec.max_file_bytes,
        };
        let cgroups = prepare_spawn(&mut command, &placement, fds)?;
        let spawned = command.spawn();
        drop((cgroups, listeners, opened, extra));
        let mut child = spawned.map_err(|source| spawn_error(qemu, &placement, source))?;
        let pid = child.id().ok_or_else(|| Error::Spawn {
            program: qemu.to_owned(),
            source: std::io::Error::other("exited at once"),
        })?;
        let killer =
            Pidfd::open(pid).map_err(|e| Error::io(format!("pidfd_open of QEMU ({pid})"), e))?;
        let stdio = take_stdio(&mut child, qemu)?;
        tracing::info!(vm_id = %l.id, pid, vcpus = l.vcpus, memory_mib = l.memory_mib, accelerator = %l.accelerator, uid = identity.map(|i| i.uid), "QEMU started (paused)");
        let qmp = match Qmp::connect(&qmp_socket, QMP_CONNECT).await {
            Ok(qmp) => qmp,
            Err(e) => return Err(did_not_start(e, &killer, child, stdio.diagnostics).await),
        };
        let events = qmp.events();
        let killed = Arc::new(AtomicBool::new(false));
        let (exit_tx, exit) = watch::channel(None);
        tokio::spawn(watch_exit(
            child,
            (ids, swtpm),
            events.clone(),
            killed.clone(),
            exit_tx,
            (l.id.clone(), run_dir.to_owned()),
        ));
        Ok(VmImage {
            id: l.id.clone(),
            pid,
            run_dir: run_dir.to_owned(),
            qmp,
            events,
            killer,
            killed,
            stdio: Mutex::new(Some(stdio)),
            exit,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// QEMU's pid on the host.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The monitor; its deadline is the caller's.
    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// What the guest did that QMP reported (a panic, a power-off).
    pub fn events(&self) -> Arc<GuestEvents> {
        self.events.clone()
    }

    /// The guest agent's channel (one client at a time, as QEMU's socket
    /// chardev takes).
    pub fn guest_agent_socket(&self) -> PathBuf {
        self.run_dir.join(GUEST_AGENT_SOCKET)
    }

    /// The exec tools' channel (with a tools disk), one client at a time.
    pub fn tools_socket(&self) -> PathBuf {
        self.run_dir.join(TOOLS_SOCKET)
    }

    /// QEMU's stdio, once.
    pub fn take_stdio(&self) -> Option<VmImageStdio> {
        self.stdio.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// SIGKILLs QEMU (through its pidfd: a reaped pid is never hit); its
    /// exit reads [`KILLED`].
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        if let Err(e) = self.killer.kill() {
            tracing::warn!(vm_id = %self.id, %e, "cannot kill QEMU");
        }
    }

    /// Whether QEMU has exited (and its run directory is gone).
    pub fn exited(&self) -> bool {
        self.exit.borrow().is_some()
    }

    /// Waits for QEMU's exit.
    pub async fn wait(&self) -> VmImageExit {
        let mut rx = self.exit.clone();
        let waited = rx.wait_for(Option::is_some).await.map(|e| *e);
        match waited {
            Ok(Some(exit)) => exit,
            _ => VmImageExit {
                status: KILLED,
                panicked: false,
                by_guest: false,
            },
        }
    }

    /// QEMU's CPU time and memory (zeros once it has exited).
    pub fn stats(&self) -> ProcStats {
        if self.exited() {
            return ProcStats::default();
        }
        proc_stats::read(self.pid)
    }

    /// Sets QEMU's `oom_score_adj` (a later container of the pod asked
    /// for a higher one).
    pub fn set_oom_score_adj(&self, score: i32) -> Result<(), Error> {
        oom::set(&[self.pid], &oom::Score::new(score)?)
    }
}

/// What the launch must hold before anything is made.
fn check_launch(spec: &VmImageSpec) -> Result<(), Error> {
    let l = &spec.launch;
    if l.nic.is_some() != spec.tap.is_some() {
        return Err(Error::InvalidSpec {
            field: "nic",
            message: "a NIC needs its TAP, and a TAP its NIC".into(),
        });
    }
    if let crate::qemu::vm_image::ImageBoot::Kernel { cmdline, .. } = &l.boot {
        if cmdline.contains(['\n', '\0']) {
            return Err(Error::InvalidSpec {
                field: "kernel command line",
                message: "must not contain a newline or NUL".into(),
            });
        }
    }
    let passed = 3 + files(l).len() + crate::qemu::vm_image::extra_fds(l).count();
    if passed > crate::MAX_PASSED_FDS {
        return Err(Error::InvalidSpec {
            field: "block devices",
            message: format!(
                "{passed} descriptors for QEMU; at most {} (fewer block volumes)",
                crate::MAX_PASSED_FDS
            ),
        });
    }
    Ok(())
}

/// swtpm (with a TPM) and the tools channel's listener (with a tools
/// disk): the descriptors QEMU gets after its files, in
/// [`ExtraFds`](crate::qemu::vm_extras::ExtraFds)'s
/// order.
fn start_extras(
    swtpm_path: &Path,
    spec: &VmImageSpec,
    run_dir: &Path,
    identity: Option<crate::confine::Identity>,
) -> Result<(Option<Swtpm>, Vec<OwnedFd>), Error> {
    let l = &spec.launch;
    let mut fds = Vec::new();
    let mut swtpm = None;
    if let Some(state) = &l.extras.tpm_state {
        let (started, qemu_end) = Swtpm::start(&SwtpmSpec {
            program: swtpm_path,
            state_dir: state,
            stage: run_dir,
            identity,
            cgroup_procs: spec.cgroup_procs.clone(),
            oom_score_adj: spec.oom_score_adj,
            vm_id: &l.id,
        })?;
        swtpm = Some(started);
        fds.push(qemu_end);
    }
    if l.extras.tools_disk.is_some() {
        fds.push(OwnedFd::from(listen(&run_dir.join(TOOLS_SOCKET))?));
    }
    Ok((swtpm, fds))
}

/// A listening Unix socket at `path` for QEMU to accept on, root's only
/// (the run directory is 0700 root).
fn listen(path: &Path) -> Result<UnixListener, Error> {
    UnixListener::bind(path).map_err(|e| Error::io(format!("binding {}", path.display()), e))
}

/// Opens a file QEMU is handed: no link followed at its last component,
/// and it must be what it is said to be (a regular file, or a block
/// device for a volume), so a name swapped for a FIFO or a device cannot
/// block or redirect the VM.
fn open_passed(f: &PassedFile) -> Result<OwnedFd, Error> {
    let io = |e| Error::io(format!("opening {} for QEMU", f.path.display()), e);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(f.access == Access::ReadWrite)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(&f.path)
        .map_err(io)?;
    let kind = file.metadata().map_err(io)?.file_type();
    let right = if f.block_device {
        kind.is_block_device()
    } else {
        kind.is_file()
    };
    if !right {
        let wanted = if f.block_device {
            "a block device"
        } else {
            "a regular file"
        };
        return Err(io(std::io::Error::other(format!("not {wanted}"))));
    }
    // Blocking again for QEMU (O_NONBLOCK only kept the open itself from
    // waiting on a FIFO that was put in the file's place).
    // SAFETY: fcntl on the descriptor just opened.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Ok(OwnedFd::from(file))
}

fn take_stdio(child: &mut Child, qemu: &Path) -> Result<VmImageStdio, Error> {
    let missing = || Error::Spawn {
        program: qemu.to_owned(),
        source: std::io::Error::other("a stdio pipe is missing"),
    };
    Ok(VmImageStdio {
        console_in: child.stdin.take().ok_or_else(missing)?,
        console_out: child.stdout.take().ok_or_else(missing)?,
        diagnostics: child.stderr.take().ok_or_else(missing)?,
    })
}

/// QEMU never answered on QMP: it is ended, and the error says what it
/// printed.
async fn did_not_start(
    e: QmpError,
    killer: &Pidfd,
    mut child: Child,
    diagnostics: impl AsyncRead + Unpin,
) -> Error {
    let _ = killer.kill();
    let _ = child.wait().await;
    let mut said = String::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        diagnostics.take(DIAGNOSTICS).read_to_string(&mut said),
    )
    .await;
    Error::QemuDidNotStart {
        source: e,
        said: said.trim().to_owned(),
    }
}

/// Waits for QEMU's exit, removes the run directory, gives the VM's id
/// back, and publishes how it ended.
async fn watch_exit(
    mut child: Child,
    (ids, swtpm): (Option<VmIds>, Option<Swtpm>),
    events: Arc<GuestEvents>,
    killed: Arc<AtomicBool>,
    exit: watch::Sender<Option<VmImageExit>>,
    (id, run_dir): (String, PathBuf),
) {
    let status = child.wait().await;
    // QMP's last events (a panic) come before QEMU closes the socket.
    events.wait_closed(Duration::from_secs(2)).await;
    let panicked = events.panicked();
    let status = match status {
        Ok(s) => exit_status(s, killed.load(Ordering::SeqCst), panicked),
        Err(e) => {
            tracing::warn!(vm_id = %id, %e, "waiting for QEMU");
            KILLED
        }
    };
    let ended = VmImageExit {
        status,
        panicked,
        by_guest: events.shutdown_by_guest(),
    };
    tracing::info!(vm_id = %id, exit_status = status, panicked, powered_off_by_guest = ended.by_guest, "VM exited");
    if let Err(e) = std::fs::remove_dir_all(&run_dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(vm_id = %id, dir = %run_dir.display(), %e, "cannot remove the VM's run directory");
        }
    }
    if let Some(swtpm) = swtpm {
        swtpm.end(SWTPM_GRACE).await;
    }
    drop(ids);
    exit.send_replace(Some(ended));
}

fn exit_status(status: ExitStatus, killed: bool, panicked: bool) -> u32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_read_as_a_container_would() {
        use std::os::unix::process::ExitStatusExt;
        let code = |c: i32| ExitStatus::from_raw(c << 8);
        let signal = |s: i32| ExitStatus::from_raw(s);
        assert_eq!(exit_status(code(0), false, false), 0);
        assert_eq!(exit_status(signal(9), true, false), 137);
        assert_eq!(exit_status(code(0), true, false), 137);
        assert_eq!(exit_status(code(1), false, true), PANICKED);
        assert_eq!(exit_status(code(1), false, false), 1);
        assert_eq!(exit_status(signal(15), false, false), 143);
    }

    #[test]
    fn passed_files_must_be_what_they_are_said_to_be() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk");
        std::fs::write(&file, b"x").unwrap();
        let passed = |path: &Path, block_device| PassedFile {
            path: path.to_owned(),
            access: Access::ReadOnly,
            block_device,
        };
        open_passed(&passed(&file, false)).unwrap();
        let e = open_passed(&passed(&file, true)).unwrap_err().to_string();
        assert!(e.contains("not a block device"), "{e}");
        // A link in the file's place is not followed; a FIFO does not block.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        assert!(open_passed(&passed(&link, false)).is_err());
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let e = open_passed(&passed(&fifo, false)).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
