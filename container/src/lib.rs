//! husk-container: the guest's OCI container library. It plans a container
//! from an OCI runtime spec ([`Plan`]), launches its init and exec processes
//! into their namespaces ([`Process`]), and keeps its cgroup v2 group
//! ([`Cgroup`]). The agent, PID 1 of the guest, keeps the registry of
//! containers, reaping, networking and the API; this crate keeps everything
//! between a spec and an exec'd container process, in the shape of youki's
//! libcontainer (see docs/shim.md).
//!
//! Two halves, two rules:
//! - `plan`: pure, on the agent's side. Spec in, plan out, every string
//!   prepared as a C string, every refusal naming the spec's field.
//! - `child`: runs after the clone, in a copy of a multi-threaded process,
//!   so it only makes system calls (no allocation, no locks) until exec. It
//!   is a sequence of named phases; a failure is one fixed record (`failure`)
//!   that the agent's side turns into runc's words.

mod cgroup;
mod child;
mod failure;
mod plan;
mod process;
mod stdio;

pub use cgroup::{enable_controllers, Cgroup, CgroupError, Stats};
pub use failure::{ChildFailure, Step};
pub use plan::{cgroup_limits, Plan, SpecError};
pub use process::{Process, ProcessError, Start};
pub use stdio::StdioError;
