//! What husk-vmm's vhost-user frontend takes from the guest: the queues
//! the driver sets up on a vsock or virtio-fs transport (any registers, in
//! any order), which at DRIVER_OK become SET_VRING_* requests to the
//! daemon. Every ready queue must reach the daemon under its own index,
//! with ring addresses that lie wholly inside one mapping of guest RAM
//! (the daemon maps the same memfd regions); nothing may panic. The daemon
//! itself, not husk, works the rings. Input: byte 0 picks the device, then
//! 8-byte register accesses to its window (`Access::read`, window ignored).

#![no_main]

use husk_fuzz::virtio::{self, check_activation, guest_memory, Access};
use husk_fuzz::Input;
use husk_vmm::devices::virtio::QueueT;
use husk_vmm::fuzzing::vhost_user_vring;
use husk_vmm::memory::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

fn memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| guest_memory(0x1_0000, 0x1_0000))
}

/// The ring of `len` bytes at guest `addr` as the daemon gets it: a host
/// address inside the mapping of the region that holds all of it.
fn check_ring(mem: &GuestMemoryMmap, what: &str, addr: u64, len: u64, host: u64) {
    let region = mem
        .find_region(GuestAddress(addr))
        .unwrap_or_else(|| panic!("{what} at {addr:#x} not in RAM"));
    let start = region.start_addr().0;
    assert!(
        addr - start + len <= region.len(),
        "{what} at {addr:#x}+{len:#x} crosses the end of its region"
    );
    let base = region
        .get_host_address(vm_memory::MemoryRegionAddress(0))
        .unwrap() as u64;
    assert_eq!(host, base + (addr - start), "{what}: host address");
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let shape = if input.u8() & 1 == 0 {
        virtio::VSOCK
    } else {
        virtio::FS
    };
    let mem = memory();
    let (mut t, seen) = virtio::transport(mem, shape, false);
    while !input.is_empty() {
        let a = Access::read(&mut input);
        if a.write {
            t.write(u64::from(a.offset), &a.data());
        } else {
            t.read(u64::from(a.offset), &mut vec![0u8; a.len]);
        }
    }
    for act in seen.lock().unwrap().iter() {
        check_activation(shape, act);
        for r in &act.queues {
            let q = &r.queue;
            let vring =
                vhost_user_vring(mem, q).unwrap_or_else(|e| panic!("queue {}: {e}", r.index));
            let n = u64::from(q.size());
            assert_eq!(vring.queue_size, q.size());
            check_ring(
                mem,
                "descriptor table",
                q.desc_table(),
                16 * n,
                vring.desc_table_addr,
            );
            check_ring(
                mem,
                "available ring",
                q.avail_ring(),
                6 + 2 * n,
                vring.avail_ring_addr,
            );
            check_ring(
                mem,
                "used ring",
                q.used_ring(),
                6 + 8 * n,
                vring.used_ring_addr,
            );
        }
    }
});
