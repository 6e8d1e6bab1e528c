//! Host plumbing both pod kinds use: the pod's network namespace connected
//! to its VM ([`network`]), the pod's cgroup on the host ([`cgroup`]),
//! one writer per disk on the node ([`disk_lock`]),
//! mount points made and undone without following the guest ([`mounts`]),
//! host services in the pod's namespace reachable at the pod's address
//! beside the VM ([`pod_ports`]), and small files read from a pod's volumes without being led out of
//! them ([`files`]).

pub mod cgroup;
pub mod disk_lock;
pub mod files;
pub mod mounts;
pub mod network;
pub mod pod_ports;
