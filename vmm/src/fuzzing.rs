//! For the fuzz targets only (feature `fuzzing`, see `fuzz/` and
//! docs/fuzzing.md): the places where guest input enters husk-vmm, which
//! are otherwise private. Each is the code the VMM runs, not a copy:
//!
//! - [`bus`]: the exit bus with its serial console (output to /dev/null)
//!   and virtio-mmio transports, as vCPU exits reach them;
//! - [`net_transmit`], [`net_receive`], [`rng_serve`]: a device's work on
//!   its queues once the driver has set them up, without its thread;
//! - [`vhost_user_vring`]: what the vhost-user frontend tells its daemon
//!   about a ready queue;
//! - [`snapshot_state`], [`restore_transport`]: a clone's reading of a
//!   template's state file, and its transports taking their state back.

use crate::devices::serial::SerialConsole;
use crate::devices::virtio::{net, rng, vhost_user, Queue};
use crate::memory::GuestMemoryMmap;
use std::io::{Read, Write};
use std::path::Path;

pub use crate::devices::bus::Bus;
pub use crate::devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE};
pub use crate::snapshot::format::{DeviceState, TransportState};
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

/// The state file parser on `bytes`: the devices of the state it holds,
/// or why it is refused. A state it accepts must encode back to exactly
/// `bytes` (the format has one encoding per state: nothing is read
/// loosely); it panics if not.
pub fn snapshot_state(bytes: &[u8]) -> Result<Vec<DeviceState>, String> {
    use crate::snapshot::format;
    let state = format::decode(bytes).map_err(|e| e.to_string())?;
    assert!(
        format::encode(&state) == bytes,
        "an accepted state file does not encode back to itself"
    );
    Ok(state.devices)
}

/// A clone's transport taking a state file's device state back.
pub fn restore_transport(t: &mut MmioTransport, state: &TransportState) -> Result<(), String> {
    t.restore(state).map_err(|e| e.to_string())
}
