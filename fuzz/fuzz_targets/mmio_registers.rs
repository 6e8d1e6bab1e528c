//! husk-vmm's exit bus as a vCPU reaches it: MMIO reads and writes of any
//! width at any offset of the virtio-mmio windows of one device of each
//! kind (net, rng, vsock, fs, and a window nobody claims), and port I/O
//! on COM1. The transport must follow the driver's steps or ignore them,
//! and hand a device only ready, valid queues in index order; nothing may
//! panic. Input: one 8-byte access after another (`Access::read`); the
//! first byte also says which devices refuse their activation.

#![no_main]

use husk_fuzz::virtio::{self, check_activation, guest_memory, Access, Shape};
use husk_fuzz::Input;
use husk_vmm::fuzzing::{bus, MMIO_WINDOW_SIZE};
use husk_vmm::memory::{GuestMemoryMmap, VIRTIO_MMIO_BASE};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

const SHAPES: [Shape; 4] = [virtio::NET, virtio::RNG, virtio::VSOCK, virtio::FS];
const COM1: u16 = 0x3f8;

/// 64 KiB low and 64 KiB high RAM; the transport only checks rings
/// against it, nothing is written.
fn memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| guest_memory(0x1_0000, 0x1_0000))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let refuse = input.u8();
    let mem = memory();
    let mut windows = Vec::new();
    let mut seen = Vec::new();
    for (i, shape) in SHAPES.iter().enumerate() {
        let (t, s) = virtio::transport(mem, *shape, refuse & (1 << i) != 0);
        windows.push((VIRTIO_MMIO_BASE + i as u64 * MMIO_WINDOW_SIZE, t));
        seen.push(s);
    }
    let bus = bus(windows);
    while !input.is_empty() {
        let a = Access::read(&mut input);
        let mut data = vec![0u8; a.len];
        match (a.pio, a.write) {
            (true, false) => bus.pio_read(COM1 + u16::from(a.window % 16), &mut data),
            (true, true) => bus.pio_write(COM1 + u16::from(a.window % 16), &a.data()),
            (false, false) => {
                let window = u64::from(a.window % (SHAPES.len() as u8 + 1));
                let addr = VIRTIO_MMIO_BASE + window * MMIO_WINDOW_SIZE + u64::from(a.offset);
                bus.mmio_read(addr, &mut data);
                if window == SHAPES.len() as u64 {
                    assert!(data.iter().all(|b| *b == 0xff), "unclaimed reads all ones");
                }
            }
            (false, true) => {
                let window = u64::from(a.window % (SHAPES.len() as u8 + 1));
                let addr = VIRTIO_MMIO_BASE + window * MMIO_WINDOW_SIZE + u64::from(a.offset);
                bus.mmio_write(addr, &a.data());
            }
        }
    }
    for (shape, seen) in SHAPES.iter().zip(&seen) {
        for act in seen.lock().unwrap().iter() {
            check_activation(*shape, act);
        }
    }
});
