//! Shared by the vhost-user tests: the daemon under test as a child that
//! is always reaped, and the guest driver's side of a split virtqueue
//! written straight into guest RAM.

#![allow(dead_code)] // each test file uses its own subset

use husk_vmm::devices::virtio::{Queue, QueueT, ReadyQueue};
use husk_vmm::memory::GuestMemoryMmap;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// The daemon binary from `env` or its default install path; None (and
/// the test prints SKIPPED) where it is not installed.
pub fn daemon(env: &str, default: &str) -> Option<PathBuf> {
    let p = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| default.into());
    if p.exists() {
        Some(p)
    } else {
        println!("SKIPPED: no daemon at {} (set {env})", p.display());
        None
    }
}

/// Kills and reaps the daemon however the test ends.
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn wait_for(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{what} {} did not appear",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub const QUEUE_SIZE: u16 = 16;
/// Descriptor flags (virtio 1.2, 2.7.5).
pub const DESC_NEXT: u16 = 1;
pub const DESC_WRITE: u16 = 2;

/// Queue `i` of a device whose largest queue is `max`: rings in their own
/// 64 KiB block from 1 MiB.
pub fn queue(i: u64, max: u16) -> Queue {
    let base = 0x10_0000 + i * 0x1_0000;
    let mut q = Queue::new(max).unwrap();
    q.try_set_size(QUEUE_SIZE).unwrap();
    q.try_set_desc_table_address(GuestAddress(base)).unwrap();
    q.try_set_avail_ring_address(GuestAddress(base + 0x1000))
        .unwrap();
    q.try_set_used_ring_address(GuestAddress(base + 0x2000))
        .unwrap();
    q.set_ready(true);
    q
}

/// Writes descriptor `index` of `q`.
pub fn descriptor(
    mem: &GuestMemoryMmap,
    q: &Queue,
    index: u16,
    addr: u64,
    len: u32,
    flags: u16,
    next: u16,
) {
    let d = q.desc_table() + 16 * u64::from(index);
    mem.write_obj(addr, GuestAddress(d)).unwrap();
    mem.write_obj(len, GuestAddress(d + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(d + 12)).unwrap();
    mem.write_obj(next, GuestAddress(d + 14)).unwrap();
}

/// Makes the chain starting at descriptor `head` available as entry 0.
pub fn make_available(mem: &GuestMemoryMmap, q: &Queue, head: u16) {
    mem.write_obj(head, GuestAddress(q.avail_ring() + 4))
        .unwrap();
    mem.write_obj(1u16, GuestAddress(q.avail_ring() + 2))
        .unwrap();
}

/// The used ring's idx and its first element (id, len).
pub fn used(mem: &GuestMemoryMmap, used_ring: u64) -> (u16, u32, u32) {
    (
        mem.read_obj(GuestAddress(used_ring + 2)).unwrap(),
        mem.read_obj(GuestAddress(used_ring + 4)).unwrap(),
        mem.read_obj(GuestAddress(used_ring + 8)).unwrap(),
    )
}

/// Queues as the transport hands them to `activate` when the driver made
/// all of them ready: indexed by their position.
pub fn ready(queues: Vec<(Queue, Arc<EventFd>)>) -> Vec<ReadyQueue> {
    queues
        .into_iter()
        .enumerate()
        .map(|(index, (queue, kick))| ReadyQueue { index, queue, kick })
        .collect()
}
