//! virtio-net on a TAP device, in process: the one device the VMM runs
//! itself (there is no vhost-net on the build hosts and a vhost-user net
//! daemon would be one more process per pod). One queue pair; frames are
//! copied between the TAP fd and guest memory by the device's own thread.
//!
//! Offloads: checksum and TSO both ways, which is what makes TCP fast in a
//! VM (one 64 KiB segment crosses instead of forty-odd frames). They cost
//! nothing here because the TAP does the work: the vnet header travels
//! with each frame, and TUNSETOFFLOAD tells the TAP which offloaded frames
//! the guest driver accepted (none until it says so, and none again after
//! a reset). Without mergeable rx buffers, a driver that takes TSO posts
//! 64 KiB "big packet" chains; a frame that does not fit the chain it
//! would go to is dropped, not truncated.
//!
//! The TAP carries the 12-byte `virtio_net_hdr_v1` itself (IFF_VNET_HDR,
//! see [`husk_vmm_config::tap`]), so a frame is one read or write on both sides.

use super::worker::{Next, Worker, WorkerEnd};
use super::{
    ActivateError, Interrupt, PauseError, Queue, QueuePosition, QueueT, ReadyQueue, VirtioDevice,
};
use crate::memory::GuestMemoryMmap;
use crate::security::seccomp::{self, SeccompMode, ThreadKind};
pub use husk_vmm_config::tap::VNET_HDR_LEN;
use husk_vmm_config::tap::{set_offloads, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use virtio_queue::QueueOwnedT;
use vm_memory::Bytes;

pub const VIRTIO_ID_NET: u32 = 1;
/// Feature bits (virtio 1.2, 5.1.3).
pub const VIRTIO_NET_F_CSUM: u64 = 1 << 0;
pub const VIRTIO_NET_F_GUEST_CSUM: u64 = 1 << 1;
/// The device has a MAC address in its config space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
pub const VIRTIO_NET_F_GUEST_TSO4: u64 = 1 << 7;
pub const VIRTIO_NET_F_GUEST_TSO6: u64 = 1 << 8;
pub const VIRTIO_NET_F_HOST_TSO4: u64 = 1 << 11;
pub const VIRTIO_NET_F_HOST_TSO6: u64 = 1 << 12;
/// Everything this device offers.
pub const FEATURES: u64 = VIRTIO_NET_F_MAC
    | VIRTIO_NET_F_CSUM
    | VIRTIO_NET_F_GUEST_CSUM
    | VIRTIO_NET_F_GUEST_TSO4
    | VIRTIO_NET_F_GUEST_TSO6
    | VIRTIO_NET_F_HOST_TSO4
    | VIRTIO_NET_F_HOST_TSO6;

/// The TAP offloads (TUN_F_*) that match the guest driver's features:
/// what the guest takes from the TAP. The other direction needs no
/// setting: the TAP always takes offloaded frames with a vnet header.
pub fn tap_offloads(acked: u64) -> u32 {
    if acked & VIRTIO_NET_F_GUEST_CSUM == 0 {
        // TSO without checksum offload is not a thing (5.1.3.1).
        return 0;
    }
    let mut flags = TUN_F_CSUM;
    if acked & VIRTIO_NET_F_GUEST_TSO4 != 0 {
        flags |= TUN_F_TSO4;
    }
    if acked & VIRTIO_NET_F_GUEST_TSO6 != 0 {
        flags |= TUN_F_TSO6;
    }
    flags
}
/// Largest frame with its header: 64 KiB payload + Ethernet + VLAN.
pub(crate) const MAX_FRAME: usize = VNET_HDR_LEN + 65_550;
const RX: usize = 0;
const TX: usize = 1;

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("virtio-net: starting its thread: {0}")]
    Thread(#[source] std::io::Error),
}

struct Activation {
    mem: GuestMemoryMmap,
    features: u64,
    rx: ReadyQueue,
    tx: ReadyQueue,
    interrupt: Interrupt,
}

pub struct Net {
    mac: [u8; 6],
    worker: Worker<Activation>,
}

impl Net {
    /// A device on `tap` with MAC address `mac`. Its thread starts now,
    /// before any seccomp filter, and hardens itself (no capabilities, its
    /// own filter) before it waits for the activation.
    pub fn new(tap: File, mac: [u8; 6], seccomp: SeccompMode) -> Result<Self, NetError> {
        let worker = Worker::spawn("virtio-net".into(), move |end| {
            if let Err(e) = seccomp::harden_thread(ThreadKind::DeviceIo, seccomp) {
                tracing::error!("virtio-net: {e}");
                return;
            }
            let mut tap = tap;
            while let Some(act) = end.wait_activation() {
                // The queues were dropped with io_loop's frame.
                let (next, positions) = io_loop(&mut tap, act, &end);
                if !end.after_serving(next, positions) {
                    return;
                }
            }
        })
        .map_err(NetError::Thread)?;
        Ok(Net { mac, worker })
    }
}

impl VirtioDevice for Net {
    fn name(&self) -> &'static str {
        "net"
    }
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 256]
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            if let Some(v) = self.mac.get(offset as usize + i) {
                *b = *v;
            }
        }
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        features: u64,
        queues: Vec<ReadyQueue>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        let ready = queues.len();
        let mut queues = queues.into_iter();
        let (rx, tx) = match (queues.next(), queues.next(), queues.next()) {
            (Some(rx), Some(tx), None) if (rx.index, tx.index) == (RX, TX) => (rx, tx),
            _ => {
                return Err(ActivateError::Queues {
                    device: "net",
                    ready,
                    needed: "rx and tx must be ready",
                })
            }
        };
        self.worker.activate_device(
            "net",
            Activation {
                mem,
                features,
                rx,
                tx,
                interrupt,
            },
        )
    }
    fn reset(&mut self) {
        // Frames the guest had queued and not yet sent are dropped, as on
        // real hardware; the TAP keeps what arrives until the next
        // activation.
        if !self.worker.reset() {
            tracing::error!("net: the device thread did not stop in time for the reset");
        }
    }
    fn pause(&mut self) -> Result<Vec<QueuePosition>, PauseError> {
        // Frames in the TAP stay there; a clone has a TAP of its own.
        self.worker
            .pause()
            .map_err(|source| PauseError::ThreadGone {
                device: "net",
                source,
            })
    }
}

/// Moves frames until the driver resets the device, it pauses or is
/// dropped (which of these it returns, with where it was in rx and tx):
/// guest tx chains to the TAP, TAP frames into guest rx chains. The TAP is
/// polled only while the guest has rx buffers, so a full guest does not
/// spin this thread.
fn io_loop(
    tap: &mut File,
    act: Activation,
    end: &WorkerEnd<Activation>,
) -> (Next, Vec<QueuePosition>) {
    let Activation {
        mem,
        features,
        rx,
        tx,
        interrupt,
    } = act;
    let offloads = tap_offloads(features);
    if let Err(e) = set_offloads(tap, offloads) {
        // The TAP then hands over only plain frames: slower, still right.
        tracing::warn!("net: TUNSETOFFLOAD {offloads:#x}: {e}");
    }
    let (mut tx_q, tx_kick) = (tx.queue, tx.kick);
    let (mut rx_q, rx_kick) = (rx.queue, rx.kick);
    let mut frame = vec![0u8; MAX_FRAME];
    // The writable buffers of the rx chain at hand; kept to reuse its
    // allocation.
    let mut bufs: Vec<(vm_memory::GuestAddress, usize)> = Vec::with_capacity(32);
    let mut rx_blocked = false;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: tx_kick.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: rx_kick.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: tap.as_raw_fd(),
                events: if rx_blocked { 0 } else { libc::POLLIN },
                revents: 0,
            },
            libc::pollfd {
                fd: end.wake_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid pollfd array of its length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if fds[3].revents & libc::POLLIN != 0 {
            let next = end.next();
            if next != Next::Serve {
                // A reset driver, or the next one, may not take offloaded
                // frames.
                if let Err(e) = set_offloads(tap, 0) {
                    tracing::warn!("net: clearing the TAP's offloads: {e}");
                }
                let positions = vec![QueuePosition::of(RX, &rx_q), QueuePosition::of(TX, &tx_q)];
                return (next, positions);
            }
        }
        if fds[0].revents & libc::POLLIN != 0 {
            let _ = tx_kick.read();
        }
        // Transmit whatever the guest queued (also without a kick: cheap).
        let mut used = transmit(&mem, &mut tx_q, &mut frame, tap);
        if fds[1].revents & libc::POLLIN != 0 {
            let _ = rx_kick.read();
            rx_blocked = false;
        }
        if !rx_blocked {
            let rx = receive(&mem, &mut rx_q, &mut frame, &mut bufs, tap);
            used |= rx.used;
            rx_blocked = rx.guest_full;
        }
        if used {
            let _ = interrupt.signal_used_queue();
        }
    }
}

/// Sends every chain the guest queued on `tx_q` to `tap`, each as one
/// frame (its readable buffers, at most `frame.len()` bytes, the vnet
/// header first); a chain of no more than a header is dropped. Every chain
/// goes back to the guest used. True if any did.
pub(crate) fn transmit(
    mem: &GuestMemoryMmap,
    tx_q: &mut Queue,
    frame: &mut [u8],
    tap: &mut impl Write,
) -> bool {
    let mut used = false;
    while let Some(chain) = tx_q.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let mut len = 0;
        for d in chain.readable() {
            let n = (d.len() as usize).min(frame.len() - len);
            if mem.read_slice(&mut frame[len..len + n], d.addr()).is_err() {
                break;
            }
            len += n;
        }
        if len > VNET_HDR_LEN {
            if let Err(e) = tap.write(&frame[..len]) {
                tracing::debug!("net: tx of {len} bytes dropped: {e}");
            }
        }
        let _ = tx_q.add_used(mem, head, 0);
        used = true;
    }
    used
}

/// What one [`receive`] did.
pub(crate) struct Received {
    /// Some chain went back to the guest used.
    pub used: bool,
    /// The guest has no rx chain left: stop reading the TAP until it
    /// kicks rx.
    pub guest_full: bool,
}

/// Moves frames from `tap` into the guest's rx chains while both have
/// some: each frame into one chain's writable buffers (`bufs` keeps their
/// list, reused); a frame larger than the chain is dropped and the chain
/// takes the next one.
pub(crate) fn receive(
    mem: &GuestMemoryMmap,
    rx_q: &mut Queue,
    frame: &mut [u8],
    bufs: &mut Vec<(vm_memory::GuestAddress, usize)>,
    tap: &mut impl Read,
) -> Received {
    let mut used = false;
    loop {
        let Some(chain) = rx_q.pop_descriptor_chain(mem) else {
            return Received {
                used,
                guest_full: true,
            };
        };
        let head = chain.head_index();
        bufs.clear();
        bufs.extend(chain.writable().map(|d| (d.addr(), d.len() as usize)));
        let n = match tap.read(frame) {
            Ok(n) => n,
            Err(_) => {
                // Nothing to read (EAGAIN): give the chain back.
                rx_q.go_to_previous_position();
                return Received {
                    used,
                    guest_full: false,
                };
            }
        };
        if n > bufs.iter().map(|(_, len)| len).sum() {
            // A frame larger than the buffers the driver posts for
            // it (it did not take TSO, yet the frame is large):
            // dropped, as a NIC drops it; the chain takes the next.
            tracing::debug!("net: rx frame of {n} bytes does not fit; dropped");
            rx_q.go_to_previous_position();
            continue;
        }
        // Without VIRTIO_NET_F_MRG_RXBUF every frame is one buffer.
        frame[10..12].copy_from_slice(&1u16.to_le_bytes());
        let mut written = 0;
        for (addr, len) in bufs.iter() {
            let m = (*len).min(n - written);
            if m == 0
                || mem
                    .write_slice(&frame[written..written + m], *addr)
                    .is_err()
            {
                break;
            }
            written += m;
        }
        let _ = rx_q.add_used(mem, head, written as u32);
        used = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_offloads_follow_the_guest_features_and_need_checksum_offload() {
        assert_eq!(tap_offloads(0), 0);
        assert_eq!(tap_offloads(VIRTIO_NET_F_GUEST_CSUM), TUN_F_CSUM);
        assert_eq!(tap_offloads(FEATURES), TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6);
        // TSO without GUEST_CSUM: nothing (the TAP refuses it too).
        assert_eq!(tap_offloads(VIRTIO_NET_F_GUEST_TSO4), 0);
        // Host-side offloads ask nothing of the TAP.
        assert_eq!(tap_offloads(VIRTIO_NET_F_CSUM | VIRTIO_NET_F_HOST_TSO4), 0);
    }

    /// A paused device reports where it is in rx and tx: here after one
    /// frame sent. The "TAP" is one end of a datagram socket pair (it
    /// refuses TUNSETOFFLOAD, which the device only logs).
    #[test]
    fn pause_reports_where_rx_and_tx_are() {
        use crate::memory::create_guest_memory;
        use std::os::unix::net::UnixDatagram;
        use std::sync::Arc;
        use vm_memory::{Bytes, GuestAddress};
        use vmm_sys_util::eventfd::EventFd;
        let (tap, host) = UnixDatagram::pair().unwrap();
        host.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let tap = File::from(std::os::fd::OwnedFd::from(tap));
        let mut net = Net::new(tap, [2, 0, 0, 0, 0, 1], SeccompMode::Off).unwrap();
        let mem = create_guest_memory(16).unwrap();
        let queue = |index: usize| {
            let base = 0x10_0000 + index as u64 * 0x1_0000;
            let mut q = Queue::new(256).unwrap();
            q.try_set_size(16).unwrap();
            q.try_set_desc_table_address(GuestAddress(base)).unwrap();
            q.try_set_avail_ring_address(GuestAddress(base + 0x1000))
                .unwrap();
            q.try_set_used_ring_address(GuestAddress(base + 0x2000))
                .unwrap();
            q.set_ready(true);
            ReadyQueue {
                index,
                queue: q,
                kick: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            }
        };
        let (rx, tx) = (queue(RX), queue(TX));
        // tx descriptor 0: a 64-byte frame at 0x20_0000, made available.
        let desc = tx.queue.desc_table();
        mem.write_obj(0x20_0000u64, GuestAddress(desc)).unwrap();
        mem.write_obj(64u32, GuestAddress(desc + 8)).unwrap();
        mem.write_obj(1u16, GuestAddress(tx.queue.avail_ring() + 2))
            .unwrap();
        let kick = tx.kick.clone();
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        net.activate(mem, FEATURES, vec![rx, tx], irq).unwrap();
        kick.write(1).unwrap();
        let mut frame = [0u8; 128];
        assert_eq!(host.recv(&mut frame).unwrap(), 64, "the frame was sent");
        let positions = net.pause().unwrap();
        assert_eq!(
            positions,
            [
                QueuePosition {
                    index: RX,
                    next_avail: 0,
                    next_used: 0
                },
                QueuePosition {
                    index: TX,
                    next_avail: 1,
                    next_used: 1
                }
            ]
        );
    }
}
