//! husk-shim: the host side of husk as containerd sees it. The binary
//! `containerd-shim-husk-v2` is a thin entry over this library:
//!
//! - [`bootstrap`]: the `start`, `delete`, `-v` and `-info` actions;
//! - [`service`]: the ttrpc Task service, one line per call into
//! - [`manager`]: the container/process state machine, generic over
//!   [`pod::Pod`] (the VM and the files shared with it: [`sandbox`],
//!   [`share`]) and [`agent::AgentApi`] (the guest);
//! - [`events`], [`relay`]: task events to containerd, stdio between its
//!   FIFOs and the agent;
//! - [`spec`], [`network`], [`portforward`], [`cgroup`], [`metrics`]: the
//!   bundle's spec for the guest, the pod network, `kubectl port-forward`,
//!   the pod's host cgroup, stats in containerd's format;
//! - [`telemetry`]: operator metrics (Prometheus text) each shim serves
//!   for its pod, and the node's, read by `husk metrics`;
//! - [`console`]: the host end of the debug console (`husk console`);
//! - [`vmpod`]: the husk-vm mode, a VM image booted as the pod (its own
//!   [`pod::Pod`] and [`agent::AgentApi`] under the same manager).
//!
//! One executable serves both modes: it is `containerd-shim-husk-v2`
//! (runtime `io.containerd.husk.v2`) and, under the name
//! `containerd-shim-husk-vm-v2` (a symbolic link to it, runtime
//! `io.containerd.husk-vm.v2`), husk-vm. [`Mode::of_program`] tells them
//! apart by the name it was run as (docs/vm-pods.md, "Mode selection").

pub mod agent;
pub mod bootstrap;
pub mod cgroup;
pub mod console;
pub mod error;
pub mod events;
#[cfg(test)]
mod fake;
pub mod logging;
pub mod manager;
pub mod metrics;
pub mod network;
pub mod pod;
pub mod pool;
pub mod portforward;
pub mod process;
pub mod relay;
pub mod sandbox;
pub mod server;
pub mod service;
pub mod share;
pub mod spec;
pub mod telemetry;
pub mod vmpod;

/// The runtime name users give containerd (`--runtime io.containerd.husk.v2`).
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";
/// The runtime of husk-vm pods (VM images), and the name its shim binary
/// has (containerd runs `containerd-shim-<name>-<version>`).
pub const VM_RUNTIME_ID: &str = "io.containerd.husk-vm.v2";
pub const VM_SHIM_BINARY: &str = "containerd-shim-husk-vm-v2";

/// What a shim process runs: husk's container pods, or husk-vm's VM pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Container,
    VmImage,
}

impl Mode {
    /// The mode of a shim run as `program` (its argv[0]): husk-vm under
    /// the name `containerd-shim-husk-vm-v2`, husk otherwise.
    pub fn of_program(program: &std::ffi::OsStr) -> Mode {
        match std::path::Path::new(program).file_name() {
            Some(name) if name == VM_SHIM_BINARY => Mode::VmImage,
            _ => Mode::Container,
        }
    }

    /// The mode of this process.
    pub fn current() -> Mode {
        Mode::of_program(&std::env::args_os().next().unwrap_or_default())
    }

    /// The runtime name containerd knows the mode by.
    pub fn runtime_id(self) -> &'static str {
        match self {
            Mode::Container => RUNTIME_ID,
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
        assert_eq!(
            of("/usr/local/bin/containerd-shim-husk-v2"),
            Mode::Container
        );
        assert_eq!(
            of("/x/containerd-shim-husk-vm-v2/containerd-shim-husk-v2"),
            Mode::Container
        );
        assert_eq!(Mode::VmImage.runtime_id(), "io.containerd.husk-vm.v2");
    }
}
