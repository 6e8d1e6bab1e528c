//! husk-vmm: husk's own virtual machine monitor, on KVM and the rust-vmm
//! crates (kvm-ioctls, vm-memory, linux-loader, vm-superio, virtio-queue,
//! vhost), one process per micro-VM like Firecracker. The binary
//! (`src/main.rs`) reads a [`VmmConfig`] from its arguments and calls
//! [`run`]; the launcher side lives in husk-hypervisor and writes those
//! arguments with the same type (crate husk-vmm-config).
//!
//! Layout, one concern per module (docs/husk-vmm.md):
//! - `vm` ([`Vmm`]) and `vcpu`: the VM and its vCPUs (boot registers in
//!   `vcpu::regs`); [`memory`]: guest RAM and the guest-physical layout;
//! - `boot`: kernel, initrd and command line (`loader`), the MP table;
//! - [`devices`]: the exit bus, the serial console, virtio-mmio and each
//!   virtio device;
//! - `security`: seccomp filters and capability drop per thread, the jail;
//! - `snapshot`: VM templates: a template's snapshot (SIGUSR1) and a
//!   clone's restore from it, and the state file's format;
//! - [`probe`]: can this `/dev/kvm` run guest code at all;
//! - `test_util` (feature `test-util`): hand-encoded guest programs and
//!   the boot-protocol constants tests check them against;
//! - `fuzzing` (feature `fuzzing`): the entry points of guest input for
//!   the fuzz targets (fuzz/);
//! - `run`: the process around a VM (devices, jail, signals, seccomp).
//!
//! The public surface is what a caller composes a VM from: [`run`] for the
//! whole process, or [`Vmm`] with [`devices`] on [`memory`]. Boot,
//! vCPU and security internals stay private.

mod boot;
pub mod devices;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod memory;
pub mod probe;
mod run;
mod security;
mod snapshot;
#[cfg(any(test, feature = "test-util"))]
pub mod test_util;
mod vcpu;
mod vm;

pub use husk_vmm_config::{SeccompMode, VmmConfig};
pub use run::{run, RunError};
pub use vcpu::VcpuStop;
pub use vm::{RunningVm, VmEvent, Vmm, VmmError};
