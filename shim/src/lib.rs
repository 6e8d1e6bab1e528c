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
//! - [`console`]: the host end of the debug console (`husk console`).

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

/// The runtime name users give containerd (`--runtime io.containerd.husk.v2`).
pub const RUNTIME_ID: &str = "io.containerd.husk.v2";
