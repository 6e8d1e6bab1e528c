//! What the guest's I/O reaches: the bus that routes port and
//! MMIO exits, the serial console (COM1), and the [`virtio`] devices on
//! their virtio-mmio transport.

pub(crate) mod bus;
pub(crate) mod serial;
pub mod virtio;
