//! virtio-net on a TAP device, in process: the one device the VMM runs
//! itself (there is no vhost-net on the build hosts and a vhost-user net
//! daemon would be one more process per pod). Deliberately plain: no
//! offloads, no mergeable buffers, one queue pair; frames are copied
//! between the TAP fd and guest memory by the device's own thread.
//!
//! The TAP carries the 12-byte `virtio_net_hdr_v1` itself (IFF_VNET_HDR),
//! so a frame is one read or write on both sides.

use super::worker::{Next, Worker, WorkerEnd};
use super::{ActivateError, Interrupt, Queue, QueueT, VirtioDevice};
use crate::builtin::memory::GuestMemoryMmap;
use crate::builtin::seccomp::{self, SeccompMode, ThreadKind};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use virtio_queue::QueueOwnedT;
use vm_memory::Bytes;
use vmm_sys_util::eventfd::EventFd;

pub const VIRTIO_ID_NET: u32 = 1;
/// Feature bit: the device has a MAC address in its config space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// `virtio_net_hdr_v1`: flags, gso_type, hdr_len, gso_size, csum_start,
/// csum_offset, num_buffers.
pub const VNET_HDR_LEN: usize = 12;
/// Largest frame with its header: 64 KiB payload + Ethernet + VLAN.
const MAX_FRAME: usize = VNET_HDR_LEN + 65_550;
const RX: usize = 0;
const TX: usize = 1;

vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, b'T' as u32, 202, libc::c_int);
vmm_sys_util::ioctl_iow_nr!(TUNSETOFFLOAD, b'T' as u32, 208, libc::c_uint);
vmm_sys_util::ioctl_iow_nr!(TUNSETVNETHDRSZ, b'T' as u32, 216, libc::c_int);

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("TAP {name:?}: interface names are 1 to 15 bytes")]
    Name { name: String },
    #[error("TAP {name}: {what}: {error}")]
    Tap {
        name: String,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("virtio-net: starting its thread: {0}")]
    Thread(std::io::Error),
}

/// Opens (or creates) TAP interface `name` in the caller's network
/// namespace, with the vnet header on and every offload off.
pub fn open_tap(name: &str) -> Result<File, NetError> {
    if name.is_empty() || name.len() > 15 || name.contains('\0') {
        return Err(NetError::Name { name: name.into() });
    }
    let err = |what| {
        move |error| NetError::Tap {
            name: name.into(),
            what,
            error,
        }
    };
    let path = c"/dev/net/tun";
    // SAFETY: a valid C string and flags.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(err("opening /dev/net/tun")(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let tap = unsafe { File::from_raw_fd(fd) };
    // struct ifreq: the name, then the flags (a short) in the union.
    let mut ifreq = [0u8; 40];
    ifreq[..name.len()].copy_from_slice(name.as_bytes());
    let flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
    ifreq[16..18].copy_from_slice(&flags.to_le_bytes());
    let hdr_len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: the ioctls read an ifreq / an int / an unsigned we own.
    unsafe {
        if libc::ioctl(tap.as_raw_fd(), TUNSETIFF() as _, ifreq.as_mut_ptr()) < 0 {
            return Err(err("TUNSETIFF")(std::io::Error::last_os_error()));
        }
        if libc::ioctl(tap.as_raw_fd(), TUNSETVNETHDRSZ() as _, &hdr_len) < 0 {
            return Err(err("TUNSETVNETHDRSZ")(std::io::Error::last_os_error()));
        }
        if libc::ioctl(tap.as_raw_fd(), TUNSETOFFLOAD() as _, 0 as libc::c_uint) < 0 {
            return Err(err("TUNSETOFFLOAD")(std::io::Error::last_os_error()));
        }
    }
    Ok(tap)
}

struct Activation {
    mem: GuestMemoryMmap,
    queues: Vec<(Queue, Arc<EventFd>)>,
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
                match io_loop(&mut tap, act, &end) {
                    // The queues were dropped with io_loop's frame.
                    Next::Reset => end.ack_reset(),
                    _ => return,
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
        VIRTIO_NET_F_MAC
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
        _features: u64,
        queues: Vec<(Queue, Arc<EventFd>)>,
        interrupt: Interrupt,
    ) -> Result<(), ActivateError> {
        if queues.len() != 2 {
            return Err(ActivateError {
                device: "net",
                reason: format!("{} queues ready, rx and tx needed", queues.len()),
            });
        }
        let gone = || ActivateError {
            device: "net",
            reason: "its thread has ended".into(),
        };
        self.worker
            .activate(Activation {
                mem,
                queues,
                interrupt,
            })
            .map_err(|_| gone())
    }
    fn reset(&mut self) {
        // Frames the guest had queued and not yet sent are dropped, as on
        // real hardware; the TAP keeps what arrives until the next
        // activation.
        if !self.worker.reset() {
            tracing::error!("net: the device thread did not stop in time for the reset");
        }
    }
}

/// Moves frames until the driver resets the device or the device is
/// dropped (which of the two it returns): guest tx chains to the TAP, TAP
/// frames into guest rx chains. The TAP is polled only while the guest has
/// rx buffers, so a full guest does not spin this thread.
fn io_loop(tap: &mut File, act: Activation, end: &WorkerEnd<Activation>) -> Next {
    let Activation {
        mem,
        mut queues,
        interrupt,
    } = act;
    let (mut tx_q, tx_kick) = queues.remove(TX);
    let (mut rx_q, rx_kick) = queues.remove(RX);
    let mut frame = vec![0u8; MAX_FRAME];
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
            match end.next() {
                Next::Serve => {}
                stop => return stop,
            }
        }
        let mut used = false;
        if fds[0].revents & libc::POLLIN != 0 {
            let _ = tx_kick.read();
        }
        // Transmit whatever the guest queued (also without a kick: cheap).
        while let Some(chain) = tx_q.pop_descriptor_chain(&mem) {
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
            let _ = tx_q.add_used(&mem, head, 0);
            used = true;
        }
        if fds[1].revents & libc::POLLIN != 0 {
            let _ = rx_kick.read();
            rx_blocked = false;
        }
        // Receive while the TAP has frames and the guest has buffers.
        while !rx_blocked {
            let Some(chain) = rx_q.pop_descriptor_chain(&mem) else {
                rx_blocked = true;
                break;
            };
            let head = chain.head_index();
            let n = match tap.read(&mut frame) {
                Ok(n) => n,
                Err(_) => {
                    // Nothing to read (EAGAIN): give the chain back.
                    rx_q.go_to_previous_position();
                    break;
                }
            };
            // Without VIRTIO_NET_F_MRG_RXBUF every frame is one buffer.
            frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            let mut written = 0;
            for d in chain.writable() {
                let m = (d.len() as usize).min(n - written);
                if m == 0
                    || mem
                        .write_slice(&frame[written..written + m], d.addr())
                        .is_err()
                {
                    break;
                }
                written += m;
            }
            let _ = rx_q.add_used(&mem, head, written as u32);
            used = true;
        }
        if used {
            let _ = interrupt.signal_used_queue();
        }
    }
}
