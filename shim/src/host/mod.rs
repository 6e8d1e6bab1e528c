//! Host plumbing both pod kinds use: the pod's network namespace connected
//! to its VM ([`network`]), the pod's cgroup on the host ([`cgroup`]),
//! mount points made and undone without following the guest ([`mounts`]),
//! and small files read from a pod's volumes without being led out of
//! them ([`files`]).

pub mod cgroup;
pub mod files;
pub mod mounts;
pub mod network;
