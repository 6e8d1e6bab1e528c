//! virtio-rng, no KVM needed: the test plays the guest driver. Buffers the
//! "guest" offers come back filled with random bytes, capped per request;
//! after a driver reset the old ring is left alone and new rings are
//! served.

mod common;

use common::{descriptor, queue, ready, DESC_NEXT, DESC_WRITE};
use husk_vmm::devices::virtio::rng::{Rng, MAX_REQUEST, VIRTIO_ID_RNG};
use husk_vmm::devices::virtio::{Interrupt, Queue, QueueT, VirtioDevice, INT_VRING};
use husk_vmm::memory::{create_guest_memory, GuestMemoryMmap};
use husk_vmm::SeccompMode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const VERSION_1: u64 = 1 << 32;

/// Makes chains `heads` available, in order, after `already` entries.
fn offer(mem: &GuestMemoryMmap, q: &Queue, already: u16, heads: &[u16]) {
    for (i, head) in heads.iter().enumerate() {
        let slot = u64::from(already) + i as u64;
        mem.write_obj(*head, GuestAddress(q.avail_ring() + 4 + 2 * slot))
            .unwrap();
    }
    mem.write_obj(
        already + heads.len() as u16,
        GuestAddress(q.avail_ring() + 2),
    )
    .unwrap();
}

fn used_idx(mem: &GuestMemoryMmap, used_ring: u64) -> u16 {
    mem.read_obj(GuestAddress(used_ring + 2)).unwrap()
}

/// Used element `i`: (descriptor id, length written).
fn used_elem(mem: &GuestMemoryMmap, used_ring: u64, i: u64) -> (u32, u32) {
    let e = used_ring + 4 + 8 * i;
    (
        mem.read_obj(GuestAddress(e)).unwrap(),
        mem.read_obj(GuestAddress(e + 4)).unwrap(),
    )
}

fn wait_used(mem: &GuestMemoryMmap, used_ring: u64, want: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while used_idx(mem, used_ring) < want {
        assert!(
            Instant::now() < deadline,
            "used idx {} of {want}",
            used_idx(mem, used_ring)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn read(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    mem.read_slice(&mut b, GuestAddress(addr)).unwrap();
    b
}

fn kick() -> Arc<EventFd> {
    Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())
}

#[test]
fn rng_fills_guest_buffers_caps_requests_and_survives_a_reset() {
    let mut dev = Rng::new(SeccompMode::Kill).unwrap();
    assert_eq!(dev.device_type(), VIRTIO_ID_RNG);
    assert_eq!(dev.queue_max_sizes(), &[256]);
    let mem = create_guest_memory(16).unwrap();

    // Chain 0: 16 bytes then 128 KiB (more than one request gets);
    // chain 2: 32 bytes.
    let q = queue(0, 256);
    let (a, b, c) = (0x20_0000u64, 0x30_0000u64, 0x60_0000u64);
    descriptor(&mem, &q, 0, a, 16, DESC_WRITE | DESC_NEXT, 1);
    descriptor(&mem, &q, 1, b, 128 * 1024, DESC_WRITE, 0);
    descriptor(&mem, &q, 2, c, 32, DESC_WRITE, 0);
    offer(&mem, &q, 0, &[0, 2]);
    let used_ring = q.used_ring();
    let k = kick();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Interrupt::new(irq.try_clone().unwrap());
    dev.activate(
        mem.clone(),
        VERSION_1,
        ready(vec![(q, k.clone())]),
        interrupt.clone(),
    )
    .unwrap();
    k.write(1).unwrap();
    wait_used(&mem, used_ring, 2);
    assert_eq!(
        used_elem(&mem, used_ring, 0),
        (0, MAX_REQUEST as u32),
        "the long chain gets one request's worth"
    );
    assert_eq!(used_elem(&mem, used_ring, 1), (2, 32));
    let first = read(&mem, a, 16);
    let small = read(&mem, c, 32);
    assert!(small.iter().any(|x| *x != 0), "random bytes: {small:?}");
    assert_ne!(first[..], small[..16], "two requests, two answers");
    let long = read(&mem, b, 128 * 1024);
    let filled = MAX_REQUEST - 16;
    assert!(long[..filled].iter().any(|x| *x != 0));
    assert!(
        long[filled..].iter().all(|x| *x == 0),
        "bytes past the cap stay untouched"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while irq.read().is_err() {
        assert!(Instant::now() < deadline, "no interrupt");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_ne!(interrupt.status() & INT_VRING, 0);

    // Reset: a new buffer and a kick on the old ring stay unanswered.
    dev.reset();
    let old = queue(0, 256); // the same rings, for writing them
    descriptor(&mem, &old, 3, c + 0x1000, 32, DESC_WRITE, 0);
    offer(&mem, &old, 2, &[3]);
    k.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        used_idx(&mem, used_ring),
        2,
        "a reset device used the old ring"
    );

    // Set up again elsewhere: served.
    let q2 = queue(1, 256);
    descriptor(&mem, &q2, 0, 0x70_0000, 64, DESC_WRITE, 0);
    offer(&mem, &q2, 0, &[0]);
    let used2 = q2.used_ring();
    let k2 = kick();
    dev.activate(
        mem.clone(),
        VERSION_1,
        ready(vec![(q2, k2.clone())]),
        interrupt,
    )
    .unwrap();
    k2.write(1).unwrap();
    wait_used(&mem, used2, 1);
    assert_eq!(used_elem(&mem, used2, 0), (0, 64));
    assert_eq!(used_idx(&mem, used_ring), 2, "the old ring stays untouched");
    drop(dev);
}

#[test]
fn rng_refuses_an_activation_without_exactly_one_queue() {
    let mut dev = Rng::new(SeccompMode::Kill).unwrap();
    let mem = create_guest_memory(16).unwrap();
    let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let two = ready(vec![(queue(0, 256), kick()), (queue(1, 256), kick())]);
    let e = dev
        .activate(mem.clone(), VERSION_1, two, irq.clone())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "activating rng: exactly one queue must be ready (2 are)"
    );
    let e = dev.activate(mem, VERSION_1, Vec::new(), irq).unwrap_err();
    assert!(e.to_string().contains("exactly one queue"), "{e}");
}
