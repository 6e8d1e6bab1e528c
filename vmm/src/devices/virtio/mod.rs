//! husk-vmm's virtio devices and what they share: the
//! [`VirtioDevice`] interface a device implements, and the
//! [`Interrupt`] it raises. The transport is virtio-mmio (`mmio`): the
//! guest finds devices on the kernel command line
//! (`virtio_mmio.device=<size>@<addr>:<irq>`), queue notifications arrive
//! on ioeventfds, interrupts leave through irqfds.

mod device;
pub(crate) mod mmio;
pub mod net;
pub mod rng;
pub mod vhost_user;
pub(crate) mod worker;

pub use device::{
    ActivateError, Interrupt, PauseError, QueuePosition, ReadyQueue, ThreadGone, VirtioDevice,
    INT_CONFIG, INT_VRING,
};
pub use mmio::NotifyMismatch;
pub use virtio_queue::{Queue, QueueT};
