//! Everything of QEMU's, for both kinds of VM:
//!
//! - [`Qemu`] (`micro_vm`): the micro-VM backend of the [`crate::Hypervisor`]
//!   trait (`-M microvm`, husk's kernel and agent, vhost-user devices);
//! - [`vm_image`]: the command line of a VM image (a whole OS booted from
//!   its disk, `-M pc`/`q35`), which [`crate::VmImage`] spawns, and
//!   [`vm_extras`], what it may get beyond disks and NIC (Secure Boot,
//!   a TPM, a display, the exec tools);
//!   [`vm_volume`]: its root disk on a persistent volume, and the import
//!   of the image's disk into it; [`vm_resize`]: the room it boots with
//!   and the QMP side of a resize; [`passed_files`]: the files it is
//!   handed as descriptors;
//! - [`qmp`]: QEMU's monitor protocol; [`qga`]: the QEMU guest agent in a
//!   VM image's guest; both over [`json_lines`], one bounded JSON object
//!   per line.

mod accel;
pub mod json_lines;
mod micro_vm;
pub mod passed_files;
pub mod qga;
pub mod qmp;
pub mod vm_extras;
pub mod vm_image;
pub mod vm_resize;
pub mod vm_volume;

pub use micro_vm::Qemu;
