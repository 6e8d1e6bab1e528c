//! The VM-image pod (runtime `husk-vm`): a VM image (a KubeVirt
//! containerDisk) booted as a pod, its own kernel and OS, through the same
//! shim and container manager as micro-VM pods (docs/vm-pods.md).
//!
//! - [`pod`]: [`VmImagePod`], the [`crate::task::pod::Pod`] of this kind;
//!   [`members`]: what the pod's containers share (the sandbox's
//!   placeholder, the VM container);
//! - [`agent`]: [`VmAgent`], the manager's calls answered on the host;
//! - [`container`]: the one app container, which is the VM: its files,
//!   its network, its QEMU (husk-hypervisor's `VmImage`); [`launch`]: what
//!   that VM is, decided from the bundle; [`root_volume`]: its root disk
//!   on a persistent volume, [`import`]: the image's disk written into
//!   it at the first start; [`state`]: its UEFI variables and TPM on a
//!   volume; [`error`]: why it failed;
//! - [`context`]: what every part reads (configuration, deadlines);
//! - [`seed`], [`cloud_init`]: the overlay and the NoCloud seed; [`dhcp`]:
//!   the pod's address for a guest that asks;
//! - [`exec`] over [`guest_agent`]: `kubectl exec` through the QEMU guest
//!   agent, and with `-t`/`-i` through husk's helper on a tools disk
//!   ([`tools`]);
//! - [`extras`]: what a VM gets beyond disks and NIC: the graphical
//!   console ([`vnc`]), Secure Boot, a TPM.
//!
//! The manager gives containerd every task semantic on top (events, Wait,
//! Delete, deadlines, the kill grace).

pub mod agent;
pub mod cloud_init;
pub mod container;
pub mod context;
pub mod dhcp;
pub mod error;
mod exec;
pub mod extras;
mod guest_agent;
mod import;
pub mod launch;
pub mod members;
pub mod pod;
mod resize;
pub mod root_volume;
pub mod seed;
pub mod state;
pub mod tools;
pub mod vnc;
mod volume_path;

pub use agent::VmAgent;
pub use container::PANICKED;
pub use launch::{FIRMWARE_ANNOTATION, KERNEL_ARGS_ANNOTATION};
pub use pod::{cleanup_after_crash, VmImagePlan, VmImagePod};
