//! A clone's reading of a template's snapshot state file, which lies
//! where a tamperer may write (docs/husk-vmm.md, "Snapshot and
//! restore"): the whole input is the file. The parser must refuse it or
//! accept it without a panic, and what it accepts must encode back to
//! the very input (checked in `husk_vmm::fuzzing::snapshot_state`). Each
//! accepted device state is then taken back by transports shaped like
//! the devices a template may have (net, rng; vhost-user devices cannot
//! be in one): refused, or activating the device only with valid queues
//! in guest RAM, in index order.

#![no_main]

use husk_fuzz::virtio::{self, check_activation, guest_memory, Shape};
use husk_vmm::fuzzing::{restore_transport, snapshot_state};
use husk_vmm::memory::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const SHAPES: [Shape; 2] = [virtio::NET, virtio::RNG];

/// 64 KiB low and 64 KiB high RAM, as the virtqueue targets lay it out.
fn memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| guest_memory(0x1_0000, 0x1_0000))
}

fuzz_target!(|data: &[u8]| {
    let Ok(devices) = snapshot_state(data) else {
        return;
    };
    for (i, device) in devices.iter().enumerate() {
        // The slot's device must be of the type the state names; try
        // the other shape too, as a hostile file would.
        let shape = SHAPES[(device.device_type as usize + i) % SHAPES.len()];
        let (mut t, seen) = virtio::transport(memory(), shape, false);
        if restore_transport(&mut t, &device.transport).is_ok() {
            for act in seen.lock().unwrap().iter() {
                check_activation(shape, act);
            }
        }
    }
});
