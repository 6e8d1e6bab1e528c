//! For tests and benchmarks only (feature `test-util`): tiny guest
//! programs ([`guest_image`], and [`counting`] ones for snapshots) and the
//! constants of the boot protocols and the virtio-mmio transport they
//! check husk-vmm against.

pub mod counting;
pub mod guest_image;

pub use crate::boot::loader::{HDRS_MAGIC, PVH_START_MAGIC};
pub use crate::devices::virtio::mmio::{MMIO_MAGIC, VENDOR_ID};
pub use crate::vcpu::regs::{BOOT_CS, BOOT_DS, X86_CR0_PE, X86_CR0_PG, X86_CR4_PAE};
