//! virtio-net on a real TAP device, no KVM needed: in a network namespace
//! of its own, the test plays the guest driver. A frame the "guest" puts
//! on the tx queue must come out of the TAP interface (seen by a packet
//! socket), and a frame sent into the interface must land in a guest rx
//! buffer behind a virtio_net_hdr with num_buffers = 1. After a driver
//! reset the old rings must stay untouched, and a second activation must
//! serve the new ones.

mod common;

use common::{descriptor, queue, ready, DESC_WRITE};
use husk_vmm::devices::virtio::net::{Net, VIRTIO_ID_NET};
use husk_vmm::devices::virtio::{Interrupt, Queue, QueueT, VirtioDevice};
use husk_vmm::memory::{create_guest_memory, GuestMemoryMmap};
use husk_vmm::SeccompMode;
use husk_vmm_config::tap::{open_tap, VNET_HDR_LEN};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

const TAP: &str = "husktap0";
const ETHERTYPE: u16 = 0x88b5; // IEEE local experimental: nothing else sends it
const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

fn frame(dst: [u8; 6], src: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ETHERTYPE.to_be_bytes());
    f.extend_from_slice(payload);
    f.resize(f.len().max(60), 0); // minimum Ethernet frame
    f
}

/// Brings `TAP` up and returns a packet socket bound to it.
fn packet_socket() -> std::io::Result<(OwnedFd, i32)> {
    let name = std::ffi::CString::new(TAP).unwrap();
    // SAFETY: plain socket/ioctl/bind calls on fds and structs we own.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        if ifindex == 0 {
            return Err(std::io::Error::last_os_error());
        }
        tap_ioctl(libc::SIOCSIFFLAGS, |ifr| {
            ifr.ifr_ifru.ifru_flags = (libc::IFF_UP | libc::IFF_NOARP) as i16;
        })?;
        let p = libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        );
        if p < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let p = OwnedFd::from_raw_fd(p);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        sll.sll_ifindex = ifindex;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        if libc::bind(
            p.as_raw_fd(),
            &sll as *const _ as *const libc::sockaddr,
            len,
        ) < 0
        {
            return Err(std::io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        let tvlen = std::mem::size_of::<libc::timeval>() as u32;
        libc::setsockopt(
            p.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &tv as *const _ as *const _,
            tvlen,
        );
        Ok((p, ifindex))
    }
}

/// Frames of our ethertype read from the packet socket within `timeout`.
fn receive_ours(p: &OwnedFd, timeout: Duration) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut found = Vec::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < deadline && found.is_empty() {
        // SAFETY: reading into a buffer we own.
        let n = unsafe { libc::recv(p.as_raw_fd(), buf.as_mut_ptr() as *mut _, buf.len(), 0) };
        if n >= 14 && buf[12..14] == ETHERTYPE.to_be_bytes() {
            found.push(buf[..n as usize].to_vec());
        }
    }
    found
}

fn wait_for_interrupt(irq: &EventFd, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while irq.read().is_err() {
        assert!(Instant::now() < deadline, "no interrupt for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// In a new network namespace for the calling thread: the TAP, up and
/// without IPv6 (no router solicitations into the guest's buffers), and a
/// packet socket bound to it with its ifindex. Err("SKIP ...") where
/// namespaces or TAPs are not allowed.
fn tap_in_own_netns() -> Result<(std::fs::File, OwnedFd, i32), String> {
    // SAFETY: affects only this (test) thread.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "SKIP unshare(CLONE_NEWNET): {}",
            std::io::Error::last_os_error()
        ));
    }
    let tap = open_tap(TAP).map_err(|e| format!("SKIP {e}"))?;
    let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{TAP}/disable_ipv6"), "1");
    let (packets, ifindex) = packet_socket().map_err(|e| format!("packet socket: {e}"))?;
    Ok((tap, packets, ifindex))
}

/// Runs `test` on a thread of its own: the network namespace is per
/// thread, and the device thread started from it inherits it.
fn in_own_thread(test: fn() -> Result<(), String>) {
    match std::thread::spawn(test).join().unwrap() {
        Err(e) if e.starts_with("SKIP ") => println!("SKIPPED: {}", &e[5..]),
        Err(e) => panic!("{e}"),
        Ok(()) => {}
    }
}

fn run_in_own_netns() -> Result<(), String> {
    let (tap, packets, ifindex) = tap_in_own_netns()?;

    let mut dev = Net::new(tap, GUEST_MAC, SeccompMode::Kill).map_err(|e| e.to_string())?;
    assert_eq!(dev.device_type(), VIRTIO_ID_NET);
    let mut mac = [0u8; 6];
    dev.read_config(0, &mut mac);
    assert_eq!(mac, GUEST_MAC, "MAC in config space");

    let mem = create_guest_memory(16).unwrap();
    let (rx, tx) = (queue(0, 256), queue(1, 256));
    rx_buffers(&mem, &rx, 0x20_0000, 4, 0x800);
    // tx: one frame behind a zero virtio_net_hdr_v1.
    let out = frame([0xff; 6], GUEST_MAC, b"husk-tx");
    let mut tx_buf = vec![0u8; VNET_HDR_LEN];
    tx_buf.extend_from_slice(&out);
    mem.write_slice(&tx_buf, GuestAddress(0x30_0000)).unwrap();
    descriptor(&mem, &tx, 0, 0x30_0000, tx_buf.len() as u32, 0, 0);
    mem.write_obj(0u16, GuestAddress(tx.avail_ring() + 4))
        .unwrap();
    mem.write_obj(1u16, GuestAddress(tx.avail_ring() + 2))
        .unwrap();
    let (rx_used, tx_used) = (rx.used_ring(), tx.used_ring());

    let kicks: Vec<Arc<EventFd>> = (0..2)
        .map(|_| Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
        .collect();
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let queues: Vec<(Queue, Arc<EventFd>)> = vec![(rx, kicks[0].clone()), (tx, kicks[1].clone())];
    dev.activate(
        mem.clone(),
        1 << 32,
        ready(queues),
        Interrupt::new(irq.try_clone().unwrap()),
    )
    .map_err(|e| e.to_string())?;
    kicks[1].write(1).unwrap();

    // Guest -> TAP.
    let seen = receive_ours(&packets, Duration::from_secs(5));
    assert_eq!(
        seen.first(),
        Some(&out),
        "the guest's frame came out of {TAP}"
    );
    // The device writes the TAP first, then returns the chain.
    let deadline = Instant::now() + Duration::from_secs(5);
    while mem.read_obj::<u16>(GuestAddress(tx_used + 2)).unwrap() != 1 {
        assert!(
            Instant::now() < deadline,
            "tx chain not returned to the guest"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    wait_for_interrupt(&irq, "tx");

    // TAP -> guest.
    let inbound = frame(GUEST_MAC, [0x02, 0, 0, 0, 0, 1], b"husk-rx");
    send_into_tap(&packets, ifindex, &inbound);
    let got = wait_for_ours(&mem, rx_used, 0x20_0000);
    assert_eq!(&got[VNET_HDR_LEN..], &inbound[..], "frame after the header");
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    wait_for_interrupt(&irq, "rx");

    // The driver resets the device: once reset() returns the old rings
    // are not touched, even with a frame waiting and buffers available.
    dev.reset();
    let rx_used_idx =
        |mem: &GuestMemoryMmap| mem.read_obj::<u16>(GuestAddress(rx_used + 2)).unwrap();
    let before = rx_used_idx(&mem);
    let after_reset = frame(GUEST_MAC, [0x02, 0, 0, 0, 0, 1], b"after-reset");
    send_into_tap(&packets, ifindex, &after_reset);
    kicks[0].write(1).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        rx_used_idx(&mem),
        before,
        "a reset device used the old rx ring"
    );

    // The driver sets the device up again with rings elsewhere: the frame
    // that waited in the TAP arrives there.
    let (rx2, tx2) = (queue(2, 256), queue(3, 256));
    let rx2_used = rx2.used_ring();
    rx_buffers(&mem, &rx2, 0x40_0000, 4, 0x800);
    let kicks2: Vec<Arc<EventFd>> = (0..2)
        .map(|_| Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()))
        .collect();
    dev.activate(
        mem.clone(),
        1 << 32,
        ready(vec![(rx2, kicks2[0].clone()), (tx2, kicks2[1].clone())]),
        Interrupt::new(irq.try_clone().unwrap()),
    )
    .map_err(|e| e.to_string())?;
    let got = wait_for_ours(&mem, rx2_used, 0x40_0000);
    assert_eq!(
        &got[VNET_HDR_LEN..],
        &after_reset[..],
        "the frame that waited"
    );
    assert_eq!(rx_used_idx(&mem), before, "the old rx ring stays untouched");
    drop(dev);
    Ok(())
}

/// `count` device-writable buffers of `size` bytes from `base`, all
/// available in `rx`.
fn rx_buffers(mem: &GuestMemoryMmap, rx: &Queue, base: u64, count: u16, size: u32) {
    for i in 0..count {
        descriptor(
            mem,
            rx,
            i,
            base + u64::from(i) * u64::from(size),
            size,
            DESC_WRITE,
            0,
        );
        mem.write_obj(i, GuestAddress(rx.avail_ring() + 4 + 2 * u64::from(i)))
            .unwrap();
    }
    mem.write_obj(count, GuestAddress(rx.avail_ring() + 2))
        .unwrap();
}

/// Sends `f` into the TAP interface from the host side.
fn send_into_tap(packets: &OwnedFd, ifindex: i32, f: &[u8]) {
    send_raw(packets, ifindex, f, 0);
}

/// The first frame of our ethertype the device put in the rx buffers at
/// `buffers` (see `rx_buffers`), header included; fails after 5 s.
fn wait_for_ours(mem: &GuestMemoryMmap, rx_used: u64, buffers: u64) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let idx: u16 = mem.read_obj(GuestAddress(rx_used + 2)).unwrap();
        let ours = (0..idx).find_map(|i| {
            let e = rx_used + 4 + 8 * u64::from(i);
            let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
            let mut b = vec![0u8; len as usize];
            mem.read_slice(&mut b, GuestAddress(buffers + u64::from(id) * 0x800))
                .unwrap();
            (b.len() > VNET_HDR_LEN + 14
                && b[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14] == ETHERTYPE.to_be_bytes())
            .then_some(b)
        });
        if let Some(b) = ours {
            return b;
        }
        assert!(
            Instant::now() < deadline,
            "no frame in the guest's rx buffers (used idx {idx})"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn frames_cross_between_guest_queues_and_a_tap_device() {
    in_own_thread(run_in_own_netns);
}

// Offloads. A 3000-byte TCP send with TSO metadata goes into the TAP from
// the host side (a packet socket with PACKET_VNET_HDR), as the pod
// network would hand the VM a large segment.

const GSO_PAYLOAD: usize = 3000;
const GSO_SIZE: u16 = 1000;
/// Ethernet + IPv4 + TCP headers.
const HEADERS: usize = 14 + 20 + 20;

/// An Ethernet frame carrying one IPv4/TCP segment of `payload` to the
/// guest's MAC.
fn tcp_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0]); // id, DF, ttl, TCP
    ip.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    let sum = ip
        .chunks(2)
        .fold(0u32, |a, w| a + u32::from(u16::from_be_bytes([w[0], w[1]])));
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    // ports 40000 -> 80, seq 1, ack 1, data offset 5, ACK|PSH, window.
    f.extend_from_slice(&[
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff,
    ]);
    f.extend_from_slice(&[0, 0, 0, 0]); // checksum (partial), urgent
    f.extend_from_slice(payload);
    f
}

/// A packet socket that takes a `virtio_net_hdr` (10 bytes) before each
/// frame it sends.
fn gso_socket() -> std::io::Result<OwnedFd> {
    // SAFETY: socket and setsockopt on values we own.
    unsafe {
        let p = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
        if p < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let p = OwnedFd::from_raw_fd(p);
        let on: libc::c_int = 1;
        const PACKET_VNET_HDR: libc::c_int = 15;
        if libc::setsockopt(
            p.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_VNET_HDR,
            &on as *const _ as *const _,
            std::mem::size_of::<libc::c_int>() as u32,
        ) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        Ok(p)
    }
}

/// Sends `frame` into the TAP as one TCPv4 segment to be cut into
/// `GSO_SIZE` pieces, its TCP checksum left to whoever segments it.
fn send_gso(sock: &OwnedFd, ifindex: i32, frame: &[u8]) {
    let mut b = vec![1u8, 1]; // NEEDS_CSUM, GSO_TCPV4
    b.extend_from_slice(&(HEADERS as u16).to_le_bytes());
    b.extend_from_slice(&GSO_SIZE.to_le_bytes());
    b.extend_from_slice(&34u16.to_le_bytes()); // csum_start: the TCP header
    b.extend_from_slice(&16u16.to_le_bytes()); // csum_offset: its checksum
    b.extend_from_slice(frame);
    send_raw(sock, ifindex, &b, 0x0800);
}

/// Sends `bytes` on packet socket `sock` out of interface `ifindex` to
/// the guest's MAC, as `protocol` (0: the socket's own).
fn send_raw(sock: &OwnedFd, ifindex: i32, bytes: &[u8], protocol: u16) {
    // SAFETY: sending a buffer we own to an address we built.
    let sent = unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = protocol.to_be();
        sll.sll_ifindex = ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&GUEST_MAC);
        libc::sendto(
            sock.as_raw_fd(),
            bytes.as_ptr() as *const _,
            bytes.len(),
            0,
            &sll as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(
        sent,
        bytes.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

/// An interface ioctl on `TAP`, its ifreq filled in by `fill`.
fn tap_ioctl(request: libc::c_ulong, fill: impl FnOnce(&mut libc::ifreq)) -> std::io::Result<()> {
    // SAFETY: a socket we own, and an ifreq we own carrying the name.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let s = OwnedFd::from_raw_fd(s);
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in TAP.bytes().enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        fill(&mut ifr);
        if libc::ioctl(s.as_raw_fd(), request, &mut ifr) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn set_tap_mtu(mtu: i32) {
    tap_ioctl(libc::SIOCSIFMTU, |ifr| ifr.ifr_ifru.ifru_mtu = mtu).expect("SIOCSIFMTU");
}

/// Whether the TAP does TCP segmentation offload now (ETHTOOL_GTSO): it
/// hands its reader whole segments only then.
fn tap_tso() -> bool {
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    let mut v = EthtoolValue { cmd: 0x1e, data: 0 };
    // The kernel writes the answer into `v` through the ifreq's pointer.
    tap_ioctl(libc::SIOCETHTOOL, |ifr| {
        ifr.ifr_ifru.ifru_data = &mut v as *mut EthtoolValue as *mut libc::c_char;
    })
    .expect("ETHTOOL_GTSO");
    v.data != 0
}

/// The first `want` frames in `rx`'s used ring, each with its header,
/// from one-descriptor buffers of `size` bytes at `base`.
fn wait_for_frames(
    mem: &GuestMemoryMmap,
    rx_used: u64,
    base: u64,
    size: u64,
    want: u16,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while mem.read_obj::<u16>(GuestAddress(rx_used + 2)).unwrap() < want {
        assert!(
            Instant::now() < deadline,
            "fewer than {want} frames arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    (0..u64::from(want))
        .map(|i| {
            let e = rx_used + 4 + 8 * i;
            let id: u32 = mem.read_obj(GuestAddress(e)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(e + 4)).unwrap();
            let mut b = vec![0u8; len as usize];
            mem.read_slice(&mut b, GuestAddress(base + u64::from(id) * size))
                .unwrap();
            b
        })
        .collect()
}

fn offloads_in_own_netns() -> Result<(), String> {
    let (tap, packets, ifindex) = tap_in_own_netns()?;
    let gso = gso_socket().map_err(|e| format!("PACKET_VNET_HDR socket: {e}"))?;
    let mut dev = Net::new(tap, GUEST_MAC, SeccompMode::Kill).map_err(|e| e.to_string())?;
    let offered = dev.features();
    for bit in [0, 1, 7, 8, 11, 12] {
        assert_ne!(offered & (1 << bit), 0, "feature bit {bit} offered");
    }
    let mem = create_guest_memory(16).unwrap();
    let payload: Vec<u8> = (0..GSO_PAYLOAD).map(|i| (i % 251) as u8).collect();
    let segment = tcp_frame(&payload);
    let kick = || Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    let irq = || Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());

    // A driver without offloads: the segment reaches it cut into
    // GSO_SIZE pieces with plain headers.
    let (rx, tx) = (queue(0, 256), queue(1, 256));
    let rx_used = rx.used_ring();
    rx_buffers(&mem, &rx, 0x20_0000, 8, 0x800);
    dev.activate(
        mem.clone(),
        1 << 32,
        ready(vec![(rx, kick()), (tx, kick())]),
        irq(),
    )
    .map_err(|e| e.to_string())?;
    assert!(!tap_tso(), "no TSO on the TAP for a driver without it");
    // First a plain frame larger than the driver's 2 KiB buffers (the
    // link's MTU allows it): dropped, not truncated into a buffer.
    set_tap_mtu(4000);
    send_into_tap(
        &packets,
        ifindex,
        &frame(GUEST_MAC, [0x02, 0, 0, 0, 0, 1], &[7u8; 3000]),
    );
    send_gso(&gso, ifindex, &segment);
    let frames = wait_for_frames(&mem, rx_used, 0x20_0000, 0x800, 3);
    let mut joined = Vec::new();
    for f in &frames {
        assert_eq!(f.len(), VNET_HDR_LEN + HEADERS + usize::from(GSO_SIZE));
        assert_eq!(&f[..2], &[0, 0], "flags and gso_type: a plain frame");
        joined.extend_from_slice(&f[VNET_HDR_LEN + HEADERS..]);
    }
    assert_eq!(joined, payload, "the pieces carry the payload in order");
    dev.reset();

    // A driver that takes checksum offload and TSO4, with 64 KiB
    // buffers: the segment arrives whole, its metadata in the header.
    let (rx, tx) = (queue(2, 256), queue(3, 256));
    let rx_used = rx.used_ring();
    rx_buffers(&mem, &rx, 0x40_0000, 4, 0x1_0000);
    let tso4 = (1 << 32) | (1 << 1) | (1 << 7);
    dev.activate(
        mem.clone(),
        tso4,
        ready(vec![(rx, kick()), (tx, kick())]),
        irq(),
    )
    .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !tap_tso() {
        assert!(Instant::now() < deadline, "the TAP's TSO stayed off");
        std::thread::sleep(Duration::from_millis(5));
    }
    send_gso(&gso, ifindex, &segment);
    let frames = wait_for_frames(&mem, rx_used, 0x40_0000, 0x1_0000, 1);
    let f = &frames[0];
    assert_eq!(f.len(), VNET_HDR_LEN + segment.len(), "one whole segment");
    assert_eq!(f[0] & 1, 1, "NEEDS_CSUM: the guest finishes the checksum");
    assert_eq!(f[1], 1, "gso_type TCPV4");
    assert_eq!(u16::from_le_bytes([f[4], f[5]]), GSO_SIZE, "gso_size");
    assert_eq!(&f[VNET_HDR_LEN + HEADERS..], &payload[..]);

    // A reset takes the offloads back: the next driver may not want them.
    dev.reset();
    assert!(!tap_tso(), "TSO still on after the reset");
    drop(dev);
    Ok(())
}

#[test]
fn offloads_follow_the_drivers_features_and_end_with_a_reset() {
    in_own_thread(offloads_in_own_netns);
}
