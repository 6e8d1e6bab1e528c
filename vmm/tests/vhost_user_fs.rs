//! The vhost-user frontend against the real virtiofsd, no KVM needed: the
//! test plays the guest's FUSE driver and sends FUSE_INIT down the request
//! queue; virtiofsd must answer it in guest memory and the answer must
//! raise the device's interrupt.

mod common;

use common::{daemon, descriptor, make_available, queue, ready, used, wait_for, Daemon};
use common::{DESC_NEXT, DESC_WRITE};
use husk_vmm::devices::virtio::vhost_user::{VhostUserDevice, VIRTIO_ID_FS};
use husk_vmm::devices::virtio::{Interrupt, QueueT, VirtioDevice, INT_VRING};
use husk_vmm::memory::create_guest_memory;
use husk_vmm::SeccompMode;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const VERSION_1: u64 = 1 << 32;
const FUSE_INIT: u32 = 26;

#[test]
fn virtiofsd_answers_fuse_init_through_guest_memory() {
    let Some(daemon) = daemon("HUSK_VIRTIOFSD", "/usr/local/bin/virtiofsd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let socket = dir.path().join("fs.sock");
    let _daemon = Daemon(
        Command::new(&daemon)
            .arg("--socket-path")
            .arg(&socket)
            .arg("--shared-dir")
            .arg(&shared)
            .args(["--sandbox", "none", "--cache", "never"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&socket, "virtiofsd socket");

    let mem = create_guest_memory(16).unwrap();
    let mut dev = VhostUserDevice::fs(&socket, "husk-share", SeccompMode::Kill).unwrap();
    assert_eq!(dev.device_type(), VIRTIO_ID_FS);
    assert_ne!(
        dev.features() & VERSION_1,
        0,
        "features {:#x}",
        dev.features()
    );
    let mut tag = [0u8; 12];
    dev.read_config(0, &mut tag);
    assert_eq!(&tag, b"husk-share\0\0");

    // FUSE_INIT on the request queue (1): a readable fuse_in_header +
    // fuse_init_in, then a writable buffer for the reply.
    let req = queue(1, 1024);
    let (request, reply) = (0x20_0000u64, 0x21_0000u64);
    let unique = 0x1234_5678u64;
    let mut msg = Vec::new();
    msg.extend_from_slice(&(40u32 + 64).to_le_bytes()); // len
    msg.extend_from_slice(&FUSE_INIT.to_le_bytes()); // opcode
    msg.extend_from_slice(&unique.to_le_bytes());
    msg.extend_from_slice(&[0; 24]); // nodeid, uid, gid, pid, extlen, pad
    msg.extend_from_slice(&7u32.to_le_bytes()); // major
    msg.extend_from_slice(&31u32.to_le_bytes()); // minor
    msg.extend_from_slice(&[0; 56]); // max_readahead, flags, flags2, unused
    assert_eq!(msg.len(), 104);
    mem.write_slice(&msg, GuestAddress(request)).unwrap();
    descriptor(&mem, &req, 0, request, msg.len() as u32, DESC_NEXT, 1);
    descriptor(&mem, &req, 1, reply, 4096, DESC_WRITE, 0);
    make_available(&mem, &req, 0);
    let used_ring = req.used_ring();

    let kicks: Vec<Arc<EventFd>> = (0..2)
        .map(|_| Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
        .collect();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Interrupt::new(irq.try_clone().unwrap());
    let queues = vec![(queue(0, 1024), kicks[0].clone()), (req, kicks[1].clone())];
    dev.activate(mem.clone(), VERSION_1, ready(queues), interrupt.clone())
        .unwrap();
    assert_eq!(dev.wait_activated(Duration::from_secs(10)), Some(Ok(())));
    kicks[1].write(1).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while irq.read().is_err() {
        assert!(
            Instant::now() < deadline,
            "no answer: used {:?}",
            used(&mem, used_ring)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_ne!(interrupt.status() & INT_VRING, 0);
    let (idx, id, len) = used(&mem, used_ring);
    assert_eq!((idx, id), (1, 0), "the request chain came back");
    // fuse_out_header: len, error, unique; then fuse_init_out.
    let out = |off: u64| GuestAddress(reply + off);
    let out_len: u32 = mem.read_obj(out(0)).unwrap();
    assert_eq!(out_len, len, "reply length = used length");
    assert_eq!(mem.read_obj::<i32>(out(4)).unwrap(), 0, "error");
    assert_eq!(
        mem.read_obj::<u64>(out(8)).unwrap(),
        unique,
        "unique echoed"
    );
    assert_eq!(
        mem.read_obj::<u32>(out(16)).unwrap(),
        7,
        "FUSE major version"
    );
    drop(dev);
}
