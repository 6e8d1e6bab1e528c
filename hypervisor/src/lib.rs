//! husk-hypervisor: every VM process husk runs on the host, from a
//! configuration to a running VM and back to nothing. The shim decides
//! *what* a pod's VM is; this crate spawns, places, confines, watches and
//! ends it.
//!
//! The two kinds of VM, one type each:
//!
//! - [`MicroVm`] (`micro_vm`): a micro-VM pod's VM — husk's guest kernel
//!   and agent, with its device daemons (virtiofsd, vhost-device-vsock);
//!   preflight, run directory, boot until the agent answers, stop, cleanup.
//! - [`VmImage`] (`vm_image`): a VM-image pod's VM — a whole OS booted by
//!   QEMU from a disk; spawned paused in the pod's cgroup and confined
//!   before exec, its monitor (QMP), its exit, its stats, its kill.
//!
//! Launching, per VMM:
//!
//! - [`launch`]: [`VmLaunch`] (one micro-VM as every VMM is told it) and
//!   the one-method [`Hypervisor`] trait;
//! - [`qemu`]: everything of QEMU's — the micro-VM backend [`Qemu`], the
//!   VM-image command line, QMP, the QEMU guest agent, their bounded JSON
//!   lines;
//! - [`HuskVmm`] (`husk_vmm`): husk's own VMM, launched with the arguments
//!   husk-vmm-config's `VmmConfig` writes;
//! - [`resolve_backend`], [`resolve_accelerator`] (`accel`): which VMM and
//!   accelerator a host gets, and why (docs/husk-vmm.md).
//!
//! Around the processes:
//!
//! - `daemon`, `supervisor`: a spawned helper with its placement (the
//!   pod's cgroup, before exec) and bounded log; the watch that ends a VM
//!   whose helper died;
//! - [`confine`]: what each process is left with (user, capabilities,
//!   namespaces, jail, seccomp; docs/security.md);
//! - [`log_pump`], [`log_dir`]: every byte a VM prints, bounded, into its
//!   log directory;
//! - [`swtpm`]: a VM image's TPM 2.0, confined as QEMU is;
//! - [`agent_channel`] (`vsock`): the host end of hybrid vsock;
//! - [`disk_format`]: what a disk image is, read from its header as
//!   hostile bytes;
//! - [`proc_stats`]: a process's CPU time and memory from `/proc`;
//! - [`tap`]: the TAP a VM's NIC is backed by (husk-vmm-config's).

mod accel;
pub mod confine;
mod daemon;
pub mod disk_format;
mod error;
mod husk_vmm;
pub mod launch;
pub mod log_dir;
pub mod log_pump;
mod micro_vm;
mod preflight;
pub mod proc_stats;
pub mod qemu;
mod supervisor;
pub mod swtpm;
#[cfg(test)]
mod test_support;
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
pub use launch::{
    Hypervisor, NetDevice, NetLaunch, VmLaunch, CONSOLE_FD, FIRST_TAP_FD, GUEST_CID,
    PASSED_FDS_START,
};
pub use micro_vm::{set_guest_clock, BootTimings, MicroVm, VmPids, VmSpec};
/// The checks `MicroVm::start` makes of the guest artifacts and helper
/// binaries, for `husk check` to make the same ones.
pub use preflight::{check_executable, check_initrd, check_kernel};
pub use qemu::Qemu;
pub use vm_image::VmImage;
pub use vsock::{agent_channel, hybrid_vsock_connect, read_handshake_reply, HandshakeError};
