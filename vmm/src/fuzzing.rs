//! For the fuzz targets only (feature `fuzzing`, see `fuzz/` and
//! docs/fuzzing.md): the places where guest input enters husk-vmm, which
//! are otherwise private. Each is the code the VMM runs, not a copy:
//!
//! - [`bus`]: the exit bus with its serial console (output to /dev/null)
//!   and virtio-mmio transports, as vCPU exits reach them;
//! - [`net_transmit`], [`net_receive`], [`rng_serve`]: a device's work on
//!   its queues once the driver has set them up, without its thread;
//! - [`vhost_user_vring`]: what the vhost-user frontend tells its daemon
//!   about a ready queue.

use crate::devices::serial::SerialConsole;
use crate::devices::virtio::{net, rng, vhost_user, Queue};
use crate::memory::GuestMemoryMmap;
use std::io::{Read, Write};
use std::path::Path;

pub use crate::devices::bus::Bus;
pub use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE};
pub use vhost::VringConfigData;

/// The bus with COM1 and `virtio` (base address, transport) windows.
pub fn bus(virtio: Vec<(u64, MmioTransport)>) -> Bus {
    let serial = SerialConsole::new(Path::new("/dev/null")).expect("/dev/null opens");
    Bus::new(serial, virtio)
}

/// virtio-net's transmit: every chain on `tx` to `tap`.
pub fn net_transmit(mem: &GuestMemoryMmap, tx: &mut Queue, tap: &mut impl Write) -> bool {
    net::transmit(mem, tx, &mut vec![0; net::MAX_FRAME], tap)
}

/// virtio-net's receive: frames from `tap` into the chains on `rx`;
/// true if the guest ran out of chains.
pub fn net_receive(mem: &GuestMemoryMmap, rx: &mut Queue, tap: &mut impl Read) -> (bool, bool) {
    let r = net::receive(mem, rx, &mut vec![0; net::MAX_FRAME], &mut Vec::new(), tap);
    (r.used, r.guest_full)
}

/// virtio-rng's answer to the requests on `queue`, with bytes from `fill`.
pub fn rng_serve(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    fill: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
) -> bool {
    rng::serve_requests(mem, queue, &mut vec![0; rng::MAX_REQUEST], fill)
}

/// The SET_VRING_ADDR the vhost-user frontend sends for `queue`.
pub fn vhost_user_vring(mem: &GuestMemoryMmap, queue: &Queue) -> Result<VringConfigData, String> {
    vhost_user::vring_config(mem, queue)
}
