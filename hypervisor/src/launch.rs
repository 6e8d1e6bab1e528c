//! What a VMM is told to run, and the one thing that differs between
//! VMMs: [`VmLaunch`] is one micro-VM as [`crate::MicroVm`] decided it (the
//! same for every VMM), [`Hypervisor`] turns it into the VMM's process
//! (QEMU's command line, husk-vmm's flags). Also the descriptor numbers a
//! VM's processes find their passed files at.

use crate::{confine, Accelerator, Error, MacAddr};
use std::path::PathBuf;
use tokio::process::Command;

/// Guest CID of every VM. Each VM has its own vsock backend process, so the
/// CIDs never meet; 3 is the first CID that is not reserved.
pub const GUEST_CID: u32 = 3;

/// What a VMM needs to know to launch one VM; built by [`MicroVm`].
#[derive(Debug, Clone)]
pub struct VmLaunch {
    pub id: String,
    pub accelerator: Accelerator,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Under TCG, the translation cache in MiB (0: the VMM's default).
    pub tcg_tb_size_mib: u32,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    /// The VM's run directory (sockets, logs). husk-vmm confines itself to
    /// it once set up.
    pub run_dir: PathBuf,
    /// What the VMM opens to write the serial console to: MicroVm makes it
    /// `/proc/self/fd/CONSOLE_FD`, a pipe into the bounded console log.
    pub console_log: PathBuf,
    /// vhost-user socket of the vsock backend (vhost-device-vsock).
    pub vsock_vhost_socket: PathBuf,
    /// vhost-user socket of the virtio-fs backend (virtiofsd).
    pub fs_vhost_socket: PathBuf,
    /// The virtio-fs tag the guest mounts.
    pub fs_tag: String,
    /// Network devices: the VMM finds device i's TAP at fd
    /// `FIRST_TAP_FD + i` (MicroVm puts it there).
    pub nets: Vec<NetLaunch>,
    /// The VM's own unprivileged user and group ([`confine::VmIds`]): the
    /// VMM runs as it (QEMU from exec, husk-vmm once set up). None: uid 0,
    /// without capabilities.
    pub identity: Option<confine::Identity>,
    /// The VMM's `oom_score_adj` (`confine::oom`); None: the launcher's.
    pub oom_score_adj: Option<i32>,
}

/// Where a child process of a VM finds the first fd passed to it.
pub const PASSED_FDS_START: i32 = 3;
/// Where a VMM process finds the write end of the console pipe.
pub const CONSOLE_FD: i32 = PASSED_FDS_START;
/// Where a VMM process finds the first TAP file descriptor.
pub const FIRST_TAP_FD: i32 = CONSOLE_FD + 1;

/// One virtio-net device as the VMM sees it.
#[derive(Debug, Clone)]
pub struct NetLaunch {
    /// The guest NIC's MAC address.
    pub mac: MacAddr,
}

/// A network device for a VM: a TAP the caller opened (in whichever
/// network namespace it belongs to) and the MAC the guest NIC gets. The
/// caller keeps the TAP open for the VM's life.
#[derive(Debug, Clone)]
pub struct NetDevice {
    pub tap: std::os::fd::RawFd,
    pub mac: String,
}

/// A VMM that husk can run guests with.
pub trait Hypervisor: Send + Sync {
    /// Short name for logs and errors, e.g. "qemu".
    fn name(&self) -> &'static str;
    /// The VMM process for `launch`. It must exit when the guest resets
    /// (the guest kernel runs with `reboot=t`). Fails when `launch` is
    /// outside what this VMM takes.
    fn command(&self, launch: &VmLaunch) -> Result<Command, Error>;
}
