//! Host plumbing both pod kinds use: the pod's network namespace connected
//! to its VM ([`network`]), the pod's cgroup on the host ([`cgroup`]), and
//! mount points made and undone without following the guest ([`mounts`]).

pub mod cgroup;
pub mod mounts;
pub mod network;
