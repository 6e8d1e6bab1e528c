//! husk-hypervisor: everything that turns a configuration into a running
//! micro-VM whose agent answers, and back into nothing, on the host side.
//!
//! - [`MicroVm`] owns one VM's lifecycle: preflight checks, the per-VM run
//!   directory, the device daemons (virtiofsd, vhost-device-vsock), the VMM
//!   process, boot until the agent answers, graceful stop and cleanup.
//! - [`Hypervisor`] is the part that differs between VMMs: how to launch the
//!   VMM process for a VM. One backend per VMM: [`Qemu`] and [`HuskVmm`]
//!   (husk's own VMM, the `husk-vmm` crate and binary, launched with the
//!   arguments husk-vmm-config's `VmmConfig` writes). `hypervisor.backend`
//!   picks one; `auto` takes husk-vmm where KVM can run a guest
//!   ([`resolve_backend`], docs/husk-vmm.md).
//! - [`agent_channel`] is the host end of hybrid vsock: a Unix socket,
//!   `CONNECT <port>\n`, `OK <port>\n`, then gRPC to the agent.
//! - [`tap`] opens the TAP a VM's NIC is backed by (husk-vmm-config's, as
//!   husk-vmm checks the same TAP on its side).
//! - [`confine`] confines the helpers that are not ours (QEMU,
//!   vhost-device-vsock, virtiofsd) between fork and exec, gives each VM
//!   an unprivileged id of its own, and says what each helper is left
//!   with (docs/security.md).
//! - [`vm_image`] launches a VM *image* (husk-vm pods: a whole OS booted
//!   from its disk), with [`qmp`] and [`qga`] to drive QEMU and the guest
//!   agent, and [`disk_format`] to check the image's disk first.

mod accel;
pub mod confine;
mod daemon;
pub mod disk_format;
mod error;
mod husk_vmm;
pub mod json_lines;
pub mod log_dir;
pub mod log_pump;
mod preflight;
mod qemu;
pub mod qga;
pub mod qmp;
mod supervisor;
#[cfg(test)]
mod test_support;
mod vm;
pub mod vm_image;
mod vsock;

pub use accel::{
    detect_accelerator, resolve_accelerator, resolve_backend, resolve_vmm, Accelerator,
    AcceleratorDecision, BackendDecision,
};
pub use daemon::MAX_PASSED_FDS;
pub use error::Error;
pub use husk_vmm::HuskVmm;
pub use husk_vmm_config::{tap, MacAddr};
/// The checks `MicroVm::start` makes of the guest artifacts and helper
/// binaries, for `husk check` to make the same ones.
pub use preflight::{check_executable, check_initrd, check_kernel};
pub use qemu::Qemu;
pub use vm::{set_guest_clock, BootTimings, MicroVm, VmPids, VmSpec};
pub use vsock::{agent_channel, hybrid_vsock_connect, read_handshake_reply, HandshakeError};

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
