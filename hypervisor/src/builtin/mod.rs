//! The built-in VMM: a micro-VM monitor on the rust-vmm crates
//! (kvm-ioctls, vm-memory, linux-loader, vm-superio), run as its own
//! process (`husk-vmm`, one per VM) like Firecracker.
//!
//! One module per concern: [`memory`] (guest RAM and layout), [`loader`]
//! (kernel, initrd, command line, boot structures), [`regs`] (vCPU boot
//! state), [`serial`] (the console), [`bus`] (exit dispatch), [`vcpu`]
//! (run loop), [`vmm`] (putting it together), [`seccomp`] and [`jail`]
//! (hardening). See docs/builtin-vmm.md.

pub mod backend;
pub mod bus;
pub mod guest_image;
pub mod jail;
pub mod loader;
pub mod memory;
pub mod mptable;
pub mod probe;
pub mod regs;
pub mod seccomp;
pub mod serial;
pub mod vcpu;
pub mod virtio;
pub mod vmm;

pub use vmm::{RunningVm, VmConfig, VmEvent, Vmm, VmmError};
