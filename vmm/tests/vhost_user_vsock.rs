//! The vhost-user frontend against the real vhost-device-vsock daemon, no
//! KVM needed: the test plays the guest driver, laying out the three vsock
//! queues in memfd guest RAM with a receive buffer, activates the device,
//! and has a host client connect through the daemon's hybrid-vsock socket.
//! The daemon must write the connection request into the guest's buffer
//! and signal it, which must come out as InterruptStatus + irqfd. Then
//! the driver resets the device and sets it up again elsewhere: the old
//! rings must stay untouched and the new ones served.

use husk_vmm::devices::virtio::vhost_user::{VhostUserDevice, VIRTIO_ID_VSOCK};
use husk_vmm::devices::virtio::{Interrupt, QueueT, VirtioDevice, INT_VRING};
use husk_vmm::memory::create_guest_memory;
use husk_vmm::SeccompMode;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

mod common;

use common::{
    daemon, descriptor, make_available, queue, ready, used, wait_for, Daemon, DESC_WRITE,
};

const VERSION_1: u64 = 1 << 32;

#[test]
fn vsock_daemon_delivers_a_host_connection_into_guest_memory_and_survives_a_reset() {
    let Some(daemon) = daemon(
        "HUSK_VHOST_DEVICE_VSOCK",
        "/usr/local/bin/vhost-device-vsock",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vhost.sock");
    let uds = dir.path().join("vm.vsock");
    let _daemon = Daemon(
        Command::new(&daemon)
            .arg("--guest-cid")
            .arg("3")
            .arg("--socket")
            .arg(&socket)
            .arg("--uds-path")
            .arg(&uds)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_for(&socket, "vhost-user socket");

    let mem = create_guest_memory(16).unwrap();
    let mut dev = VhostUserDevice::vsock(&socket, SeccompMode::Kill).unwrap();
    assert_eq!(dev.device_type(), VIRTIO_ID_VSOCK);
    assert_ne!(
        dev.features() & VERSION_1,
        0,
        "features {:#x}",
        dev.features()
    );
    assert_eq!(
        dev.features() & (1 << 30),
        0,
        "vhost-user's own bit is not offered"
    );
    let mut cid = [0u8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(
        u64::from_le_bytes(cid),
        3,
        "guest_cid from the daemon's config space"
    );

    // The guest driver's part: one 4 KiB device-writable buffer in the
    // receive queue (0): descriptor 0, avail ring idx 1 with entry 0.
    let rx = queue(0, 256);
    let buffer = 0x20_0000u64;
    descriptor(&mem, &rx, 0, buffer, 4096, DESC_WRITE, 0);
    make_available(&mem, &rx, 0);
    let used_ring = rx.used_ring();
    let rx_old = queue(0, 256); // the same rings, for writing them later

    let kicks = kick_fds();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let interrupt = Interrupt::new(irq.try_clone().unwrap());
    let queues = vec![
        (rx, kicks[0].clone()),
        (queue(1, 256), kicks[1].clone()),
        (queue(2, 256), kicks[2].clone()),
    ];
    dev.activate(mem.clone(), VERSION_1, ready(queues), interrupt.clone())
        .unwrap();
    // The device thread sets the daemon up after `activate` returns; until
    // the rings are enabled the daemon has nowhere to put a connection.
    assert_eq!(dev.wait_activated(Duration::from_secs(10)), Some(Ok(())));
    kicks[0].write(1).unwrap();

    // A host client asks for guest port 1024 (hybrid vsock).
    wait_for(&uds, "hybrid vsock socket");
    let mut client = std::os::unix::net::UnixStream::connect(&uds).unwrap();
    client.write_all(b"CONNECT 1024\n").unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    while irq.read().is_err() {
        assert!(
            Instant::now() < deadline,
            "no interrupt from the daemon (used idx {})",
            used(&mem, used_ring).0
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_ne!(
        interrupt.status() & INT_VRING,
        0,
        "InterruptStatus has the used-ring bit"
    );
    let (used_idx, used_id, used_len) = used(&mem, used_ring);
    assert_eq!((used_idx, used_id), (1, 0), "our descriptor came back");
    assert!(used_len >= 44, "a whole virtio_vsock_hdr: {used_len}");
    // struct virtio_vsock_hdr (virtio 1.2, 5.10.6).
    let hdr = |off: u64| GuestAddress(buffer + off);
    assert_eq!(mem.read_obj::<u64>(hdr(0)).unwrap(), 2, "src_cid: the host");
    assert_eq!(
        mem.read_obj::<u64>(hdr(8)).unwrap(),
        3,
        "dst_cid: the guest"
    );
    assert_eq!(mem.read_obj::<u32>(hdr(20)).unwrap(), 1024, "dst_port");
    assert_eq!(mem.read_obj::<u16>(hdr(28)).unwrap(), 1, "type: stream");
    assert_eq!(mem.read_obj::<u16>(hdr(30)).unwrap(), 1, "op: request");

    // The driver resets the device. Once reset() returns the daemon has
    // stopped its rings: a fresh buffer and a kick on the old receive
    // queue leave it untouched. (No host connection meanwhile:
    // vhost-device-vsock 0.3's worker ends on a connection it cannot
    // queue while its rings are stopped.)
    dev.reset();
    descriptor(&mem, &rx_old, 1, buffer + 0x1000, 4096, DESC_WRITE, 0);
    mem.write_obj(1u16, GuestAddress(rx_old.avail_ring() + 6))
        .unwrap();
    mem.write_obj(2u16, GuestAddress(rx_old.avail_ring() + 2))
        .unwrap();
    kicks[0].write(1).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        used(&mem, used_ring).0,
        1,
        "a reset device used the old ring"
    );

    // Set up again with rings elsewhere: the daemon serves the new ones.
    let rx2 = queue(3, 256);
    let buffers2 = 0x30_0000u64;
    for i in 0..4u16 {
        let addr = buffers2 + u64::from(i) * 0x1000;
        descriptor(&mem, &rx2, i, addr, 4096, DESC_WRITE, 0);
        mem.write_obj(i, GuestAddress(rx2.avail_ring() + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    mem.write_obj(4u16, GuestAddress(rx2.avail_ring() + 2))
        .unwrap();
    let used2 = rx2.used_ring();
    let kicks2 = kick_fds();
    let queues = vec![
        (rx2, kicks2[0].clone()),
        (queue(4, 256), kicks2[1].clone()),
        (queue(5, 256), kicks2[2].clone()),
    ];
    dev.activate(mem.clone(), VERSION_1, ready(queues), interrupt.clone())
        .unwrap();
    assert_eq!(dev.wait_activated(Duration::from_secs(10)), Some(Ok(())));
    kicks2[0].write(1).unwrap();
    let mut client2 = std::os::unix::net::UnixStream::connect(&uds).unwrap();
    client2.write_all(b"CONNECT 1025\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let request_for = |port: u32| {
        let idx: u16 = mem.read_obj(GuestAddress(used2 + 2)).unwrap();
        (0..idx).any(|i| {
            let id: u32 = mem
                .read_obj(GuestAddress(used2 + 4 + 8 * u64::from(i)))
                .unwrap();
            let hdr = buffers2 + u64::from(id) * 0x1000;
            mem.read_obj::<u32>(GuestAddress(hdr + 20)).unwrap() == port
                && mem.read_obj::<u16>(GuestAddress(hdr + 30)).unwrap() == 1
        })
    };
    while !request_for(1025) {
        assert!(
            Instant::now() < deadline,
            "no request for port 1025 in the new ring (used idx {})",
            used(&mem, used2).0
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(used(&mem, used_ring).0, 1, "the old ring stays untouched");
    drop((client, client2));
    drop(dev); // ends the device thread
}

fn kick_fds() -> Vec<Arc<EventFd>> {
    (0..3)
        .map(|_| Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
        .collect()
}
