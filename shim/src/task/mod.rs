//! The containerd face of the shim: everything containerd sees of a pod,
//! the same for both pod kinds.
//!
//! - [`bootstrap`]: the binary's actions besides serving (`start`,
//!   `delete`, `-v`, `-info`);
//! - [`server`], [`service`]: the ttrpc Task server, each call one line
//!   into the [`manager`], the container/process state machine, generic
//!   over [`pod::Pod`] (the host side of a pod) and [`agent::AgentApi`]
//!   (its guest), every guest call under a deadline;
//! - [`process`], [`events`], [`relay`]: what the shim knows of a
//!   container, task events to containerd, stdio between containerd's
//!   FIFOs and the guest;
//! - [`stats`]: a container's figures in the metrics format containerd
//!   reads; [`error`]: every Task error and its ttrpc code.

pub mod agent;
pub mod bootstrap;
pub mod error;
pub mod events;
#[cfg(test)]
mod fake;
pub mod manager;
pub mod pod;
pub mod process;
pub mod relay;
pub mod server;
pub mod service;
pub mod stats;
