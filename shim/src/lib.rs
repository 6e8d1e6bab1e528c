//! husk-shim: the host side of husk as containerd sees it. The binary
//! `containerd-shim-husk-v2` is a thin entry over this library, laid out in
//! rooms, each depending only on the ones listed before it:
//!
//! - [`host`]: host plumbing both pod kinds use — the pod network
//!   ([`host::network`]), the pod's cgroup ([`host::cgroup`]), mounts
//!   ([`host::mounts`]), one writer per disk ([`host::disk_lock`]);
//! - [`bundle`]: what both pod kinds read from a container's bundle (its
//!   spec, annotations, limits, namespaces; the rootfs mount);
//! - [`task`]: the containerd face — the shim's actions
//!   ([`task::bootstrap`]), the ttrpc Task service ([`task::service`],
//!   [`task::server`]) over the container manager ([`task::manager`]),
//!   generic over a [`task::pod::Pod`] (the host side of a pod) and a
//!   [`task::agent::AgentApi`] (its guest); events, stdio relays, stats in
//!   containerd's format, the errors' ttrpc codes;
//! - [`micro_vm`]: the micro-VM pod ([`micro_vm::MicroVmPod`], runtime
//!   `husk`): husk's guest and agent, the share tree, the pool of
//!   pre-booted VMs, port-forward, the debug console's host end;
//! - [`vm_image`]: the VM-image pod ([`vm_image::VmImagePod`], runtime
//!   `husk-vm`): a KubeVirt containerDisk booted as the pod;
//! - [`telemetry`]: operator metrics (Prometheus text) each shim serves
//!   for its pod, and the node's, read by `husk metrics`;
//! - [`logging`]: the shim's own log.
//!
//! The VM processes themselves are husk-hypervisor's (`MicroVm`,
//! `VmImage`): the pod kinds decide what to run, not how.
//!
//! One executable serves both kinds: it is `containerd-shim-husk-v2`
//! (runtime `io.containerd.husk.v2`) and, under the name
//! `containerd-shim-husk-vm-v2` (a symbolic link to it, runtime
//! `io.containerd.husk-vm.v2`), husk-vm. [`Mode::of_program`] tells them
//! apart by the name it was run as (docs/vm-pods.md, "Mode selection").

pub mod bundle;
pub mod host;
pub mod logging;
pub mod micro_vm;
pub mod task;
pub mod telemetry;
pub mod vm_image;

/// The runtime name users give containerd (`--runtime io.containerd.husk.v2`).
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";
/// The runtime of husk-vm pods (VM images), and the name its shim binary
/// has (containerd runs `containerd-shim-<name>-<version>`).
pub const VM_RUNTIME_ID: &str = "io.containerd.husk-vm.v2";
pub const VM_SHIM_BINARY: &str = "containerd-shim-husk-vm-v2";

/// Which kind of pod a shim process runs: micro-VM pods (runtime `husk`)
/// or VM-image pods (runtime `husk-vm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    MicroVm,
    VmImage,
}

impl Mode {
    /// The mode of a shim run as `program` (its argv[0]): VM-image pods
    /// under the name `containerd-shim-husk-vm-v2`, micro-VM pods otherwise.
    pub fn of_program(program: &std::ffi::OsStr) -> Mode {
        match std::path::Path::new(program).file_name() {
            Some(name) if name == VM_SHIM_BINARY => Mode::VmImage,
            _ => Mode::MicroVm,
        }
    }

    /// The mode of this process.
    pub fn current() -> Mode {
        Mode::of_program(&std::env::args_os().next().unwrap_or_default())
    }

    /// The runtime name containerd knows the mode by.
    pub fn runtime_id(self) -> &'static str {
        match self {
            Mode::MicroVm => RUNTIME_ID,
            Mode::VmImage => VM_RUNTIME_ID,
        }
    }
}

#[cfg(test)]
mod mode_tests {
    use super::*;

    #[test]
    fn the_program_name_chooses_the_mode() {
        let of = |p: &str| Mode::of_program(p.as_ref());
        assert_eq!(
            of("/usr/local/bin/containerd-shim-husk-vm-v2"),
            Mode::VmImage
        );
        assert_eq!(of("containerd-shim-husk-vm-v2"), Mode::VmImage);
        assert_eq!(of("/usr/local/bin/containerd-shim-husk-v2"), Mode::MicroVm);
        assert_eq!(
            of("/x/containerd-shim-husk-vm-v2/containerd-shim-husk-v2"),
            Mode::MicroVm
        );
        assert_eq!(Mode::VmImage.runtime_id(), "io.containerd.husk-vm.v2");
    }
}
