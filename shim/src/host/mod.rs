//! Host plumbing both pod kinds use: the pod's network namespace connected
//! to its VM ([`network`]), the pod's cgroup on the host ([`cgroup`]),
//! one writer per disk on the node ([`disk_lock`]),
//! mount points made and undone without following the guest ([`mounts`]),
//! and small files read from a pod's volumes without being led out of
//! them ([`files`]).

pub mod cgroup;
pub mod disk_lock;
pub mod files;
pub mod mounts;
pub mod network;
